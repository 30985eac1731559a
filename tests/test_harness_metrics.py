"""Per-request derivations (TTFT, ITL, TPOT, decode tok/s) and per-level aggregates, on hand-made numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.metrics import stats, summarize
from harness.record import Clock, RequestRecord
from harness.results import RequestRow, RunInfo, RunWriter, load_run


def record(intended: float, sent: float, chunks: list[float], finished: float, out: int | None = None,
           phase: str = "measure", error: str | None = None, level: str = "c=1") -> RequestRecord:
    r = RequestRecord("b", level, phase, 0, 8, intended, concurrency=1)
    r.sent = sent
    for t in chunks:
        r.token(t)
    r.finished = finished
    r.output_tokens = out if out is not None else (len(chunks) if not error else None)
    r.prompt_tokens = 10
    r.error = error
    return r


def clock_at_zero() -> Clock:
    c = Clock()
    c.perf0, c.unix0 = 0.0, 1000.0
    return c


def test_record_derivations():
    row = record(1.0, 1.001, [1.1, 1.12, 1.15, 1.2], 1.21, out=4).to_row(clock_at_zero())
    RequestRow.model_validate(row)
    assert row["ttft_s"] == pytest.approx(0.1)
    assert row["itl_s"] == pytest.approx([0.02, 0.03, 0.05])
    assert row["e2e_s"] == pytest.approx(0.21)
    assert row["tpot_s"] == pytest.approx((1.21 - 1.1) / 3)
    assert row["decode_tps"] == pytest.approx(3 / (1.21 - 1.1))
    assert row["intended_send"] == pytest.approx(1001.0) and row["chunk_times"][0] == pytest.approx(1001.1)
    assert row["chunk_tokens"] == [1, 1, 1, 1]


def test_open_loop_ttft_counts_from_intended_send():
    row = record(1.0, 1.5, [1.6], 1.6, out=1).to_row(clock_at_zero())
    assert row["ttft_s"] == pytest.approx(0.6)
    assert row["tpot_s"] is None and row["decode_tps"] is None


def test_output_tokens_fall_back_to_counted_chunks():
    r = record(0.0, 0.0, [0.1, 0.2], 0.2)
    r.output_tokens = None
    row = r.to_row(clock_at_zero())
    assert row["output_tokens"] == 2 and row["server"]["output_tokens_source"] == "chunks"


def test_failed_request_keeps_partial_timings():
    row = record(0.0, 0.0, [0.1, 0.2], 0.25, error="stream broken").to_row(clock_at_zero())
    assert row["error"] == "stream broken" and row["output_tokens"] is None and len(row["chunk_times"]) == 2


def test_summarize_level():
    clock = clock_at_zero()
    rows = [record(0.0, 0.0, [0.5], 0.5, phase="warmup").to_row(clock)]
    for i in range(10):
        t0 = 1.0 + i
        rows.append(record(t0, t0, [t0 + 0.1 * (i + 1), t0 + 0.1 * (i + 1) + 0.05], t0 + 0.1 * (i + 1) + 0.05).to_row(clock))
    rows.append(record(11.0, 11.0, [], 12.0, error="HTTP 500").to_row(clock))
    (s,) = summarize(rows, {"ttft_s": 0.55, "itl_s": None, "e2e_s": None})
    assert s["requests"] == 11 and s["errors"] == 1 and s["error_rate"] == pytest.approx(1 / 11)
    assert s["duration_s"] == pytest.approx(11.0)
    assert s["request_throughput"] == pytest.approx(10 / 11)
    assert s["output_throughput"] == pytest.approx(20 / 11)
    assert s["total_throughput"] == pytest.approx((20 + 100) / 11)
    ttfts = [0.1 * (i + 1) for i in range(10)]
    assert s["ttft_s"]["p50"] == pytest.approx(np.percentile(ttfts, 50))
    assert s["ttft_s"]["p99"] == pytest.approx(np.percentile(ttfts, 99))
    assert s["itl_s"]["mean"] == pytest.approx(0.05)
    assert s["goodput"] == pytest.approx(5 / 11)
    assert s["output_tokens"] == {"mean": 2.0, "p50": 2.0, "min": 2, "max": 2}
    assert s["generator_lag_s"]["max"] == pytest.approx(0.0)


def test_no_slo_means_no_goodput_and_empty_stats():
    assert summarize([record(0, 0, [0.1], 0.1).to_row(clock_at_zero())])[0]["goodput"] is None
    assert stats([]) == {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None}


def test_load_run_recomputes_summary_and_skips_torn_line(tmp_path):
    info = RunInfo(run_id="r", scenario_name="s", scenario_path="s.yaml", started_at="2025-01-01T00:00:00Z",
                   host={"hostname": "h", "os": "o", "python": "3"}, pagebench_version="0")
    w = RunWriter(tmp_path / "r", info, b"name: s\nslo: {ttft_s: 0.05}\n")
    clock = clock_at_zero()
    w.request(record(0, 0, [0.1, 0.2], 0.2).to_row(clock))
    w.request(record(1, 1, [1.01, 1.02], 1.02).to_row(clock))
    w.sample({"t": 1.0, "backend": "b", "rss_bytes": 5})
    w.close()
    with open(tmp_path / "r" / "requests.jsonl", "a") as f:
        f.write('{"backend": "b", "level": "c=1", "pha')
    run = load_run(tmp_path / "r")
    assert run.summary_recomputed and len(run.requests) == 2
    assert run.summary[0]["requests"] == 2 and run.summary[0]["goodput"] is not None
    assert run.samples["rss_bytes"].tolist() == [5] and "kv_usage" in run.samples.columns
    assert run.scenario_text.startswith("name: s")
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "running"


def test_load_run_rejects_non_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(tmp_path)
