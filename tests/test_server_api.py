"""`engine serve` over HTTP: errors, auth, overload, disconnects and metrics, against a live subprocess.

The model is a tiny random-weight Llama with the demo model's real tokenizer and chat template, so each token
costs milliseconds on a CPU; the demo model itself is served in test_server_openai.py.
"""
import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import requires_demo
from tests.server_process import running_server, tiny_model_dir

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 1024
pytestmark = requires_demo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.demo import demo_model_path

    tmp = tmp_path_factory.mktemp("server_api")
    with running_server(tiny_model_dir(tmp / "tiny"), "--tokenizer", demo_model_path(), "--device", "cpu",
                        "--api-key", KEY,
                        "--served-model-name", "tiny", "--served-model-name", "tiny-alias",
                        "--max-num-seqs", "4", "--max-waiting", "4", "--max-model-len", str(CONTEXT),
                        "--kv-cache-tokens", "32768", "--request-log", str(tmp / "requests.jsonl"),
                        log_dir=tmp) as srv:
        yield srv


@pytest.fixture(scope="module")
def tokenizer():
    from engine.demo import demo_model_path
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    return from_gguf(GGUFFile(demo_model_path()))


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def post(http: httpx.Client, path: str, body: object, **kw) -> httpx.Response:
    return http.post(path, json=body, **kw)


def test_startup_reports_readiness_and_memory(server):
    from engine.server.serve import human_bytes

    version = httpx.get(f"{server.url}/version").json()
    kv = f"KV cache {human_bytes(version['kv_cache_bytes'])} (2048 blocks x 16 tokens = 32768 tokens)"
    weights = f"weights {human_bytes(version['weights_bytes'])}"
    lines = server.log().splitlines()
    for wanted in (kv, weights, "ready: serving tiny, tiny-alias at http://127.0.0.1:"):
        printed = [ln for ln in lines if wanted in ln and "engine.server:" not in ln]
        logged = [ln for ln in lines if wanted in ln and " INFO engine.server: " in ln]
        assert printed and logged, (wanted, lines)


def test_info_endpoints(server, http):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    version = httpx.get(f"{server.url}/version").json()
    assert version["engine"] == "pagebench" and version["version"]
    assert (version["model"], version["dtype"], version["device"], version["block_size"]) == \
        ("tiny", "float32", "cpu", 16)
    assert version["max_model_len"] == CONTEXT and version["kv_blocks_total"] == 2048
    assert httpx.get(f"{server.url}/info").json() == version
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    assert models["data"][0]["max_model_len"] == CONTEXT
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"].keys() >= {"/v1/completions", "/v1/chat/completions"}


def test_metrics_names(server):
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_blocks_used", "kv_blocks_total",
                 "kv_cache_usage_perc", "prefix_cache_hit_rate", "num_preemptions_total", "prompt_tokens_total",
                 "generation_tokens_total", "time_to_first_token_seconds_bucket",
                 "inter_token_latency_seconds_bucket", "request_queue_time_seconds_bucket",
                 "request_prefill_time_seconds_bucket", "engine_info"):
        assert f"\npagebench:{name}" in text, name
    assert 'pagebench:engine_info{' in text and 'block_size="16"' in text
    assert server.metrics()["pagebench:kv_blocks_total"] == 2048


def test_request_log_lines_up_the_engine_timestamps(server, client):
    """Each finished request leaves one line whose stamps run in order, from the server's receipt of the request (before
    its body was parsed) to its last token, and whose counts are the response's."""
    sent = time.time()
    resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "log me"}],
                                          max_tokens=5, extra_body={"ignore_eos": True})
    done = time.time()
    lines = [json.loads(ln) for ln in (server.log_path.parent / "requests.jsonl").read_text().splitlines()]
    row = next(r for r in lines if r["request_id"] == resp.id)
    stamps = [row[k] for k in ("arrival", "queued", "first_scheduled", "first_token", "finished")]
    assert sent <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= done, row
    mono = [row["monotonic"][k] for k in ("arrival", "queued", "first_scheduled", "first_token", "finished")]
    assert mono == sorted(mono) and row["boot_id"], row  # what a client on this boot compares with its own clock
    assert (row["prompt_tokens"], row["output_tokens"], row["finish_reason"]) == \
        (resp.usage.prompt_tokens, resp.usage.completion_tokens, "length")
    m = server.metrics()
    assert m["pagebench:request_queue_time_seconds_count"] >= 1
    assert m["pagebench:request_prefill_time_seconds_sum"] > 0


def test_api_key_guards_v1_only(server):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")):
            r = httpx.request(method, f"{server.url}{path}", json=body, headers=headers)
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", headers={})
    assert r.status_code == 401, "the key is checked before the body is read"
    for path in ("/health", "/metrics", "/version"):
        assert httpx.get(f"{server.url}{path}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


BAD_COMPLETIONS = [
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "x", "top_k": 0}, 400, "top_k"),
    ({"prompt": "x", "n": 2}, 400, "n"),
    ({"prompt": "x", "seed": 2**64}, 400, "seed"),
    ({"prompt": "x", "stop": [""]}, 400, "stop"),
    ({"prompt": "x", "stop_token_ids": [10**9]}, 400, "stop_token_ids"),
    ({"prompt": "x", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
    ({"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ({"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [1, 2, 10**7]}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": "word " * (CONTEXT + 10)}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize("body,status,param", BAD_COMPLETIONS, ids=[str(b)[:50] for b, _, _ in BAD_COMPLETIONS])
def test_bad_completion_requests_name_the_field(http, body, status, param):
    r = post(http, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["message"] and err["type"] in ("invalid_request_error", "not_found_error")


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": CONTEXT}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": "hello"}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD_CHATS, ids=[str(b)[:50] for b, _ in BAD_CHATS])
def test_bad_chat_requests_name_the_field(http, body, param):
    r = post(http, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_bodies_and_unknown_routes(http):
    r = http.post("/v1/completions", content=b'{"prompt": "x"', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = http.post("/v1/completions", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    assert post(http, "/v1/completions", [1, 2]).status_code == 400
    r = http.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert http.get("/v1/completions").status_code == 405


def test_openai_client_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=1, n=3)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=1)


def test_usage_and_stream_match_the_full_response(client, tokenizer):
    prompt = "The quick brown fox"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    n_prompt = len(tokenizer.encode(prompt))
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == \
        (n_prompt, 12, n_prompt + 12)
    assert full.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="tiny-alias", prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == n_prompt
    assert {c.model for c in chunks} == {"tiny-alias"}
    plain = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=3, stream=True))
    assert all(c.usage is None for c in plain), "usage only when stream_options.include_usage"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_chunks_are_the_schema_byte_for_byte(http, path, include_usage):
    from engine.server.protocol import ChatCompletionChunk, CompletionChunk

    body = {"model": "tiny-alias", "max_tokens": 24, "ignore_eos": True, "temperature": 1.0, "seed": 3,
            "stream": True, "stream_options": {"include_usage": include_usage}}
    chat = path == "/v1/chat/completions"
    body |= {"messages": [{"role": "user", "content": 'Say "hi"\nté'}]} if chat else {"prompt": 'Say "hi"\nté'}
    r = post(http, path, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    schema = ChatCompletionChunk if chat else CompletionChunk
    chunks = []
    for event in events[:-2]:
        data = event.removeprefix("data: ")
        chunk = schema.model_validate_json(data)
        assert chunk.model_dump_json(exclude=None if include_usage else {"usage"}) == data
        chunks.append(chunk)
    assert all(c.id == chunks[0].id and c.created == chunks[0].created and c.model == "tiny-alias" for c in chunks)
    assert (chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24) == include_usage
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length" and not any(finish[:-1])


def test_chat_usage_counts_the_templated_prompt(client, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    expected = len(tokenizer.encode(tokenizer.apply_chat_template(messages)))
    full = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=5, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert full.usage.prompt_tokens == expected and full.usage.completion_tokens == 5
    assert full.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == expected and chunks[-1].usage.completion_tokens == 5


def test_default_max_tokens_is_the_rest_of_the_context(http):
    r = post(http, "/v1/completions", {"prompt": [5] * (CONTEXT - 3), "ignore_eos": True, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3 and r.json()["choices"][0]["finish_reason"] == "length"


def test_stop_strings(client):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=7,
              extra_body={"ignore_eos": True})
    base = client.completions.create(**kw).choices[0].text
    start = next(i for i in range(3, len(base) - 3) if base[i:i + 3].strip())
    stop = base[start:start + 3]
    cut = client.completions.create(stop=[stop, "never-seen"], **kw).choices[0]
    assert cut.finish_reason == "stop" and cut.text == base[:base.index(stop)]
    assert cut.model_extra["stop_reason"] == stop


def test_min_tokens_masks_stop_token_ids(client, tokenizer):
    first = client.completions.create(model="tiny", prompt="Hello", max_tokens=1, temperature=0).choices[0].text
    ids = tokenizer.encode(first, add_special_tokens=False)
    assert len(ids) == 1, (first, ids)
    kw = dict(model="tiny", prompt="Hello", max_tokens=12, temperature=0)
    stopped = client.completions.create(**kw, extra_body={"stop_token_ids": ids})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    assert stopped.choices[0].model_extra["stop_reason"] == ids[0]
    held = client.completions.create(**kw, extra_body={"stop_token_ids": ids, "min_tokens": 6})
    assert held.usage.completion_tokens >= 6


def test_seed_makes_sampling_reproducible(client):
    kw = dict(model="tiny", prompt="Pick a word:", max_tokens=8, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    assert a == b


def wait_for(server, name: str, value: float, timeout_s: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while (m := server.metrics())[name] != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return m


def aborts(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    key = 'pagebench:request_success_total{finished_reason="abort"}'
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(key)), 0.0)


def test_disconnected_stream_is_aborted_and_its_blocks_freed(server, http):
    before = aborts(server)
    body = {"prompt": "Tell me everything", "max_tokens": CONTEXT - 10, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.metrics()["pagebench:kv_blocks_used"] > 0
    m = wait_for(server, "pagebench:kv_blocks_used", 0)
    assert m["pagebench:kv_blocks_used"] == 0 and m["pagebench:num_requests_running"] == 0
    assert aborts(server) == before + 1


def test_disconnected_plain_request_is_aborted(server):
    before = aborts(server)
    body = {"prompt": "Tell me everything", "max_tokens": CONTEXT - 10, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=httpx.Timeout(60, read=0.5))
    m = wait_for(server, "pagebench:kv_blocks_used", 0)
    assert m["pagebench:kv_blocks_used"] == 0
    assert aborts(server) == before + 1


def test_overload_gets_503_with_retry_after_and_the_rest_complete(server):
    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, httpx.Headers, dict | int]:
        body = {"prompt": f"request {i}", "max_tokens": 200, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, r.headers, r.json()
            chunks = [json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: {")]
            return 200, r.headers, chunks[-1]["usage"]["completion_tokens"]

    async def burst() -> list[tuple[int, httpx.Headers, dict | int]]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*[one(client, i) for i in range(14)])

    results = asyncio.run(burst())
    codes = [code for code, _, _ in results]
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 4, "at least a full batch is admitted"
    for code, headers, body in results:
        if code == 503:
            assert headers["retry-after"] == "1" and body["error"]["code"] == "server_overloaded"
        else:
            assert body == 200, "every admitted stream runs to the end"
    assert server.wait_idle()["pagebench:kv_blocks_used"] == 0
    assert httpx.get(f"{server.url}/health").status_code == 200
