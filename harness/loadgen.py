"""The load generator: closed-loop users or open-loop arrivals timed from their intended send time."""
from __future__ import annotations

import asyncio
import gc
import random
import time
from dataclasses import dataclass
from typing import Callable

from harness.backends.base import Backend
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import WorkItem


@dataclass(slots=True)
class LevelPlan:
    label: str
    mode: str
    concurrency: int | None
    rate: float | None
    warmup: int
    requests: int | None
    duration_s: float | None
    spawn_rate: float | None
    wait_time_s: tuple[float, float]
    arrival: str
    max_concurrency: int | None
    timeout_s: float
    seed: int
    abort_after_errors: int

    @property
    def total(self) -> int | None:
        return None if self.requests is None else self.warmup + self.requests


def plans(sc: Scenario) -> list[LevelPlan]:
    ld = sc.load
    wait = (ld.wait_time_s[0], ld.wait_time_s[-1])
    return [LevelPlan(label, ld.mode, c, r, ld.warmup_requests, sc.requests_at(i), ld.duration_s, ld.spawn_rate, wait,
                      ld.arrival, ld.max_concurrency, ld.request_timeout_s, sc.workload.seed, ld.abort_after_errors)
            for i, (label, c, r) in enumerate(sc.levels())]


OnRecord = Callable[[RequestRecord], None]
INTERRUPTED = "interrupted"


class LevelRun:
    """One load level against one backend; every finished request goes to `on_record` as soon as it ends."""

    def __init__(self, backend: Backend, items: list[WorkItem], plan: LevelPlan, on_record: OnRecord,
                 abort: asyncio.Event) -> None:
        self.backend = backend
        self.items = items
        self.plan = plan
        self.on_record = on_record
        self.abort = abort
        self.abort_reason: str | None = None
        self.next_k = 0
        self.connect_failures = 0
        self.in_flight: set[asyncio.Task] = set()
        self.deadline = float("inf")
        self.limit: int | None = plan.total

    def _take(self) -> int | None:
        if self.abort.is_set() or time.perf_counter() >= self.deadline or (self.limit is not None and self.next_k >= self.limit):
            return None
        k, self.next_k = self.next_k, self.next_k + 1
        return k

    def _record(self, k: int, intended: float, user: int | None) -> RequestRecord:
        p = self.plan
        item = self.items[k % len(self.items)]
        return RequestRecord(self.backend.cfg.name, p.label, "warmup" if k < p.warmup else "measure", item.index,
                             item.max_tokens, intended, p.concurrency, p.rate, user)

    async def _one(self, k: int, intended: float, user: int | None) -> None:
        rec = self._record(k, intended, user)
        try:
            await self.backend.generate(self.items[k % len(self.items)], rec, self.plan.timeout_s)
        except asyncio.CancelledError:
            # Ctrl-C or SIGTERM mid-request: the row is kept, marked, instead of vanishing with its task.
            rec.error = INTERRUPTED
            rec.finished = time.perf_counter()
            rec.sent = rec.sent or rec.finished
            self.on_record(rec)
            raise
        if not rec.finished:
            rec.finished = time.perf_counter()
        if rec.sent == 0.0:
            rec.sent = rec.finished
        self.connect_failures = self.connect_failures + 1 if rec.connect_failed else 0
        if self.connect_failures >= self.plan.abort_after_errors and not self.abort.is_set():
            self.stop(f"{self.connect_failures} connection failures in a row: {rec.error}")
        self.on_record(rec)

    def stop(self, reason: str) -> None:
        self.abort_reason = self.abort_reason or reason
        self.abort.set()

    async def _user(self, u: int, start: float) -> None:
        p = self.plan
        rng = random.Random(f"{p.seed}:wait:{p.label}:{u}")
        if p.spawn_rate:
            await asyncio.sleep(max(0.0, start + u / p.spawn_rate - time.perf_counter()))
        while (k := self._take()) is not None:
            await self._one(k, time.perf_counter(), u)
            lo, hi = p.wait_time_s
            if hi > 0:
                await asyncio.sleep(rng.uniform(lo, hi))

    async def _closed(self, start: float, users_n: int | None = None) -> None:
        users = [asyncio.create_task(self._user(u, start)) for u in range(users_n or self.plan.concurrency or 1)]
        self.in_flight.update(users)
        await asyncio.gather(*users)

    async def _open(self, start: float) -> None:
        p = self.plan
        rng = random.Random(f"{p.seed}:arrivals:{p.label}")
        gate = asyncio.Semaphore(p.max_concurrency) if p.max_concurrency else None
        intended = start
        while True:
            while (delay := intended - time.perf_counter()) > 0 and not self.abort.is_set():
                await asyncio.sleep(min(delay, 0.25))
            if gate:
                await gate.acquire()
            k = self._take()
            if k is None:
                if gate:
                    gate.release()
                break
            task = asyncio.create_task(self._one(k, intended, None))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            if gate:
                task.add_done_callback(lambda _t: gate.release())
            intended += rng.expovariate(p.rate) if p.arrival == "poisson" else 1.0 / p.rate
        if self.in_flight:
            await asyncio.gather(*list(self.in_flight))

    async def run(self) -> None:
        # A full collection over a thousand live streams pauses the loop for 10-20 ms, which lands in TTFT/ITL.
        # During a level: objects from before are frozen out of the collector's view and full collections become
        # rare (young garbage is still collected); the thresholds come back when the level ends.
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        p = self.plan
        try:
            if p.warmup:
                # Warm-up requests finish before the measured ones start, so none of them shares (or trails) the
                # measured window: a trailing one would run alone and stretch the level's aggregate throughput.
                self.limit = p.warmup
                await self._closed(time.perf_counter(), min(p.warmup, p.concurrency or p.max_concurrency or p.warmup))
                self.limit = p.total
            start = time.perf_counter()
            if p.duration_s:
                self.deadline = start + p.duration_s
            await (self._closed(start) if p.mode == "closed" else self._open(start))
        finally:
            for t in list(self.in_flight):
                t.cancel()
            gc.set_threshold(*thresholds)
            gc.unfreeze()
