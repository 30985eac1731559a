"""The article's comparison table as data: one column per backend, measured value and claim per row."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.report import claims, metrics
from harness.report.data import Run, run_id, shown_backends
from harness.report.text import fmt_bytes, fmt_pct, fmt_rate, fmt_seconds, t

TIE = 0.02  # closer than this is a draw, not an advantage

GROUPS: list[tuple[str, list[str]]] = [
    ("g_advantage", ["advantage"]),
    ("g_memory", ["peak_memory", "memory_management", "kv_pool", "kv_utilization"]),
    ("g_speed", ["decode_speed", "aggregate", "ttft", "itl", "e2e", "errors", "prompt_cache"]),
    ("g_batching", ["scaling", "batching"]),
    ("g_hardware", ["hardware"]),
    ("g_deployment", ["deployment", "version", "model"]),
]


@dataclass(slots=True)
class Cell:
    text: str
    claim: str = ""
    value: float | None = None
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass(slots=True)
class Column:
    run_id: str
    backend: str
    kind: str
    side: str  # which side of the article this backend is compared with, "" if none
    low_level: str | None = None
    high_level: str | None = None
    mem_source: str = "none"
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(slots=True)
class Table:
    lang: str
    columns: list[Column]
    groups: list[tuple[str, list[tuple[str, str]]]]  # (group label, [(row id, row label)])
    headlines: list[str] = field(default_factory=list)

    def row(self, row_id: str) -> list[Cell]:
        return [c.cells[row_id] for c in self.columns]


def _pick(lv_stats: pd.DataFrame, order: list[str], highest: bool) -> pd.Series | None:
    if lv_stats.empty:
        return None
    closed = lv_stats[lv_stats["mode"] == "closed"]
    pool = closed if not closed.empty else lv_stats
    pool = pool.assign(_o=pool["level"].map(order.index)).sort_values("_o")
    return pool.iloc[-1 if highest else 0]


def _latency(r: pd.Series | None, name: str, lang: str) -> Cell:
    if r is None:
        return Cell(t("not_measured", lang))
    p50, p99 = r[f"{name}_p50"], r[f"{name}_p99"]
    if p50 is None or pd.isna(p50):
        return Cell(t("all_failed", lang, n=int(r["requests"])))
    text = f"p50 {fmt_seconds(p50)} · p99 {fmt_seconds(p99)}{t('at', lang, level=r['level'])}"
    return Cell(text, value=float(p50), values={"p50": float(p50), "p99": float(p99)})


def _memory_cells(mem: metrics.Memory, kind: str, info: dict[str, Any], lang: str) -> dict[str, Cell]:
    src = {"gpu": "mem_gpu", "gpu_device": "mem_gpu_device", "ollama_vram": "mem_ollama_vram", "ram": "mem_ram"}
    peak = (Cell(f"{fmt_bytes(mem.peak_bytes)} · {t(src[mem.source], lang)}", value=mem.peak_bytes)
            if mem.peak_bytes is not None else Cell(t("not_measured", lang)))
    parts: list[str] = []
    if kind == "paged" or "block_size" in info:
        if info.get("block_size") is not None:
            parts.append(t("block_size", lang, v=info["block_size"]))
        blocks = info.get("kv_blocks_total") or mem.kv_blocks_total
        if blocks:
            size = f" ({fmt_bytes(info['kv_cache_bytes'])})" if info.get("kv_cache_bytes") else ""
            parts.append(t("kv_blocks", lang, v=int(blocks)) + size)
    if kind == "ollama":
        parts += [f"{k} {fmt_bytes(info[k])}" for k in ("size_vram", "size") if info.get(k) is not None]
        parts += [f"{k} {info[k]}" for k in ("num_ctx", "processor") if info.get(k) is not None]
    pool = (Cell(t("kv_pool_cell", lang, v=fmt_pct(mem.kv_usage_peak)), value=mem.kv_usage_peak)
            if mem.kv_usage_peak is not None else Cell(t("not_reported", lang)))
    util = (Cell(t("kv_util_cell", lang, v=fmt_pct(mem.kv_utilization_at_peak)), value=mem.kv_utilization_at_peak)
            if mem.kv_utilization_at_peak is not None else Cell(t("not_reported", lang)))
    return {"peak_memory": peak, "memory_management": Cell(" · ".join(parts) or t("not_measured", lang)),
            "kv_pool": pool, "kv_utilization": util}


def _cache_cell(data: Run, name: str, lang: str) -> Cell:
    """Prompt tokens the server took from its cache, over all measured levels, and the levels that warn."""
    pcs = [(s.get("level"), s["prompt_cache"]) for s in data.summary or []
           if s.get("backend") == name and isinstance(s.get("prompt_cache"), dict)]
    pcs = [(lv, pc) for lv, pc in pcs if pc.get("requests_reporting")]
    if not pcs:
        return Cell(t("not_reported", lang))
    prompt = sum(pc.get("prompt_tokens") or 0 for _, pc in pcs)
    share = sum(pc.get("cached_tokens") or 0 for _, pc in pcs) / prompt if prompt else None
    with_template = [pc for _, pc in pcs if pc.get("beyond_template_share") is not None]
    if with_template:
        beyond = sum(pc["beyond_template_tokens"] for pc in with_template) / sum(pc["prompt_tokens"] for pc in with_template)
        text = t("cache_cell", lang, share=fmt_pct(share), beyond=fmt_pct(beyond))
    else:
        beyond = None
        text = t("cache_cell_no_template", lang, share=fmt_pct(share))
    warned = [str(lv) for lv, pc in pcs if pc.get("warning")]
    if warned:
        text += " · " + t("cache_warn_cell", lang, levels=", ".join(warned))
    sharing = (data.run.get("prompts") or {}).get("sharing")
    if sharing:
        text += " · " + t("cache_shared", lang, why=sharing)
    return Cell(text, value=share, values={"beyond_template": beyond, "warning": float(bool(warned))})


def _speed_cells(mine: pd.DataFrame, low: pd.Series | None, high: pd.Series | None, lang: str) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    if low is None:
        cells["decode_speed"], cells["aggregate"] = Cell(t("not_measured", lang)), Cell(t("not_measured", lang))
    else:
        d_low, d_high = low["decode_tps_p50"], high["decode_tps_p50"]
        text = f"{fmt_rate(d_low)} tok/s{t('at', lang, level=low['level'])}"
        if high["level"] != low["level"]:
            text += f" · {fmt_rate(d_high)}{t('at', lang, level=high['level'])}"
        cells["decode_speed"] = Cell(text, value=d_low, values={"lowest": d_low, "highest": d_high})
        cells["aggregate"] = Cell(f"{fmt_rate(high['output_tps'])} tok/s{t('at', lang, level=high['level'])}",
                                  value=high["output_tps"])
    for name in ("ttft", "itl", "e2e"):
        cells[name] = _latency(high, name, lang)
    n_req = int(mine["requests"].sum()) if not mine.empty else 0
    n_err = int(mine["errors"].sum()) if not mine.empty else 0
    cells["errors"] = Cell(t("errors_of", lang, e=n_err, n=n_req, p=fmt_pct(n_err / n_req if n_req else None)),
                           value=float(n_err), values={"requests": float(n_req)})
    return cells


def _batching_cells(low: pd.Series | None, high: pd.Series | None, mem: metrics.Memory, info: dict[str, Any],
                    lang: str) -> dict[str, Cell]:
    if low is None:
        return {"scaling": Cell(t("not_measured", lang)), "batching": Cell(t("not_measured", lang))}
    if high["level"] == low["level"]:
        scaling = Cell(t("one_level", lang))
    else:
        a, b = low["output_tps"], high["output_tps"]
        ratio = b / a if a else None
        scaling = Cell(t("scaling_cell", lang, x=fmt_rate(ratio), a=low["level"], b=high["level"],
                         ta=fmt_rate(a), tb=fmt_rate(b)), value=ratio)
    parts = [t("decoding_at_once", lang, n=int(high["max_decoding"]), level=high["level"])]
    if mem.running_peak is not None:
        parts.append(t("running_peak", lang, r=int(mem.running_peak), w=int(mem.waiting_peak or 0)))
    if info.get("num_parallel") is not None:
        parts.append(t("num_parallel", lang, v=info["num_parallel"]))
    return {"scaling": scaling, "batching": Cell(" · ".join(parts), value=float(high["max_decoding"]))}


def _deployment_cells(data: Run, backend: dict[str, Any], info: dict[str, Any], lang: str) -> dict[str, Cell]:
    ready = backend.get("ready_s")
    if ready is not None:
        deployment = Cell(t("ready_in", lang, v=fmt_seconds(ready)), value=float(ready))
    else:
        deployment = Cell(t("not_measured", lang) if backend.get("launched") else t("external", lang))
    model = [str(backend.get("model") or "?")] + [str(info[k]) for k in ("dtype", "quantization", "parameter_size")
                                                  if info.get(k)]
    if info.get("weights_bytes"):
        model.append(t("weights", lang, v=fmt_bytes(info["weights_bytes"])))
    return {"hardware": Cell(_hardware(data.run.get("host") or {}, info, lang)), "deployment": deployment,
            "version": Cell(str(backend.get("version") or "—")), "model": Cell(" · ".join(model))}


def _column(data: Run, backend: dict[str, Any], stats: pd.DataFrame, lang: str) -> Column:
    name, kind = backend["name"], backend.get("kind", "unknown")
    info = backend.get("info") or {}
    order = [lv.label for lv in metrics.levels(data)]
    mine = stats[stats["backend"] == name] if not stats.empty else stats
    low, high = _pick(mine, order, False), _pick(mine, order, True)
    mem = metrics.memory(data, name)
    cells = {"advantage": Cell("—"), **_memory_cells(mem, kind, info, lang), **_speed_cells(mine, low, high, lang),
             "prompt_cache": _cache_cell(data, name, lang),
             **_batching_cells(low, high, mem, info, lang), **_deployment_cells(data, backend, info, lang)}
    side = backend.get("side") or claims.ARTICLE_SIDE.get(kind, "")
    for row_id, cell in cells.items():
        cell.claim = claims.claim(row_id, side, lang)
    if side == "ollama" and cells["kv_utilization"].value is None:
        # "About 60%" answers allocated-slot utilization; a server that does not report it has nothing to set beside it.
        cells["kv_utilization"].claim = ""
    return Column(run_id(data), name, kind, side,
                  None if low is None else str(low["level"]), None if high is None else str(high["level"]),
                  mem.source, cells)


def _hardware(host: dict[str, Any], info: dict[str, Any], lang: str) -> str:
    gpus = host.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            names[g.get("name", "GPU")] = names.get(g.get("name", "GPU"), 0) + 1
        mem = fmt_bytes(gpus[0].get("memory_total_bytes"))
        text = ", ".join(f"{n}× {name}" for name, n in names.items()) + f" ({mem}), driver {gpus[0].get('driver', '?')}"
    else:
        text = t("no_gpu", lang)
    cpu = host.get("cpu_model") or "CPU"
    text += f" · {cpu}, {t('cores', lang, n=host.get('cpu_count', '?'))}, RAM {fmt_bytes(host.get('ram_bytes'))}"
    if info.get("processor"):
        text += f" · Ollama: {info['processor']}"
    return text


def _advantages(columns: list[Column], lang: str) -> None:
    """Name what each backend wins, comparing only columns measured at the same level."""
    def common(attr: str) -> str | None:
        labels = [getattr(c, attr) for c in columns if getattr(c, attr)]
        return max(sorted(set(labels)), key=labels.count) if labels else None

    low, high, src = common("low_level"), common("high_level"), common("mem_source")
    wanted = {"low_level": low, "high_level": high, "mem_source": src}

    def winner(row: str, key: str | None, best: Any, level_attr: str | None) -> Column | None:
        pool = [c for c in columns if level_attr is None or getattr(c, level_attr) == wanted[level_attr]]
        vals = [(c, c.cells[row].values.get(key) if key else c.cells[row].value) for c in pool]
        vals = sorted(((c, v) for c, v in vals if v is not None and not pd.isna(v)), key=lambda cv: cv[1],
                      reverse=best is max)
        if len(vals) < 2 or abs(vals[0][1] - vals[1][1]) <= TIE * max(abs(vals[0][1]), abs(vals[1][1])):
            return None
        return vals[0][0]

    wins: dict[int, list[str]] = {id(c): [] for c in columns}
    for label, row, key, best, level_attr in (
        (t("win_memory", lang), "peak_memory", None, min, "mem_source"),
        (t("win_single", lang), "decode_speed", "lowest", max, "low_level"),
        (t("win_aggregate", lang, level=high), "aggregate", None, max, "high_level"),
        (t("win_ttft", lang, level=high), "ttft", "p99", min, "high_level"),
        (t("win_ready", lang), "deployment", None, min, None),
    ):
        col = winner(row, key, best, level_attr)
        if col is not None:
            wins[id(col)].append(label)
    for c in columns:
        c.cells["advantage"].text = t("list_sep", lang).join(wins[id(c)]) or "—"
        c.cells["advantage"].value = float(len(wins[id(c)]))


def _ratio(a: float | None, b: float | None) -> float | None:
    ok = a is not None and b is not None and not pd.isna(a) and not pd.isna(b) and b > 0
    return a / b if ok else None


def headlines(columns: list[Column], lang: str) -> list[str]:
    """Each FP16 backend against each 4-bit one among one run's columns (one host), in sentences: aggregate
    throughput at their highest common level, and one stream's decode speed at their lowest."""
    out: list[str] = []
    pairs = [(a, b) for a in columns if a.side == "vllm" for b in columns if b.side == "ollama"]
    for a, b in pairs:
        if a.high_level and a.high_level == b.high_level:
            ta, tb = a.cells["aggregate"].value, b.cells["aggregate"].value
            if (x := _ratio(ta, tb)) is not None:
                out.append(t("hl_aggregate", lang, level=a.high_level, a=a.backend, b=b.backend, ta=fmt_rate(ta),
                             tb=fmt_rate(tb), x=f"{x:.1f}"))
    for a, b in pairs:
        if a.low_level and a.low_level == b.low_level:
            ta, tb = a.cells["decode_speed"].values.get("lowest"), b.cells["decode_speed"].values.get("lowest")
            if (x := _ratio(tb, ta)) is None:
                continue
            key, x = ("hl_single_4bit", x) if x >= 1 else ("hl_single_fp16", 1 / x)
            out.append(t(key, lang, level=a.low_level, a=a.backend, b=b.backend, ta=fmt_rate(ta), tb=fmt_rate(tb),
                         x=f"{x:.2f}"))
    return out


def build_table(runs: list[Run], lang: str = "en") -> Table:
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    columns: list[Column] = []
    heads: list[str] = []
    for data in runs:
        stats = metrics.level_stats(data)
        mine = [_column(data, backend, stats, lang) for backend in shown_backends(data, len(runs) > 1)]
        prefix = f"{run_id(data)}: " if len(runs) > 1 else ""
        heads += [prefix + h for h in headlines(mine, lang)]
        columns += mine
    _advantages(columns, lang)
    groups = [(t(g, lang), [(r, t(r, lang)) for r in rows]) for g, rows in GROUPS]
    return Table(lang, columns, groups, heads)
