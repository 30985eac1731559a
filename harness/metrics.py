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


CACHE_WARN_SHARE = 0.01  # prompt tokens from a cache beyond the chat template, in a level that asked for no sharing


def prompt_cache(ok: list[dict[str, Any]], shared: bool | None) -> dict[str, Any]:
    """Cached prompt tokens over the prompt tokens of the requests whose server said how many it cached.

    `beyond_template` leaves out each request's chat-template part (the server's prompt tokens beyond the
    messages' own), the one part every request of a run shares by design. `warning` is set when the scenario
    asked for no sharing (`shared` False) and more than 1% of the prompt tokens came from a cache beyond it.
    """
    known = [r for r in ok if r.get("cached_tokens") is not None and r.get("prompt_tokens")]
    prompt = sum(r["prompt_tokens"] for r in known)
    cached = sum(r["cached_tokens"] for r in known)
    with_template = [r for r in known if r.get("template_tokens") is not None]
    beyond = sum(max(0, r["cached_tokens"] - r["template_tokens"]) for r in with_template)
    beyond_of = sum(r["prompt_tokens"] for r in with_template)
    beyond_share = beyond / beyond_of if beyond_of else None
    return {
        "requests_reporting": len(known), "prompt_tokens": prompt, "cached_tokens": cached,
        "share": cached / prompt if prompt else None,
        "template_tokens": float(np.median([r["template_tokens"] for r in with_template])) if with_template else None,
        "beyond_template_tokens": beyond if with_template else None, "beyond_template_share": beyond_share,
        "shared_by_scenario": shared,
        "warning": bool(shared is False and beyond_share is not None and beyond_share > CACHE_WARN_SHARE),
    }


def summarize_level(rows: list[dict[str, Any]], slo: dict[str, float | None] | None = None,
                    shared: bool | None = None) -> dict[str, Any]:
    measured = [r for r in rows if r.get("phase") == "measure"]
    ok = [r for r in measured if not r.get("error")]
    # Cut short by the user (Ctrl-C), not failed by the server: counted apart from errors.
    interrupted = sum(1 for r in measured if r.get("error") == "interrupted")
    errors = len(measured) - len(ok) - interrupted
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
        "interrupted": interrupted,
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
        "prompt_cache": prompt_cache(ok, shared),
        "generator_lag_s": {
            "mean": float(np.mean(lag)) if lag else None,
            "p99": float(np.percentile(lag, 99)) if lag else None,
            "max": float(max(lag)) if lag else None,
        },
    }


def summarize(rows: list[dict[str, Any]], slo: dict[str, float | None] | None = None,
              shared: bool | None = None) -> list[dict[str, Any]]:
    """`shared`: whether the scenario asked for shared prompts (None: not known, as in runs from before tagging)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["level"]), []).append(r)
    return [summarize_level(g, slo, shared) for g in groups.values()]
