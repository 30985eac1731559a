"""Backends against fake_exact_server (a fake: exact token timing and injected faults, which a real server cannot do on demand)."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness.backends import BackendError, make_backend
from harness.backends.ollama_native import processor
from harness.backends.openai_http import parse_metrics
from harness.fake_exact_server import running
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload


@pytest.fixture(scope="module")
def fake():
    with running("--ttft-ms", "20", "--itl-ms", "5", "--eos-after", "5", "--models", "fake,other") as url:
        yield url


@pytest.fixture(scope="module")
def faulty():
    with running("--ttft-ms", "5", "--itl-ms", "2", "--fail-every", "4", "--disconnect-every", "5",
                 "--malformed-every", "7", "--no-pull") as url:
        yield url


def setup(url: str, kind: str = "paged", api: str = "chat", **backend):
    sc = Scenario.model_validate({"name": "t", "backends": [{"name": "b", "kind": kind, "model": "fake", "url": url, **backend}],
                                  "workload": {"tokenizer": None, "api": api, "output_tokens": 12, "input_tokens": 20},
                                  "load": {"requests": 30}})
    return make_backend(sc.backends[0], url, sc.workload), build_workload(sc, __import__("pathlib").Path("."))


async def one(backend, item) -> RequestRecord:
    rec = RequestRecord("b", "c=1", "measure", item.index, item.max_tokens, time.perf_counter())
    await backend.generate(item, rec, 10.0)
    return rec


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_paged_streams_fixed_length_with_usage(fake, api):
    async def go():
        backend, items = setup(fake, api=api)
        version, info = await backend.prepare()
        rec = await one(backend, items[0])
        gauges = await backend.poll()
        await backend.close()
        return version, info, rec, gauges

    version, info, rec, gauges = run(go())
    assert version == "fake_exact_server-1" and info["block_size"] == 16 and info["fixed_output_length"] is True
    assert rec.error is None and rec.finish_reason == "length"
    assert rec.output_tokens == 12 and len(rec.chunk_times) == 12, "ignore_eos/min_tokens keep the length fixed"
    assert rec.prompt_tokens and rec.prompt_tokens > 0
    assert 0.020 <= rec.first_token - rec.intended < 0.5, "the fake sends token 0 at 20 ms, never earlier"
    assert rec.chunk_times[-1] - rec.intended >= 0.020 + 11 * 0.005, "token 11 leaves at 75 ms, never earlier"
    assert rec.chunk_times == sorted(rec.chunk_times)
    assert {"running", "waiting", "kv_blocks_total", "kv_usage"} <= gauges.keys() and gauges["kv_blocks_total"] == 1000


def test_openai_without_ignore_eos_records_actual_length(fake):
    async def go():
        backend, items = setup(fake, kind="openai")
        body = backend.body(items[0])
        rec = await one(backend, items[0])
        backend2, _ = setup(fake, kind="openai", supports_ignore_eos=True)
        rec2 = await one(backend2, items[0])
        await backend.close()
        await backend2.close()
        return body, rec, rec2

    body, rec, rec2 = run(go())
    assert "ignore_eos" not in body and body["stream_options"] == {"include_usage": True}
    assert rec.output_tokens == 5 and rec.requested_output_tokens == 12
    assert rec2.output_tokens == 12


def test_paged_rejects_model_the_server_does_not_serve(fake):
    async def go():
        backend, _ = setup(fake)
        backend.cfg.model = "nope"
        try:
            await backend.prepare()
        finally:
            await backend.close()

    with pytest.raises(BackendError, match="'nope' is not served .* serves: fake, other"):
        run(go())


def test_faults_become_one_line_errors_and_partial_timings_are_kept(faulty):
    async def go():
        backend, items = setup(faulty)
        recs = [await one(backend, items[i]) for i in range(8)]
        await backend.close()
        return recs

    recs = run(go())
    by_k = {k + 1: r for k, r in enumerate(recs)}
    assert by_k[4].status_code == 500 and "injected failure on request 4" in by_k[4].error
    assert by_k[5].error.startswith("stream broken") and 0 < len(by_k[5].chunk_times) < 12
    assert by_k[7].error.startswith("malformed response") and len(by_k[7].chunk_times) >= 1
    assert all(by_k[k].error is None and by_k[k].output_tokens == 12 for k in (1, 2, 3, 6))
    assert by_k[8].status_code == 500
    assert all("\n" not in r.error for r in recs if r.error)


def test_connection_refused_is_flagged():
    async def go():
        backend, items = setup("http://127.0.0.1:9")
        rec = await one(backend, items[0])
        await backend.close()
        return rec

    rec = run(go())
    assert rec.connect_failed and rec.error.startswith("cannot connect to http://127.0.0.1:9")


def test_timeout_is_reported():
    async def go():
        with running("--ttft-ms", "3000") as url:
            backend, items = setup(url)
            rec = RequestRecord("b", "c=1", "measure", 0, 12, time.perf_counter())
            await backend.generate(items[0], rec, 0.3)
            await backend.close()
            return rec

    rec = run(go())
    assert rec.error == "timeout: no complete answer after 0.3s"


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_ollama_streams_and_keeps_server_timings(fake, api):
    async def go():
        backend, items = setup(fake, kind="ollama", api=api, num_ctx=2048, options={"num_thread": 2})
        version, info = await backend.prepare()
        body = backend.body(items[0])
        rec = await one(backend, items[0])
        gauges = await backend.poll()
        await backend.close()
        return version, info, body, rec, gauges

    version, info, body, rec, gauges = run(go())
    assert version == "0.0.0-fake_exact_server"
    assert info["processor"] == "100% CPU" and info["size"] == 100_000_000 and info["quantization"] == "FAKE"
    assert body["truncate"] is False and body["keep_alive"] == "30m"
    assert body["options"] == {"num_ctx": 2048, "temperature": 0.0, "num_predict": 12, "seed": items_seed(body), "num_thread": 2}
    assert rec.error is None and rec.output_tokens == 5 == len(rec.chunk_times), "Ollama has no ignore_eos: actual length kept"
    assert rec.finish_reason == "length"
    assert set(rec.server) == {"eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration", "load_duration", "total_duration"}
    assert rec.server["eval_count"] == 5 and rec.server["eval_duration"] > 0
    assert gauges == {"ollama_size": 100_000_000, "ollama_size_vram": 0}


def items_seed(body: dict) -> int:
    return body["options"]["seed"]


def test_ollama_missing_model_names_the_pull_command(faulty):
    async def go():
        backend, _ = setup(faulty, kind="ollama")
        backend.cfg.model = "smollm2:135m"
        try:
            await backend.prepare()
        finally:
            await backend.close()

    host = faulty.split("://")[1]
    with pytest.raises(BackendError) as e:
        run(go())
    assert f"run `OLLAMA_HOST={host} ollama pull smollm2:135m` or set pull: true" in str(e.value)


def test_ollama_pulls_with_progress_when_allowed(fake):
    seen = []

    async def go():
        backend, items = setup(fake, kind="ollama", pull=True)
        backend.cfg.model = "pulled-model"
        await backend.prepare(lambda s, c, t: seen.append((s, c, t)))
        await backend.close()

    run(go())
    assert ("pulling fake", 100, 100) in seen


def test_ollama_errors_are_reported():
    async def go():
        with running("--ttft-ms", "5", "--itl-ms", "2", "--fail-every", "4", "--disconnect-every", "5", "--malformed-every", "3") as url:
            backend, items = setup(url, kind="ollama")
            await backend.prepare()
            recs = [await one(backend, items[i]) for i in range(5)]
            await backend.close()
            return recs

    recs = run(go())
    assert recs[3].error == "HTTP 500: injected failure on request 4" and recs[3].status_code == 500
    assert recs[4].error.startswith("stream broken") and recs[4].chunk_times
    assert recs[2].error.startswith("malformed response")
    assert recs[0].error is None and recs[1].error is None


def test_parse_metrics_vllm_and_percent_names():
    text = ("# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.25\n"
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
            "# TYPE engine_info info\nengine_info{dtype=\"float16\",block_size=\"16\"} 1\n")
    gauges, info = parse_metrics(text)
    assert gauges == {"kv_usage": 0.25, "running": 3.0}
    assert info == {"dtype": "float16", "block_size": "16"}
    g2, _ = parse_metrics("# TYPE x_kv_blocks_used gauge\nx_kv_blocks_used 30\n# TYPE x_kv_blocks_total gauge\nx_kv_blocks_total 120\n")
    assert g2["kv_usage"] == 0.25


def test_processor_column():
    assert processor(100, 100) == "100% GPU"
    assert processor(100, 0) == "100% CPU"
    assert processor(100, 60) == "40%/60% CPU/GPU"
    assert processor(None, None) is None


def test_fake_server_stamps_match_schedule():
    import httpx

    with running("--ttft-ms", "30", "--itl-ms", "10") as url:
        body = {"model": "fake", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as r:
            stamps = [json.loads(line[5:])["x_mono"] for line in r.iter_lines() if line.startswith("data: {")]
    assert len(stamps) == 6, "role chunk + 5 tokens"
    assert stamps[-1] - stamps[0] >= 0.070 * 0.999, "the last token is never sent before its slot (30 ms + 4 x 10 ms)"
    assert stamps[-1] - stamps[0] < 0.070 + 0.5
    assert all(b >= a for a, b in zip(stamps, stamps[1:]))
