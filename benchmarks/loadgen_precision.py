"""How exactly does the load generator measure? Prints JSON.

fake_exact_server (pinned to one core) emits tokens on a fixed schedule and logs the monotonic time it sent each
one; the harness's own load generator and backend code (pinned to another core) stream N concurrent requests and
record when each token arrived. Both clocks are CLOCK_MONOTONIC, so for every token
  TTFT error = measured first-token time - time the server sent it,
  ITL error  = measured gap - the server's gap,
and the generator's CPU time per token is its overhead.

  python benchmarks/loadgen_precision.py                      # 1,000 streams, paged/OpenAI SSE over httpx
  python benchmarks/loadgen_precision.py --api ollama         # the ollama package's AsyncClient (NDJSON)
  python benchmarks/loadgen_precision.py --client openai      # the openai package's AsyncOpenAI instead of httpx
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backends import make_backend  # noqa: E402
from harness.fake_exact_server import running  # noqa: E402
from harness.loadgen import LevelPlan, LevelRun  # noqa: E402
from harness.record import RequestRecord  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.workload import WorkItem  # noqa: E402


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.abs(np.asarray(values)) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4), "max": round(float(a.max()), 4)}


class OpenAIClientBackend:
    """The same request through the official openai package, to weigh its per-chunk cost against raw httpx."""

    def __init__(self, inner) -> None:
        from openai import AsyncOpenAI

        self.inner = inner
        self.cfg = inner.cfg
        self.client = AsyncOpenAI(base_url=inner.url + "/v1", api_key="none", max_retries=0,
                                  http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None), timeout=httpx.Timeout(None, connect=30)))

    async def generate(self, item: WorkItem, rec: RequestRecord, timeout_s: float) -> None:
        body = self.inner.body(item)
        extra = {k: body.pop(k) for k in ("ignore_eos", "min_tokens", "seed") if k in body}
        body.pop("stream")
        rec.sent = time.perf_counter()
        stream = await self.client.chat.completions.create(**body, stream=True, extra_body=extra)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                rec.token(now)
            if chunk.usage:
                rec.output_tokens = chunk.usage.completion_tokens
        rec.finished = time.perf_counter()

    async def close(self) -> None:
        await self.client.close()


async def request_cost(args: argparse.Namespace, url: str, n: int = 200) -> float:
    """CPU per request on a warm connection, one token each: what starting a request costs the generator."""
    sc = scenario(args, url)
    backend = make_backend(sc.backends[0], url, sc.workload)
    if args.client == "openai":
        backend = OpenAIClientBackend(backend)
    item = WorkItem(0, "x", None, [{"role": "user", "content": "x " * 16}], "x", 16, 1, 1)
    await backend.generate(item, RequestRecord("fake", "c", "warmup", 0, 1, time.perf_counter()), 60.0)
    cpu0 = time.process_time()
    for _ in range(n):
        await backend.generate(item, RequestRecord("fake", "c", "warmup", 0, 1, time.perf_counter()), 60.0)
    cost = (time.process_time() - cpu0) / n
    await backend.close()
    return cost


def scenario(args: argparse.Namespace, url: str) -> Scenario:
    kind = "ollama" if args.api == "ollama" else "paged"
    return Scenario.model_validate({"name": "precision", "backends": [{"name": "fake", "kind": kind, "model": "fake", "url": url}],
                                    "workload": {"tokenizer": None, "api": "chat"}, "load": {"requests": args.streams}})


async def drive(args: argparse.Namespace, url: str) -> tuple[list[RequestRecord], float, float]:
    sc = scenario(args, url)
    backend = make_backend(sc.backends[0], url, sc.workload)
    if args.client == "openai":
        backend = OpenAIClientBackend(backend)
    items = [WorkItem(i, "x " * 16, None, [{"role": "user", "content": "x " * 16}], "x " * 16, 16, args.tokens, 1000 + i)
             for i in range(args.streams)]
    plan = LevelPlan("c", "closed", args.streams, None, 0, args.streams, None, args.spawn_rate, (0.0, 0.0), "poisson",
                     None, 600.0, 0, 10**9)
    records: list[RequestRecord] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await LevelRun(backend, items, plan, records.append, asyncio.Event()).run()
    return records, time.process_time() - cpu0, time.perf_counter() - wall0


def prioritize(how: str) -> None:
    """Children inherit this, so the fake server gets the same treatment as the generator."""
    if how == "nice":
        os.nice(-15)
    elif how == "realtime":
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    p.add_argument("--ttft-ms", type=float, default=2000.0)
    p.add_argument("--itl-ms", type=float, default=100.0)
    p.add_argument("--spawn-rate", type=float, default=500.0, help="streams started per second (spreads their token phases)")
    p.add_argument("--api", choices=["openai", "ollama"], default="openai")
    p.add_argument("--client", choices=["httpx", "openai"], default="httpx")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop", help="uvloop is what `bench run` uses where installed")
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--priority", choices=["normal", "nice", "realtime"], default="normal",
                   help="on a shared machine: raise both processes' priority (nice -15, or SCHED_FIFO 10; needs root)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    stamp_log = Path(tempfile.mkdtemp()) / "stamps.jsonl"
    server_args = ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--stamp-log", str(stamp_log)]
    prioritize(args.priority)
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    with running(*server_args, cpu=args.server_cpu) as url:
        if args.api == "ollama":
            httpx.post(url + "/api/generate", json={"model": "fake", "prompt": ""})
        os.sched_setaffinity(0, {args.client_cpu})
        records, cpu_s, wall_s = run(drive(args, url))
    with running("--ttft-ms", "0", "--itl-ms", "0", cpu=args.server_cpu) as url:
        if args.api == "ollama":
            httpx.post(url + "/api/generate", json={"model": "fake", "prompt": ""})
        per_request = run(request_cost(args, url))
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    truth = {}
    for line in stamp_log.read_text().splitlines():
        row = json.loads(line)
        truth[row["seed"]] = row["sent"]
    ttft_err, itl_err, delays, errors, mismatched = [], [], [], 0, 0
    for rec in records:
        sent = truth.get(1000 + rec.index)
        if rec.error or sent is None:
            errors += 1
            continue
        if len(sent) != len(rec.chunk_times):
            mismatched += 1
            continue
        d = np.asarray(rec.chunk_times) - np.asarray(sent)
        delays.extend(d.tolist())
        ttft_err.append(float(d[0]))
        itl_err.extend(np.diff(d).tolist())
    tokens = sum(len(r.chunk_times) for r in records)
    print(json.dumps({
        "streams": args.streams, "tokens_per_stream": args.tokens, "ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms,
        "api": args.api, "client": args.client, "loop": args.loop, "client_cpus": 1, "priority": args.priority,
        "load_avg_1m": round(os.getloadavg()[0], 2), "errors": errors, "mismatched_streams": mismatched,
        "tokens": tokens, "wall_s": round(wall_s, 3), "tokens_per_s": round(tokens / wall_s, 1),
        "ttft_abs_error_ms": pct(ttft_err), "itl_abs_error_ms": pct(itl_err),
        "arrival_delay_ms": {**pct(delays), "mean": round(float(np.mean(delays)) * 1000, 4) if delays else None},
        "generator_cpu_s": round(cpu_s, 3), "generator_cpu_util": round(cpu_s / wall_s, 3),
        "overhead_us_per_token": round(cpu_s / max(tokens, 1) * 1e6, 2),
        "overhead_us_per_request_start": round(per_request * 1e6, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
