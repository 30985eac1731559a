from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.report.data import Run, backends


@dataclass(slots=True)
class Level:
    label: str
    mode: str
    load: float | None

    @property
    def unit(self) -> str:
        return "req/s" if self.mode == "open" else "users"


def pct(values: Any, q: float) -> float | None:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


def _num(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return float(value)


def levels(data: Run) -> list[Level]:
    found: dict[str, Level] = {}
    for lv in data.run.get("levels", []):
        mode = lv.get("mode") or ("open" if lv.get("rate") is not None else "closed")
        load = lv.get("rate") if mode == "open" else lv.get("concurrency")
        found[lv["label"]] = Level(lv["label"], mode, _num(load))
    for _, row in data.requests.drop_duplicates("level").iterrows():  # levels a torn run.json never listed
        if row["level"] not in found and isinstance(row["level"], str):
            rate, conc = _num(row.get("rate")), _num(row.get("concurrency"))
            mode = "open" if rate is not None else "closed"
            found[row["level"]] = Level(row["level"], mode, rate if mode == "open" else conc)
    return sorted(found.values(), key=lambda lv: (lv.mode != "closed", lv.load if lv.load is not None else 0.0))


def measured(requests: pd.DataFrame) -> pd.DataFrame:
    return requests[requests["phase"].fillna("measure") == "measure"]


def succeeded(requests: pd.DataFrame) -> pd.DataFrame:
    return requests[requests["error"].isna()]


def _get(row: dict[str, Any], key: str, sub: str | None = None) -> float | None:
    value = row.get(key)
    if sub is not None:
        value = value.get(sub) if isinstance(value, dict) else None
    return _num(value)


def level_stats(data: Run) -> pd.DataFrame:
    """One row per backend and level: the harness's summary (summary.json, or recomputed from the rows
    by load_run) plus what only the report derives, in backend and load order."""
    order = levels(data)
    modes = {lv.label: lv for lv in order}
    names = [b["name"] for b in backends(data)]
    ok = succeeded(measured(data.requests))
    rows = []
    for s in data.summary or []:
        lv = modes.get(s.get("level"))
        if lv is None or s.get("backend") not in names:
            continue
        mine = ok[(ok["backend"] == s["backend"]) & (ok["level"] == lv.label)]
        rows.append({
            "backend": s["backend"], "level": lv.label, "mode": lv.mode, "load": lv.load,
            "requests": int(s.get("requests") or 0), "errors": int(s.get("errors") or 0),
            "duration_s": _get(s, "duration_s"), "output_tps": _get(s, "output_throughput"),
            "request_tps": _get(s, "request_throughput"), "output_tokens_mean": _get(s, "output_tokens", "mean"),
            **{f"{n}_{p}": _get(s, key, p) for n, key in (("ttft", "ttft_s"), ("itl", "itl_s"), ("e2e", "e2e_s"),
                                                          ("decode_tps", "decode_tps")) for p in ("p50", "p99")},
            "max_decoding": max_overlap(mine),
            **cache_columns(s.get("prompt_cache")),
            "_order": (names.index(s["backend"]), order.index(lv)),
        })
    if not rows:
        return pd.DataFrame(columns=["backend", "level", "mode", "load", "requests", "errors", "output_tps"])
    return pd.DataFrame(rows).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def cache_columns(pc: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's prompt-cache figures as level-table (and levels.csv) columns; None where not reported."""
    pc = pc if isinstance(pc, dict) else {}
    return {"cached_share": _num(pc.get("share")), "cached_beyond_template_share": _num(pc.get("beyond_template_share")),
            "cached_tokens": _num(pc.get("cached_tokens")) if pc.get("requests_reporting") else None,
            "template_tokens": _num(pc.get("template_tokens")), "cache_warning": bool(pc.get("warning"))}


def cache_warnings(stats: pd.DataFrame) -> list[pd.Series]:
    if stats.empty or "cache_warning" not in stats:
        return []
    return [r for _, r in stats[stats["cache_warning"].fillna(False).astype(bool)].iterrows()]


def max_overlap(ok: pd.DataFrame) -> int:
    """Most requests streaming tokens at the same moment: what the server actually batched."""
    spans = ok[["first_token", "finished"]].dropna()
    edges = [(t, 1) for t in spans["first_token"]] + [(t, -1) for t in spans["finished"]]
    best = cur = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        cur += step
        best = max(best, cur)
    return best


@dataclass(slots=True)
class Memory:
    peak_bytes: float | None
    source: str  # "gpu", "gpu_device", "ollama_vram", "ram" or "none"
    kv_usage_peak: float | None  # pool occupancy at its peak: blocks handed out over the pool
    kv_blocks_total: float | None
    running_peak: float | None
    waiting_peak: float | None
    kv_utilization_at_peak: float | None = None  # tokens held over allocated slots, when occupancy peaked


def memory(data: Run, backend: str) -> Memory:
    s = data.samples[data.samples["backend"] == backend]

    def peak(col: str) -> float | None:
        return _num(pd.to_numeric(s[col], errors="coerce").max()) if col in s and not s.empty else None

    has_gpu = bool(data.run.get("host", {}).get("gpus"))
    peak_bytes, source = None, "none"
    for col, src in (("gpu_mem_bytes", "gpu"), ("gpu_device_used_bytes", "gpu_device"),
                     ("ollama_size_vram", "ollama_vram"), ("rss_bytes", "ram")):
        value = peak(col)
        if value is None or (src != "ram" and not has_gpu) or (src == "ollama_vram" and value == 0):
            continue
        peak_bytes, source = value, src
        break
    return Memory(peak_bytes, source, peak("kv_usage"), peak("kv_blocks_total"), peak("running"), peak("waiting"),
                  utilization_at_peak(s))


def utilization_at_peak(samples: pd.DataFrame) -> float | None:
    """The allocated blocks' utilization in the sample where pool occupancy peaked (the fullest of those, on ties).

    Read from the engine's /metrics during the run, so a server that stayed up reports this run's peak, not its own.
    """
    if "kv_utilization" not in samples or "kv_usage" not in samples or samples.empty:
        return None
    both = pd.DataFrame({"usage": pd.to_numeric(samples["kv_usage"], errors="coerce"),
                         "util": pd.to_numeric(samples["kv_utilization"], errors="coerce")}).dropna()
    both = both[both["usage"] > 0]
    if both.empty:
        return None
    return _num(both[both["usage"] == both["usage"].max()]["util"].max())
