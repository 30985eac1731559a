"""bench killed outright leaves no server behind; requests in flight at Ctrl-C are recorded as interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.server_process import still_running_after
from tests.test_harness_run import FAKE, REPO, rows, run_dir, scenario


def start_bench(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(out), "--no-report"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reqs = list(out.glob("*/requests.jsonl"))
        if reqs and len(reqs[0].read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} requests recorded after {timeout_s:g}s")


def test_a_bench_killed_with_sigkill_leaves_no_server_running(tmp_path):
    """The launch goes through a shell whose child is the server, as wrapper scripts do."""
    path = scenario(tmp_path, f"""
        - name: engine
          kind: paged
          model: fake
          launch: "sh -c '{FAKE} --ttft-ms 5 --itl-ms 20 & wait'"
        """, load="concurrency: 2\n  requests: 5000")
    out = tmp_path / "out"
    bench = start_bench(path, out)
    try:
        wait_for_rows(out, 2)
        launched = [p for p in psutil.Process(bench.pid).children(recursive=True)
                    if "harness.reaper" not in " ".join(p.cmdline())]
        assert any("fake_exact_server" in " ".join(p.cmdline()) for p in launched), launched
        bench.send_signal(signal.SIGKILL)
        bench.wait(10)
        started = time.monotonic()
        alive = still_running_after(launched, 15)
        elapsed = time.monotonic() - started
    finally:
        bench.kill()
        bench.communicate()
    described = [f"{p.pid} {' '.join(p.cmdline())}" for p in alive]
    for p in alive:
        p.kill()
    assert not alive, f"still running 15 s after bench was killed: {described}"
    print(f"launched server gone {elapsed:.1f}s after bench was killed")


def test_requests_in_flight_at_ctrl_c_are_recorded_as_interrupted(tmp_path):
    path = scenario(tmp_path, f"""
        - name: engine
          kind: paged
          model: fake
          launch: "{FAKE} --ttft-ms 5 --itl-ms 400"
        """, load="concurrency: 3\n  requests: 5000\n  warmup_requests: 0")
    out = tmp_path / "out"
    bench = start_bench(path, out)
    try:
        wait_for_rows(out, 3)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        bench.kill()
    assert bench.returncode == 130, err
    d = run_dir(out)
    kept = rows(d, "requests")
    interrupted = [r for r in kept if r["error"] == "interrupted"]
    assert len(interrupted) == 3, [r["error"] for r in kept]  # one per user, each mid-stream
    assert all(r["phase"] == "measure" and r["finished"] >= r["sent"] for r in interrupted)
    assert all(r["error"] is None for r in kept if r not in interrupted)
    (level,) = json.loads((d / "summary.json").read_text())
    assert level["requests"] == len(kept) and level["interrupted"] == 3
    assert level["errors"] == 0
