"""The harness's `ollama` backend against the real Ollama server (built by scripts/setup_ollama.sh)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness.backends import BackendError, make_backend
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload
from tests.test_ollama_server import requires_ollama, start_server

pytestmark = [pytest.mark.ollama, requires_ollama]
MODEL = "smollm2-135m-instruct:q4_1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = start_server(tmp_path_factory.mktemp("ollama") / "serve.log", OLLAMA_NUM_PARALLEL="2",
                     OLLAMA_CONTEXT_LENGTH="1024", OLLAMA_KEEP_ALIVE="10m")
    yield s
    s.stop()


def backend_for(url: str, api: str = "chat", model: str = MODEL, **extra):
    sc = Scenario.model_validate({
        "name": "real-ollama",
        "backends": [{"name": "ollama", "kind": "ollama", "model": model, "url": url, "num_ctx": 1024, **extra}],
        "workload": {"tokenizer": "demo", "api": api, "output_tokens": 6, "input_tokens": 24, "seed": 4},
        "load": {"requests": 4}})
    return make_backend(sc.backends[0], url, sc.workload), build_workload(sc, Path("."))


async def one(backend, item) -> RequestRecord:
    rec = RequestRecord("ollama", "c=1", "measure", item.index, item.max_tokens, time.perf_counter())
    await backend.generate(item, rec, 60.0)
    return rec


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_streams_and_parses_timing_fields(server, api):
    async def go():
        backend, items = backend_for(server.url, api)
        version, info = await backend.prepare()
        rec = await one(backend, items[0])
        await backend.close()
        return version, info, rec

    version, info, rec = asyncio.run(go())
    assert version == Path("scripts/ollama.version").read_text().strip()
    assert info["processor"] == "100% CPU" and info["quantization"] == "Q4_1"
    assert rec.error is None and rec.first_token is not None and rec.first_token > rec.sent
    assert rec.output_tokens == rec.server["eval_count"] and 1 <= rec.output_tokens <= 6
    assert rec.prompt_tokens == rec.server["prompt_eval_count"] > 0
    for key in ("eval_duration", "prompt_eval_duration", "load_duration", "total_duration"):
        assert rec.server[key] > 0, key


def test_two_parallel_slots_interleave(server):
    async def go():
        backend, items = backend_for(server.url)
        await backend.prepare()
        recs = await asyncio.gather(one(backend, items[1]), one(backend, items[2]))
        await backend.close()
        return recs

    a, b = asyncio.run(go())
    assert a.error is None and b.error is None
    first, second = sorted((a, b), key=lambda r: r.chunk_times[0])
    assert second.chunk_times[0] < first.chunk_times[-1], "OLLAMA_NUM_PARALLEL=2: both streams decode at once"


def test_missing_model_is_a_clear_error_with_the_pull_command(server):
    async def go():
        backend, _ = backend_for(server.url, model="no-such-model:latest")
        try:
            await backend.prepare()
        finally:
            await backend.close()

    with pytest.raises(BackendError, match="ollama pull no-such-model:latest"):
        asyncio.run(go())


def test_stopped_server_is_a_clear_error(tmp_path):
    s = start_server(tmp_path / "serve.log")

    async def go():
        backend, items = backend_for(s.url)
        await backend.prepare()
        s.stop()
        rec = await one(backend, items[0])
        await backend.close()
        return rec

    rec = asyncio.run(go())
    assert rec.error and "\n" not in rec.error and "connect" in rec.error.lower(), rec.error


def test_full_queue_is_a_clear_error(tmp_path):
    s = start_server(tmp_path / "serve.log", OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1")
    try:
        async def burst():
            backend, items = backend_for(s.url)
            # No preload: while the first request loads the model, Ollama queues one more and refuses the rest.
            recs = await asyncio.gather(*(one(backend, items[i % len(items)]) for i in range(6)))
            await backend.close()
            return recs

        recs = asyncio.run(burst())
    finally:
        s.stop()
    busy = [r for r in recs if r.error]
    assert busy and all(r.status_code == 503 and "server busy" in r.error for r in busy), [r.error for r in recs]
    assert any(r.error is None for r in recs)
