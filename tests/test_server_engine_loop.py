"""The app in-process over a real tiny engine: faults injected into the forward pass must not take it down."""
import asyncio
import json
import threading

import pytest
from fastapi.testclient import TestClient

from engine.llm_engine import LLMEngine
from engine.server.api import build_app
from engine.server.protocol import CompletionRequest
from engine.server.serving import OpenAIServing
from tests.conftest import requires_demo
from tests.server_process import TINY_LLAMA


@pytest.fixture(scope="module")
def core():
    return LLMEngine("random:custom", device="cpu", hf_config=TINY_LLAMA, kv_cache_tokens=4096, max_model_len=512)


@pytest.fixture
def client(core):
    with TestClient(build_app(core, ["tiny"], max_waiting=8)) as c:
        yield c


def fail_next_forward(core, monkeypatch):
    real = core.runner.launch

    def broken(*args, **kwargs):
        monkeypatch.setattr(core.runner, "launch", real)
        raise RuntimeError("injected fault")

    monkeypatch.setattr(core.runner, "launch", broken)


def blocks_used(client) -> float:
    line = next(ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("pagebench:kv_blocks_used "))
    return float(line.split()[-1])


def test_engine_fault_fails_the_request_and_the_server_keeps_serving(client, core, monkeypatch):
    fail_next_forward(core, monkeypatch)
    r = client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 4})
    assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
    ok = client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    assert blocks_used(client) == 0
    assert client.get("/health").json() == {"status": "ok"}


def test_engine_fault_mid_stream_becomes_an_error_event(client, core, monkeypatch):
    body = {"prompt": [5, 6, 7], "max_tokens": 500, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        fail_next_forward(core, monkeypatch)
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert last["error"]["type"] == "internal_error" and "injected fault" in last["error"]["message"]
    assert "[DONE]" not in events
    assert client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}).status_code == 200
    assert blocks_used(client) == 0


def test_admitted_request_dropped_unread_is_aborted(client):
    engine = client.app.state.engine
    admitted = asyncio.run(OpenAIServing(engine, ["tiny"], 8).admit_completion(
        CompletionRequest(prompt=[5, 6, 7], max_tokens=400, ignore_eos=True)))
    request_id = admitted.request_id
    assert request_id in engine.queues
    del admitted
    assert request_id not in engine.queues
    assert client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}).status_code == 200
    assert blocks_used(client) == 0


def test_chat_without_a_tokenizer_is_a_clear_400(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/completions", json={"prompt": "text needs a tokenizer"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


@requires_demo
def test_text_prompts_are_tokenized_off_the_event_loop(monkeypatch):
    from engine.demo import demo_model_path

    core = LLMEngine("random:custom", device="cpu", hf_config=TINY_LLAMA, kv_cache_tokens=4096, max_model_len=512,
                     tokenizer=demo_model_path())
    threads: list[str] = []
    real = core.tokenize

    def recording(prompt):
        if isinstance(prompt, str):
            threads.append(threading.current_thread().name)
        return real(prompt)

    monkeypatch.setattr(core, "tokenize", recording)
    with TestClient(build_app(core, ["tiny"], max_waiting=8)) as c:
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        text = c.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 2})
        ids = c.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 2})
        bad = c.post("/v1/completions", json={"prompt": "x" * 600 * 4, "max_tokens": 2})
    assert [r.status_code for r in (chat, text, ids)] == [200, 200, 200]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    assert chat.json()["usage"]["prompt_tokens"] > 3 and text.json()["usage"]["prompt_tokens"] >= 2
    assert len(threads) == 3 and all(name.startswith("tokenize") for name in threads), threads
