"""Aggregates per backend and load level, computed from request rows."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

PCTS = (50, 90, 95, 99)


def stats(values: Iterable[float | None]) -> dict[str, float | None]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PCTS}}
    qs = np.percentile(arr, PCTS)
    return {"mean": float(arr.mean()), **{f"p{p}": float(q) for p, q in zip(PCTS, qs)}}


def _meets(row: dict[str, Any], slo: dict[str, float | None]) -> bool:
    limits = {"ttft_s": row.get("ttft_s"), "itl_s": row.get("tpot_s"), "e2e_s": row.get("e2e_s")}
    for key, value in limits.items():
        limit = slo.get(key)
        if limit is None:
            continue
        if key == "itl_s" and value is None and (row.get("output_tokens") or 0) <= 1:
            continue
        if value is None or value > limit:
            return False
    return True


def summarize_level(rows: list[dict[str, Any]], slo: dict[str, float | None] | None = None) -> dict[str, Any]:
    measured = [r for r in rows if r.get("phase") == "measure"]
    ok = [r for r in measured if not r.get("error")]
    errors = len(measured) - len(ok)
    first = rows[0] if rows else {}
    if measured:
        start = min(r["intended_send"] for r in measured)
        end = max(r["finished"] for r in measured)
        duration = max(end - start, 1e-9)
    else:
        duration = 0.0
    out_tokens = [r["output_tokens"] for r in ok if r.get("output_tokens") is not None]
    prompt_tokens = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None]
    rate = (lambda n: n / duration if duration else None)
    lag = [r["sent"] - r["intended_send"] for r in measured]
    goodput = None
    if slo and any(v is not None for v in slo.values()):
        goodput = rate(sum(1 for r in ok if _meets(r, slo)))
    return {
        "backend": first.get("backend"),
        "level": first.get("level"),
        "concurrency": first.get("concurrency"),
        "rate": first.get("rate"),
        "requests": len(measured),
        "errors": errors,
        "error_rate": errors / len(measured) if measured else None,
        "duration_s": duration,
        "request_throughput": rate(len(ok)),
        "output_throughput": rate(sum(out_tokens)),
        "total_throughput": rate(sum(out_tokens) + sum(prompt_tokens)),
        "ttft_s": stats(r.get("ttft_s") for r in ok),
        "itl_s": stats(x for r in ok for x in r.get("itl_s") or ()),
        "tpot_s": stats(r.get("tpot_s") for r in ok),
        "e2e_s": stats(r.get("e2e_s") for r in ok),
        "decode_tps": stats(r.get("decode_tps") for r in ok),
        "output_tokens": {
            "mean": float(np.mean(out_tokens)) if out_tokens else None,
            "p50": float(np.percentile(out_tokens, 50)) if out_tokens else None,
            "min": int(min(out_tokens)) if out_tokens else None,
            "max": int(max(out_tokens)) if out_tokens else None,
        },
        "goodput": goodput,
        "generator_lag_s": {
            "mean": float(np.mean(lag)) if lag else None,
            "p99": float(np.percentile(lag, 99)) if lag else None,
            "max": float(max(lag)) if lag else None,
        },
    }


def summarize(rows: list[dict[str, Any]], slo: dict[str, float | None] | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["level"]), []).append(r)
    return [summarize_level(g, slo) for g in groups.values()]
