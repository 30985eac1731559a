"""A run folder that follows the harness/report contract, simulated: two backends, two closed-loop levels, errors.

The paged engine batches (every user streams at once, each step a little slower); the Ollama side serves
one request at a time (num_parallel 1), so requests queue. Rows are returned too, so tests can compute
expected numbers without going through the report's reader.
"""
from __future__ import annotations

import heapq
import json
import random
from pathlib import Path

T0 = 1_760_000_000.0
SCENARIO = """# tiny fixture scenario
name: fixture
model: smollm2-135m
backends:
  - {name: engine, kind: paged}
  - {name: ollama, kind: ollama}
levels: [{concurrency: 1}, {concurrency: 4}]
requests_per_level: {c1: 6, c4: 16}
output_tokens: 24
"""


def _simulate(backend: str, conc: int, n: int, start: float, rng: random.Random, fail_every: int) -> list[dict]:
    rows: list[dict] = []
    users = [(start + 0.001 * u, u) for u in range(conc)]
    heapq.heapify(users)
    server_free = start
    for i in range(n):
        ready, user = heapq.heappop(users)
        sent = ready
        if backend == "engine":
            begin = sent
            ttft = 0.04 * (1 + 0.3 * (conc - 1)) * rng.uniform(0.8, 1.3)
            step = 0.02 * (1 + 0.25 * (conc - 1))
            out = 24
        else:
            begin = max(sent, server_free)
            ttft = (begin - sent) + 0.03 * rng.uniform(0.8, 1.3)
            step = 0.012
            out = rng.randint(14, 24)
        error = None
        if fail_every and i % fail_every == fail_every - 1:
            error = "ReadTimeout: server did not answer in 5.0 s" if backend == "ollama" else "HTTP 503: KV cache full"
        if error:
            finished = sent + rng.uniform(0.05, 0.2)
            rows.append(dict(backend=backend, level=f"c={conc}", concurrency=conc, rate=None, phase="measure",
                             index=i, user=user, intended_send=sent, sent=sent, first_token=None, finished=finished,
                             ttft_s=None, e2e_s=finished - sent, itl_s=[], chunk_times=[], chunk_tokens=[],
                             tpot_s=None, decode_tps=None, prompt_tokens=None, output_tokens=None,
                             requested_output_tokens=24, finish_reason=None, error=error,
                             status_code=503 if backend == "engine" else None, server={}))
            heapq.heappush(users, (finished, user))
            continue
        first = sent + ttft
        gaps = [step * rng.uniform(0.7, 1.6) for _ in range(out - 1)]
        times = [first]
        for g in gaps:
            times.append(times[-1] + g)
        finished = times[-1] + 0.001
        if backend == "ollama":
            server_free = finished
        server = ({"eval_count": out, "eval_duration": int((times[-1] - first) * 1e9), "prompt_eval_count": 40,
                   "prompt_eval_duration": 9_000_000, "load_duration": 1_000_000,
                   "total_duration": int((finished - begin) * 1e9)} if backend == "ollama" else {})
        rows.append(dict(backend=backend, level=f"c={conc}", concurrency=conc, rate=None, phase="measure",
                         index=i, user=user, intended_send=sent, sent=sent, first_token=first, finished=finished,
                         ttft_s=ttft, e2e_s=finished - sent, itl_s=gaps, chunk_times=times, chunk_tokens=[1] * out,
                         tpot_s=(finished - sent - ttft) / (out - 1), decode_tps=(out - 1) / (finished - first),
                         prompt_tokens=40, output_tokens=out, requested_output_tokens=24,
                         finish_reason="length" if out == 24 else "stop", error=None, status_code=200,
                         server=server))
        heapq.heappush(users, (finished, user))
    return rows


def make_run(root: Path, *, status: str = "complete", seed: int = 7) -> tuple[Path, dict]:
    rng = random.Random(seed)
    run_id = f"20251125-210000-fixture-{status}"
    run_dir = root / run_id
    (run_dir / "backends").mkdir(parents=True)
    (run_dir / "scenario.yaml").write_text(SCENARIO, encoding="utf-8")
    requests: list[dict] = []
    samples: list[dict] = []
    events: list[dict] = []
    t = T0
    for backend, fail_every in (("engine", 9), ("ollama", 5)):
        events.append(dict(t=t, backend=backend, level=None, kind="launch", message=f"launching {backend}"))
        t += 3.0 if backend == "engine" else 1.5
        events.append(dict(t=t, backend=backend, level=None, kind="ready", message="ready"))
        warm = _simulate(backend, 1, 2, t, rng, 0)
        for r in warm:
            r["phase"], r["level"] = "warmup", "c=1"
        requests += warm
        t = max(r["finished"] for r in warm) + 0.1
        for conc, n in ((1, 6), (4, 16)):
            if status != "complete" and backend == "ollama" and conc == 4:
                n = 5  # the run was cut short here
            events.append(dict(t=t, backend=backend, level=f"c={conc}", kind="level_start", message=""))
            rows = _simulate(backend, conc, n, t, rng, fail_every)
            requests += rows
            for r in rows:
                if r["error"]:
                    events.append(dict(t=r["finished"], backend=backend, level=r["level"], kind="error",
                                       message=r["error"]))
            t_end = max(r["finished"] for r in rows)
            events.append(dict(t=t_end, backend=backend, level=f"c={conc}", kind="level_end", message=""))
            ts = t
            while ts <= t_end:
                busy = sum(1 for r in rows if r["sent"] <= ts <= r["finished"])
                base = dict(t=ts, backend=backend, level=f"c={conc}", gpu_mem_bytes=None, gpu_device_used_bytes=None,
                            kv_blocks_used=None, kv_blocks_total=None, kv_usage=None, running=None, waiting=None,
                            ollama_size_vram=None, ollama_size=None)
                if backend == "engine":
                    base.update(rss_bytes=int(900e6 + 30e6 * busy + rng.uniform(0, 5e6)), kv_blocks_total=512,
                                kv_blocks_used=12 * busy, kv_usage=12 * busy / 512, running=busy, waiting=0,
                                kv_utilization=(0.9 + 0.02 * busy) if busy else 0.0)
                else:
                    base.update(rss_bytes=int(400e6 + rng.uniform(0, 5e6)), ollama_size_vram=0,
                                ollama_size=180_000_000)
                samples.append(base)
                ts += 0.5
            t = t_end + 0.2
    run = {
        "run_id": run_id, "scenario_name": "fixture", "scenario_path": "scenarios/fixture.yaml",
        "started_at": "2025-10-09T08:53:20Z", "finished_at": None if status != "complete" else "2025-10-09T08:54:10Z",
        "status": status,
        "host": {"hostname": "devbox", "os": "Linux 6.1", "python": "3.11.2", "cpu_model": "AMD EPYC 7B13",
                 "cpu_count": 2, "ram_bytes": 24 * 2**30, "gpus": []},
        "pagebench_version": "0.1.0",
        "backends": [
            {"name": "engine", "kind": "paged", "model": "SmolLM2-135M-Instruct", "url": "http://127.0.0.1:8001",
             "launched": True, "launch_command": "engine serve smollm2 --port 8001", "ready_s": 3.0,
             "version": "pagebench-engine 0.1.0", "status": "complete", "error": None,
             "info": {"block_size": 16, "kv_blocks_total": 512, "dtype": "float32", "weights_bytes": 538_000_000,
                      "kv_cache_bytes": 96 * 2**20}},
            {"name": "ollama", "kind": "ollama", "model": "smollm2:135m-q4_1", "url": "http://127.0.0.1:11434",
             "launched": True, "launch_command": "ollama serve", "ready_s": 1.5, "version": "0.12.3",
             "status": "complete" if status == "complete" else "running", "error": None,
             "info": {"size_vram": 0, "size": 180_000_000, "num_ctx": 4096, "quantization": "Q4_1",
                      "parameter_size": "134.52M", "num_parallel": 1, "processor": "100% CPU",
                      "digest": "abc123"}},
        ],
        "levels": [{"label": "c=1", "mode": "closed", "concurrency": 1, "rate": None},
                   {"label": "c=4", "mode": "closed", "concurrency": 4, "rate": None}],
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    for name, rows in (("requests", requests), ("samples", samples), ("events", events)):
        with open(run_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    if status == "complete":
        from harness.metrics import summarize  # what the harness writes at the end of a run

        (run_dir / "summary.json").write_text(json.dumps(summarize(requests)), encoding="utf-8")
    (run_dir / "backends" / "engine.log").write_text("INFO ready\n", encoding="utf-8")
    return run_dir, {"requests": requests, "samples": samples, "events": events, "run": run}


FAKE_SCENARIO = """# report test: a real `bench run` against fake_exact_server (a FAKE server, exact timings, no model)
name: report-fake
description: report test against fake_exact_server (not a model)
backends:
  - name: fake-paged
    kind: paged
    model: fake
    launch: "{python} -m harness.fake_exact_server --port {port} --ttft-ms 30 --itl-ms 10 --fail-every 7"
    ready_timeout_s: 30
  - name: fake-ollama
    kind: ollama
    model: fake
    launch: "{python} -m harness.fake_exact_server --port {port} --ttft-ms 20 --itl-ms 15"
    ready_timeout_s: 30
workload:
  api: chat
  tokenizer: null
  input_tokens: {dist: uniform, min: 16, max: 48}
  output_tokens: 12
  seed: 3
load:
  mode: closed
  concurrency: [1, 3]
  requests: 6
  warmup_requests: 1
  request_timeout_s: 30
"""


def _bench_run(root: Path, name: str, scenario_text: str, ok_codes: tuple[int, ...], timeout_s: float) -> Path:
    """Runs the real `bench run` CLI on a scenario written to root; returns the run folder."""
    import subprocess
    import sys

    scenario = root / f"{name}.yaml"
    scenario.write_text(scenario_text, encoding="utf-8")
    out = root / "reports"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])
    runs = sorted(out.glob(f"*-{name}"))
    if proc.returncode not in ok_codes or not runs:
        raise AssertionError(f"bench run exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return runs[-1]


def bench_fake_run(root: Path, timeout_s: float = 240.0) -> Path:
    """`bench run` on a tiny scenario against fake_exact_server; exit 1 is expected (injected HTTP 500s)."""
    return _bench_run(root, "report-fake", FAKE_SCENARIO, (0, 1), timeout_s)


REAL_SCENARIO = """# report test: a real `bench run` of the engine (demo model, CPU) against the real Ollama
name: report-real
backends:
  - name: engine-fp32
    kind: paged
    model: smollm2-135m-instruct
    launch: "{python} -m engine.cli serve demo --port {port} --dtype float32 --served-model-name smollm2-135m-instruct"
    ready_timeout_s: 300
  - name: ollama-q4
    kind: ollama
    model: smollm2-135m-instruct:q4_1
    launch: "{python} scripts/ollama_serve.py --port {port}"
    num_ctx: 1024
    ready_timeout_s: 120
workload:
  api: chat
  tokenizer: demo
  input_tokens: {dist: uniform, min: 24, max: 48}
  output_tokens: 8
  temperature: 0.0
  seed: 2
load:
  mode: closed
  concurrency: [1, 2]
  requests: 3
  warmup_requests: 1
  request_timeout_s: 120
"""


def bench_real_run(root: Path, timeout_s: float = 600.0) -> Path:
    """`bench run` on a tiny scenario against the real engine and the real Ollama."""
    return _bench_run(root, "report-real", REAL_SCENARIO, (0,), timeout_s)
