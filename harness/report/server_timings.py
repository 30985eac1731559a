"""A server's own clock beside the harness's: Ollama's final message carries `prompt_eval_duration`,
`eval_duration` and `load_duration` (nanoseconds). Where they and the client's measurements part, the report
says why in a sentence, so a reader who quotes Ollama's numbers knows what they leave out."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.report import metrics
from harness.report.data import Run, backends

# Below this, two clocks measuring the same thing agree within noise and stream overhead.
DECODE_TOLERANCE = 0.10
WAIT_MIN_S = 0.1


@dataclass(slots=True)
class ServerTimings:
    backend: str
    level: str
    requests: int
    ttft_p50: float | None  # client: request sent to first token
    prompt_eval_p50: float | None  # server: prompt_eval_duration
    load_p50: float | None  # server: load_duration
    decode_p50: float | None  # client: tokens after the first over the time after the first
    eval_rate_p50: float | None  # server: eval_count / eval_duration
    notes: list[str]


def _seconds(rows: pd.DataFrame, key: str) -> list[float]:
    return [float(s[key]) / 1e9 for s in rows["server"] if isinstance(s, dict) and s.get(key) is not None]


def _eval_rates(rows: pd.DataFrame) -> list[float]:
    return [s["eval_count"] / (s["eval_duration"] / 1e9) for s in rows["server"]
            if isinstance(s, dict) and s.get("eval_count") and s.get("eval_duration")]


def _notes(t: ServerTimings) -> list[str]:
    notes = []
    server_first = (t.prompt_eval_p50 or 0.0) + (t.load_p50 or 0.0)
    if t.ttft_p50 is not None and t.prompt_eval_p50 is not None and t.ttft_p50 - server_first > max(WAIT_MIN_S, server_first):
        notes.append(f"TTFT p50 {t.ttft_p50:.2f} s against {t.prompt_eval_p50:.2f} s of prompt evaluation: Ollama's "
                     f"durations leave out the {t.ttft_p50 - server_first:.2f} s a request waits for a free slot "
                     "(and for batch-mates' prompts)")
    if t.decode_p50 and t.eval_rate_p50 and abs(t.eval_rate_p50 / t.decode_p50 - 1) > DECODE_TOLERANCE:
        notes.append(f"Ollama's eval rate p50 {t.eval_rate_p50:,.1f} tokens/s against {t.decode_p50:,.1f} measured "
                     f"at the client ({t.eval_rate_p50 / t.decode_p50 - 1:+.0%})")
    return notes


def server_timings(data: Run) -> list[ServerTimings]:
    """One entry per backend and level whose rows carry a server's own durations (Ollama's native API)."""
    ok = metrics.succeeded(metrics.measured(data.requests))
    out = []
    for b in backends(data):
        mine = ok[ok["backend"] == b["name"]]
        if mine.empty or not _seconds(mine, "eval_duration"):
            continue
        for lv in metrics.levels(data):
            rows = mine[mine["level"] == lv.label]
            if rows.empty:
                continue
            t = ServerTimings(b["name"], lv.label, len(rows), metrics.pct(rows["ttft_s"], 50),
                              metrics.pct(_seconds(rows, "prompt_eval_duration"), 50),
                              metrics.pct(_seconds(rows, "load_duration"), 50), metrics.pct(rows["decode_tps"], 50),
                              metrics.pct(_eval_rates(rows), 50), [])
            t.notes = _notes(t)
            out.append(t)
    return out
