"""200 concurrent streams against `engine serve demo`: usage always right, cancelled streams free every KV block."""
import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import requires_demo
from tests.server_process import running_server

N = 200
pytestmark = [requires_demo, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server_load")
    with running_server("demo", "--max-model-len", "512", "--kv-cache-tokens", "16384", "--max-num-seqs", "256",
                        "--no-access-log", log_dir=tmp) as srv:
        yield srv


@pytest.fixture(scope="module")
def tokenizer():
    from engine.demo import demo_model_path
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    return from_gguf(GGUFFile(demo_model_path()))


def finished_by(server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    key = f'pagebench:request_success_total{{finished_reason="{reason}"}}'
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(key)), 0.0)


async def stream_one(client: openai.AsyncOpenAI, i: int, max_tokens: int, cancel_after_first: bool = False) -> dict:
    extra = {"ignore_eos": True, "min_tokens": max_tokens}
    if i % 2:
        messages = [{"role": "user", "content": f"Tell me fact number {i} about the sea."}]
        stream = await client.chat.completions.create(model="demo", messages=messages, max_tokens=max_tokens,
                                                      stream=True, stream_options={"include_usage": True},
                                                      temperature=0.7, seed=i, extra_body=extra)
        prompt: str | list = messages
    else:
        prompt = f"Request {i}: once upon a time"
        stream = await client.completions.create(model="demo", prompt=prompt, max_tokens=max_tokens, stream=True,
                                                 stream_options={"include_usage": True}, temperature=0.7, seed=i,
                                                 extra_body=extra)
    result = {"i": i, "prompt": prompt, "usage": None, "finish": None, "chunks": 0}
    async for chunk in stream:
        if chunk.choices:
            result["chunks"] += 1
            result["finish"] = chunk.choices[0].finish_reason or result["finish"]
            if cancel_after_first:
                await stream.close()
                result["cancelled"] = True
                return result
        if chunk.usage:
            result["usage"] = chunk.usage
    return result


def expected_prompt_tokens(tokenizer, prompt: str | list) -> int:
    text = prompt if isinstance(prompt, str) else tokenizer.apply_chat_template(prompt)
    return len(tokenizer.encode(text))


async def run_all(url: str, jobs: list[tuple[int, int, bool]]) -> list[dict]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        return await asyncio.gather(*[stream_one(client, i, m, c) for i, m, c in jobs])
    finally:
        await client.close()


def test_200_concurrent_streams_complete_with_correct_usage(server, tokenizer):
    before = server.metrics()
    started = time.perf_counter()
    results = asyncio.run(run_all(server.url, [(i, 4, False) for i in range(N)]))
    elapsed = time.perf_counter() - started
    print(json.dumps({"test": "200 concurrent streams x 4 tokens", "seconds": round(elapsed, 2),
                      "output_tokens_per_s": round(N * 4 / elapsed, 1)}))
    for r in results:
        u = r["usage"]
        assert u is not None and r["finish"] == "length", r
        assert u.completion_tokens == 4 and u.prompt_tokens == expected_prompt_tokens(tokenizer, r["prompt"]), r
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    after = server.wait_idle()
    assert after["pagebench:generation_tokens_total"] - before["pagebench:generation_tokens_total"] == N * 4
    assert after["pagebench:prompt_tokens_total"] - before["pagebench:prompt_tokens_total"] == \
        sum(r["usage"].prompt_tokens for r in results)
    assert after["pagebench:kv_blocks_used"] == 0


def test_cancelling_half_of_200_streams_frees_every_block(server):
    aborted_before = finished_by(server, "abort")
    started = time.perf_counter()
    jobs = [(i, 48 if i % 4 >= 2 else 4, i % 4 >= 2) for i in range(N)]
    results = asyncio.run(run_all(server.url, jobs))
    elapsed = time.perf_counter() - started
    print(json.dumps({"test": "200 concurrent streams, 100 cancelled after their first chunk",
                      "seconds": round(elapsed, 2)}))
    cancelled = [r for r in results if r.get("cancelled")]
    assert len(cancelled) == N // 2
    for r in results:
        if not r.get("cancelled"):
            assert r["usage"].completion_tokens == 4 and r["finish"] == "length", r
    m = server.wait_idle(timeout_s=60)
    assert (m["pagebench:num_requests_running"], m["pagebench:num_requests_waiting"]) == (0, 0)
    assert m["pagebench:kv_blocks_used"] == 0 and m["pagebench:kv_cache_usage_perc"] == 0
    assert finished_by(server, "abort") - aborted_before == N // 2, "every cancelled stream was aborted, none ran on"
    assert httpx.get(f"{server.url}/health").status_code == 200
