"""Ollama's own durations beside the client's measurements, and a sentence wherever they part."""
from __future__ import annotations

from pathlib import Path

from harness.report import build_report
from harness.report.data import load
from harness.report.server_timings import ServerTimings, _notes, server_timings
from tests.report_fixture import make_run


def test_queueing_that_ollamas_durations_leave_out_is_named(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    found = server_timings(load(run_dir))
    assert {t.backend for t in found} == {"ollama"}, "only rows that carry a server's own durations"
    by_level = {t.level: t for t in found}
    lone, crowded = by_level["c=1"], max(found, key=lambda t: t.ttft_p50)
    assert lone.prompt_eval_p50 == 0.009 and lone.load_p50 == 0.001
    assert not any("free slot" in n for n in lone.notes), "one user never waits"
    assert any("free slot" in n for n in crowded.notes), crowded
    assert crowded.eval_rate_p50 and crowded.decode_p50
    html = build_report(run_dir).read_text()
    assert 'id="server-timings"' in html and "free slot" in html


def test_a_server_clock_that_disagrees_on_decode_speed_is_named() -> None:
    t = ServerTimings("ollama", "c=8", 8, ttft_p50=0.2, prompt_eval_p50=0.18, load_p50=0.0, decode_p50=50.0,
                      eval_rate_p50=80.0, notes=[])
    notes = _notes(t)
    assert len(notes) == 1 and "+60%" in notes[0]
    assert _notes(ServerTimings("ollama", "c=8", 8, 0.2, 0.18, 0.0, 50.0, 52.0, [])) == []
