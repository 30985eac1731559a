"""One self-contained HTML page: plotly.js, figures and raw rows all inline, so it opens from disk offline."""
from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from plotly.offline import get_plotlyjs

from harness.report import charts, metrics
from harness.report.claims import SIDE_NAME
from harness.report.data import Run, backends, run_id
from harness.report.server_timings import server_timings
from harness.report.table import build_table
from harness.report.summary import cache_warning_text
from harness.report.text import STRINGS, fmt_bytes, fmt_pct, fmt_rate, fmt_seconds, t

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)


@cache
def _plotly_js() -> str:
    return get_plotlyjs()


def rows_csv(frame: pd.DataFrame) -> str:
    """Flat CSV: nested dicts become dotted columns, lists become JSON text in one cell."""
    out = frame.copy()
    for col in list(out.columns):
        if out[col].map(lambda v: isinstance(v, dict)).any():
            nested = pd.json_normalize(out[col].map(lambda v: v if isinstance(v, dict) else {}).tolist())
            nested.index = out.index
            out = out.drop(columns=col).join(nested.add_prefix(f"{col}."))
        elif out[col].map(lambda v: isinstance(v, list)).any():
            out[col] = out[col].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    return out.to_csv(index=False)


def _script_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def _duration(run: dict[str, Any], requests: pd.DataFrame) -> str:
    try:
        start = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))
        if run.get("finished_at"):
            end = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
            return fmt_seconds((end - start).total_seconds())
    except (KeyError, TypeError, ValueError):
        pass
    span = requests["finished"].max() - requests["sent"].min() if not requests.empty else None
    return fmt_seconds(None if span is None or pd.isna(span) else float(span)) + " (rows)"


def _level_rows(data: Run) -> list[dict[str, str]]:
    stats = metrics.level_stats(data)
    rows = []
    for _, r in stats.iterrows():
        rows.append({
            "backend": r["backend"], "level": r["level"], "requests": str(r["requests"]),
            "errors": str(r["errors"]), "output_tps": fmt_rate(r["output_tps"]),
            "request_tps": fmt_rate(r["request_tps"]), "decode": fmt_rate(r["decode_tps_p50"]),
            "ttft": f"{fmt_seconds(r['ttft_p50'])} / {fmt_seconds(r['ttft_p99'])}",
            "itl": f"{fmt_seconds(r['itl_p50'])} / {fmt_seconds(r['itl_p99'])}",
            "e2e": f"{fmt_seconds(r['e2e_p50'])} / {fmt_seconds(r['e2e_p99'])}",
            "len": fmt_rate(r["output_tokens_mean"]), "batch": str(r["max_decoding"]),
            "cached": fmt_pct(r["cached_share"]), "beyond": fmt_pct(r["cached_beyond_template_share"]),
            "warn": bool(r["cache_warning"]),
        })
    return rows


def _server_timing_rows(data: Run) -> list[dict[str, str]]:
    return [{"backend": t.backend, "level": t.level, "requests": str(t.requests), "ttft": fmt_seconds(t.ttft_p50),
             "prompt_eval": fmt_seconds(t.prompt_eval_p50), "load": fmt_seconds(t.load_p50),
             "decode": fmt_rate(t.decode_p50), "eval_rate": fmt_rate(t.eval_rate_p50), "notes": t.notes}
            for t in server_timings(data)]


def _prompts_note(prompts: dict[str, Any], lang: str) -> str | None:
    if prompts.get("sharing"):
        return t("prompts_note", lang, how=t("cache_shared", lang, why=prompts["sharing"]))
    if prompts.get("tagged"):
        return t("prompts_note", lang, how=t("prompts_tagged", lang, n=prompts.get("tag_words")))
    return None


def _error_counts(data: Run) -> list[tuple[str, str, int]]:
    bad = data.requests[data.requests["error"].notna()]
    if bad.empty:
        return []
    counts = bad.groupby(["backend", "error"]).size().sort_values(ascending=False)
    return [(b, e, int(n)) for (b, e), n in counts.head(20).items()]


def _run_view(data: Run, lang: str) -> dict[str, Any]:
    run = data.run
    views = []
    for b in backends(data):
        info = {k: (fmt_bytes(v) + f" ({v})" if isinstance(v, (int, float)) and k.endswith(("bytes", "size", "size_vram"))
                    else v)
                for k, v in (b.get("info") or {}).items()}
        views.append({**b, "info": info})
    return {
        "run_id": run_id(data), "status": run.get("status", "unknown"),
        "started_at": run.get("started_at", "?"), "finished_at": run.get("finished_at"),
        "duration": _duration(run, data.requests), "host": run.get("host") or {},
        "ram": fmt_bytes((run.get("host") or {}).get("ram_bytes")),
        "gpus": [{**g, "memory": fmt_bytes(g.get("memory_total_bytes"))} for g in (run.get("host") or {}).get("gpus", [])],
        "version": run.get("pagebench_version"), "backends": views, "levels": run.get("levels", []),
        "scenario": data.scenario_text, "scenario_path": run.get("scenario_path"), "level_rows": _level_rows(data),
        "server_timings": _server_timing_rows(data),
        "errors": _error_counts(data), "notes": [t("recomputed", lang)] if data.summary_recomputed else [],
        "cache_warnings": [cache_warning_text(r, lang) for r in metrics.cache_warnings(metrics.level_stats(data))],
        "prompts_note": _prompts_note(run.get("prompts") or {}, lang),
    }


def render(runs: list[Run], lang: str = "en") -> str:
    if not runs:
        raise ValueError("render needs at least one run")
    table = build_table(runs, lang)
    series = charts.series_for(runs)
    col_colors = [s.color for s in series]  # both walk runs, then each run's backends, in order
    figures = [{"id": f"chart-{key}", "json": charts.figure_json(fig)}
               for key, fig in charts.all_figures(series, lang).items()]
    many = len(runs) > 1
    downloads = []
    for data in runs:
        prefix = f"{run_id(data)}-" if many else ""
        for name, frame in (("requests", data.requests), ("samples", data.samples), ("events", data.events),
                            ("levels", metrics.level_stats(data))):
            downloads.append({"id": f"csv-{len(downloads)}", "file": f"{prefix}{name}.csv",
                              "rows": len(frame), "csv": _script_json(rows_csv(frame))})
    return _ENV.get_template("template.html").render(
        lang=lang, s={k: (v[1] if lang == "zh" else v[0]) for k, v in STRINGS.items()},
        table=table, col_colors=col_colors, side_names={k: v[lang] for k, v in SIDE_NAME.items()},
        runs=[_run_view(d, lang) for d in runs], figures=figures, downloads=downloads, plotly_js=_plotly_js(),
        compare=many,
    )


def write(runs: list[Run], out: Path, lang: str = "en") -> Path:
    html = render(runs, lang)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
