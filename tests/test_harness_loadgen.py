"""The load generator's loops against fake_exact_server (a fake with exact token timing)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from harness.backends import make_backend
from harness.fake_exact_server import running
from harness.loadgen import LevelRun, plans
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload


@pytest.fixture(scope="module")
def fake():
    with running("--ttft-ms", "10", "--itl-ms", "5") as url:
        yield url


def level(url: str, **load) -> tuple[list[RequestRecord], LevelRun]:
    sc = Scenario.model_validate({"name": "t", "backends": [{"name": "b", "kind": "paged", "model": "fake", "url": url}],
                                  "workload": {"tokenizer": None, "output_tokens": 6, "input_tokens": 8}, "load": load})
    items = build_workload(sc, Path("."))
    records: list[RequestRecord] = []

    async def go() -> LevelRun:
        backend = make_backend(sc.backends[0], url, sc.workload)
        lr = LevelRun(backend, items, plans(sc)[0], records.append, asyncio.Event())
        await lr.run()
        await backend.close()
        return lr

    return records, asyncio.run(go())


def max_overlap(records: list[RequestRecord]) -> int:
    edges = sorted([(r.sent, 1) for r in records] + [(r.finished, -1) for r in records], key=lambda e: (e[0], e[1]))
    depth = best = 0
    for _, d in edges:
        depth += d
        best = max(best, depth)
    return best


def test_closed_loop_keeps_exactly_c_in_flight_and_marks_warmup(fake):
    records, lr = level(fake, concurrency=4, requests=12, warmup_requests=4)
    assert len(records) == 16 and all(r.error is None for r in records)
    assert max_overlap(records) == 4
    by_send = sorted(records, key=lambda r: r.sent)
    assert [r.phase for r in by_send[:4]] == ["warmup"] * 4
    assert max(r.finished for r in by_send[:4]) <= min(r.sent for r in by_send[4:]), "warm-up ends before measuring"
    assert sum(r.phase == "measure" for r in records) == 12
    assert sorted(r.index for r in records) == list(range(16))
    assert {r.user for r in records} == {0, 1, 2, 3}
    assert all(r.intended <= r.sent < r.first_token < r.finished for r in records)


def test_spawn_rate_and_wait_time(fake):
    records, _ = level(fake, concurrency=3, spawn_rate=10, wait_time_s=0.05, requests=6)
    starts = sorted(min(r.sent for r in records if r.user == u) for u in range(3))
    assert all(b - a >= 0.07 for a, b in zip(starts, starts[1:])), starts
    for u in range(3):
        mine = sorted((r for r in records if r.user == u), key=lambda r: r.sent)
        assert all(b.sent - a.finished >= 0.05 for a, b in zip(mine, mine[1:]))


def test_open_loop_constant_rate_is_timed_from_intended_send(fake):
    records, _ = level(fake, mode="open", rate=50, arrival="constant", requests=10)
    intended = np.sort([r.intended for r in records])
    assert np.allclose(np.diff(intended), 0.02, atol=1e-9)
    assert all(r.sent >= r.intended for r in records)


def test_open_loop_poisson_schedule_is_the_same_every_run(fake):
    a, _ = level(fake, mode="open", rate=100, requests=8)
    b, _ = level(fake, mode="open", rate=100, requests=8)
    offsets = [np.sort([r.intended for r in rs]) for rs in (a, b)]
    assert np.allclose(offsets[0] - offsets[0][0], offsets[1] - offsets[1][0], atol=1e-9)
    assert len(set(np.round(np.diff(offsets[0]), 6))) > 1, "poisson gaps vary"


def test_open_loop_max_concurrency_caps_in_flight(fake):
    records, _ = level(fake, mode="open", rate=1000, max_concurrency=2, requests=8)
    assert len(records) == 8 and max_overlap(records) <= 2


def test_duration_stops_sending(fake):
    records, lr = level(fake, concurrency=2, duration_s=0.3)
    assert len(records) >= 4
    first = min(r.sent for r in records)
    assert all(r.sent - first < 0.3 for r in records)


def test_consecutive_connection_failures_abort_the_level():
    records, lr = level("http://127.0.0.1:9", concurrency=1, requests=100, abort_after_errors=3)
    assert len(records) == 3 and lr.abort_reason.startswith("3 connection failures in a row")
