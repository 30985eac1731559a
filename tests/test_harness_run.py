"""`bench run` end to end against fake_exact_server (a fake): the run folder contract, failures contained, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from harness.fake_exact_server import running
from harness.results import EventRow, RequestRow, RunInfo, SampleRow, load_run

REPO = Path(__file__).resolve().parents[1]
FAKE = "{python} -m harness.fake_exact_server --port {port}"


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def scenario(tmp_path: Path, backends: str, load: str = "concurrency: [1, 2]\n  requests: 4\n  warmup_requests: 1",
             name: str = "t") -> Path:
    text = f"""name: {name}
backends:
{textwrap.indent(textwrap.dedent(backends).strip(), '  ')}
workload:
  tokenizer: null
  input_tokens: 16
  output_tokens: 6
load:
  {load}
  sample_interval_s: 0.2
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def rows(d: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]


def test_two_backends_fill_the_run_folder_contract(tmp_path):
    path = scenario(tmp_path, f"""
        - name: engine
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 10 --itl-ms 3"
        - name: llama
          kind: ollama
          model: fake
          launch: "{FAKE} --ttft-ms 10 --itl-ms 3"
          num_parallel: 2
        """)
    res = bench("run", str(path), "--out", str(tmp_path / "out"), "--no-report")
    assert res.returncode == 0, res.stdout + res.stderr
    d = run_dir(tmp_path / "out")
    assert d.name.endswith("-t") and (d / "scenario.yaml").read_bytes() == path.read_bytes()
    info = RunInfo.model_validate_json((d / "run.json").read_text())
    assert info.status == "complete" and info.finished_at and info.host.cpu_count
    assert [lv.label for lv in info.levels] == ["c=1", "c=2"]
    engine, llama = info.backends
    assert engine.status == llama.status == "complete" and engine.launched and engine.ready_s < 30
    assert engine.version == "fake_exact_server-1" and engine.info["block_size"] == 16
    assert llama.version == "0.0.0-fake_exact_server" and llama.info["processor"] == "100% CPU" and llama.info["num_parallel"] == 2
    reqs = [RequestRow.model_validate(r) for r in rows(d, "requests")]
    assert len(reqs) == 2 * 2 * 5 and all(r.error is None for r in reqs)
    for first, lv in ((0, "c=1"), (5, "c=2")):
        # the same prompts on both backends; each level its own range, so no prompt of a run is sent twice
        orders = {b: sorted(r.index for r in reqs if r.backend == b and r.level == lv) for b in ("engine", "llama")}
        assert orders["engine"] == orders["llama"] == list(range(first, first + 5))
    assert all(r.output_tokens == 6 for r in reqs if r.backend == "engine")
    assert all(r.server["eval_count"] == 6 for r in reqs if r.backend == "llama")
    samples = [SampleRow.model_validate(s) for s in rows(d, "samples")]
    assert any(s.backend == "engine" and s.rss_bytes and s.kv_blocks_total == 1000 for s in samples)
    assert any(s.backend == "llama" and s.ollama_size == 100_000_000 for s in samples)
    kinds = [EventRow.model_validate(e).kind for e in rows(d, "events")]
    assert [k for k in kinds if k in ("launch", "ready", "stop")] == ["launch", "ready", "stop"] * 2
    assert kinds.count("level_start") == kinds.count("level_end") == 4
    summary = json.loads((d / "summary.json").read_text())
    assert [(s["backend"], s["level"], s["requests"], s["errors"]) for s in summary] == [
        ("engine", "c=1", 4, 0), ("engine", "c=2", 4, 0), ("llama", "c=1", 4, 0), ("llama", "c=2", 4, 0)]
    assert summary[0]["ttft_s"]["p50"] >= 0.010 and summary[0]["output_throughput"] > 0
    assert "fake_exact_server" in (d / "backends" / "engine.log").read_text()
    run = load_run(d)
    assert not run.summary_recomputed and len(run.requests) == 20 and set(run.samples["backend"]) == {"engine", "llama"}
    assert "TTFT ms p50/p99" in res.stdout and "Decode speed per stream" in res.stdout and "engine" in res.stdout


def test_failures_are_contained_and_explained(tmp_path):
    path = scenario(tmp_path, f"""
        - name: broken
          kind: paged
          model: fake
          launch: "{{python}} -c \\"import sys; print('boom on {{port}}'); sys.exit(3)\\""
        - name: dies
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 5 --itl-ms 20 --die-after 3"
        - name: slow
          kind: openai
          model: fake
          launch: "{FAKE} --unhealthy-for 60"
          ready_timeout_s: 1
        - name: good
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 5 --itl-ms 2"
        """)
    res = bench("run", str(path), "--out", str(tmp_path / "out"), "--no-report")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bench: broken: server process exited with code 3") and "dies: died mid-run" in last
    assert "slow: not ready after 1s" in last and "good" not in last
    d = run_dir(tmp_path / "out")
    info = RunInfo.model_validate_json((d / "run.json").read_text())
    status = {b.name: (b.status, b.error) for b in info.backends}
    assert info.status == "failed"
    assert status["broken"][0] == "failed" and "boom on" in status["broken"][1]
    assert status["dies"][0] == "failed" and "exited with code 3" in status["dies"][1]
    assert status["good"] == ("complete", None)
    reqs = rows(d, "requests")
    died = [r for r in reqs if r["backend"] == "dies"]
    assert sum(r["error"] is None for r in died) == 2, "the requests finished before the crash are kept"
    assert any(r["error"] and r["error"].startswith("stream broken") for r in died)
    assert sum(r["backend"] == "good" and r["error"] is None for r in reqs) == 10
    assert {b["name"]: b["status"] for b in json.loads((d / "run.json").read_text())["backends"]}["slow"] == "failed"


def test_server_errors_make_a_nonzero_exit(tmp_path):
    path = scenario(tmp_path, f"""
        - name: flaky
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 5 --itl-ms 2 --fail-every 2"
        """, load="concurrency: 1\n  requests: 6")
    res = bench("run", str(path), "--out", str(tmp_path / "out"), "--no-report")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "bench: flaky c=1: 3/6 requests failed"
    summary = json.loads((run_dir(tmp_path / "out") / "summary.json").read_text())
    assert summary[0]["errors"] == 3 and summary[0]["error_rate"] == 0.5


def test_missing_model_path_is_reported_before_anything_starts(tmp_path):
    path = scenario(tmp_path, """
        - name: engine
          kind: paged
          model: m
          launch: engine serve /nowhere/model.gguf --port {port}
        """)
    res = bench("run", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "backends.0 (engine).launch: model path does not exist: /nowhere/model.gguf" in res.stderr
    assert not (tmp_path / "out").exists()


def test_url_backend_only_and_dry_run(tmp_path):
    with running("--ttft-ms", "5", "--itl-ms", "2") as url:
        path = scenario(tmp_path, f"""
            - name: remote
              kind: openai
              model: fake
              url: {url}
            - name: other
              kind: openai
              model: fake
              url: http://127.0.0.1:9
            """, load="concurrency: 2\n  requests: 4")
        dry = bench("run", str(path), "--dry-run", "--out", str(tmp_path / "dry"))
        assert dry.returncode == 0 and "first request to remote" in dry.stdout and "nothing was sent" in dry.stdout
        assert not (tmp_path / "dry").exists()
        only = bench("run", str(path), "--dry-run", "--only", "other", "--out", str(tmp_path / "dry"))
        assert only.returncode == 0 and "first request to other" in only.stdout
        assert "remote" not in only.stdout, only.stdout
        res = bench("run", str(path), "--only", "remote", "--out", str(tmp_path / "out"), "--no-report")
        assert res.returncode == 0, res.stderr
        d = run_dir(tmp_path / "out")
        info = json.loads((d / "run.json").read_text())
        assert [b["name"] for b in info["backends"]] == ["remote"] and info["backends"][0]["launched"] is False
        assert any(s["rss_bytes"] for s in rows(d, "samples")), "a local server found by its port is measured"


def test_unreachable_url_fails_that_backend_with_a_clear_reason(tmp_path):
    path = scenario(tmp_path, """
        - name: gone
          kind: ollama
          model: smollm2
          url: http://127.0.0.1:9
        """)
    res = bench("run", str(path), "--out", str(tmp_path / "out"), "--no-report")
    assert res.returncode == 1 and "gone: cannot reach http://127.0.0.1:9" in res.stderr.splitlines()[-1]


def test_ctrl_c_keeps_finished_rows_and_stops_the_server(tmp_path):
    path = scenario(tmp_path, f"""
        - name: engine
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 5 --itl-ms 5"
        """, load="concurrency: 2\n  requests: 5000")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(out), "--no-report"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reqs = list(out.glob("*/requests.jsonl"))
            if reqs and len(reqs[0].read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    d = run_dir(out)
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "interrupted" and info["finished_at"]
    kept = rows(d, "requests")
    assert len(kept) >= 5 and all(r["error"] in (None, "interrupted") for r in kept)
    assert json.loads((d / "summary.json").read_text())[0]["requests"] >= 4
    with pytest.raises(httpx.HTTPError):
        httpx.get(info["backends"][0]["url"] + "/health", timeout=2)
