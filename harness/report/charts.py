"""Plotly figures of a run; each backend keeps one colour in every figure."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.report import metrics
from harness.report.data import Run, run_id, shown_backends
from harness.report.text import t

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
CDF_POINTS = 400


@dataclass(slots=True)
class Series:
    label: str
    data: Run
    backend: str
    color: str

    @property
    def requests(self) -> pd.DataFrame:
        return self.data.requests[self.data.requests["backend"] == self.backend]

    @property
    def t0(self) -> float:
        sent = self.requests["sent"].dropna()
        return float(sent.min()) if not sent.empty else 0.0


def series_for(runs: list[Run]) -> list[Series]:
    many = len(runs) > 1
    out: list[Series] = []
    for data in runs:
        rid = run_id(data)
        for b in shown_backends(data, many):
            label = f"{b['name']} · {rid}" if many else b["name"]
            out.append(Series(label, data, b["name"], PALETTE[len(out) % len(PALETTE)]))
    return out


def _layout(fig: go.Figure, title: str, height: int = 380, top: int = 80) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "y": 1.0, "yanchor": "top", "yref": "container", "pad": {"t": 12}},
                      template="plotly_white", height=height, margin={"l": 64, "r": 20, "t": top, "b": 50},
                      font={"family": "system-ui, sans-serif", "size": 13},
                      legend={"orientation": "h", "y": 1.0, "yanchor": "top", "yref": "container", "x": 0.99,
                              "xanchor": "right", "bgcolor": "rgba(255,255,255,0.8)"})
    return fig


def _level_order(series: list[Series]) -> list[str]:
    seen: dict[str, tuple] = {}
    for s in series:
        for lv in metrics.levels(s.data):
            seen.setdefault(lv.label, (lv.mode != "closed", lv.load or 0.0))
    return sorted(seen, key=seen.get)


def _cdf(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.sort(np.asarray(values, dtype=float))
    if arr.size > CDF_POINTS:
        probs = np.linspace(0, 1, CDF_POINTS)
        return np.quantile(arr, probs), probs
    return np.concatenate([arr[:1], arr]), np.arange(0, arr.size + 1) / arr.size


def cdf(series: list[Series], metric: str, lang: str) -> go.Figure:
    """One trace per backend and level; a menu picks the level, the highest load first."""
    fig = go.Figure()
    order = _level_order(series)
    owners: list[str] = []
    for lv in order:
        for s in series:
            ok = metrics.succeeded(metrics.measured(s.requests))
            ok = ok[ok["level"] == lv]
            col = {"ttft": "ttft_s", "e2e": "e2e_s", "itl": "itl_s"}[metric]
            vals = ([x for lst in ok[col].dropna() for x in lst] if metric == "itl"
                    else [float(v) for v in ok[col].dropna()])
            if not vals:
                continue
            x, y = _cdf(vals)
            fig.add_trace(go.Scatter(x=x * 1000, y=y, mode="lines", name=s.label, legendgroup=s.label,
                                     line={"color": s.color, "width": 2.5, "shape": "hv"},
                                     hovertemplate=f"{s.label} {lv}<br>%{{x:.1f}} ms<br>%{{y:.0%}}<extra></extra>"))
            owners.append(lv)
    shown = next((lv for lv in reversed(order) if lv in owners), None)
    for trace, lv in zip(fig.data, owners):
        trace.visible = lv == shown
    title = t(f"cdf_{metric}", lang)
    if len(set(owners)) > 1:
        buttons = [{"label": lv, "method": "update",
                    "args": [{"visible": [o == lv for o in owners]}, {"title.text": f"{title} — {lv}"}]}
                   for lv in order if lv in owners]
        fig.update_layout(updatemenus=[{"buttons": buttons, "active": [b["label"] for b in buttons].index(shown),
                                        "x": 0.99, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
                                        "showactive": True}])
    _layout(fig, f"{title} — {shown}" if shown else title)
    fig.update_xaxes(title="ms", type="log")
    fig.update_yaxes(title=t("fraction_gaps" if metric == "itl" else "fraction", lang), range=[0, 1.02])
    return fig


def vs_load(series: list[Series], lang: str) -> go.Figure:
    order = _level_order(series)
    panels = [("output_tps", t("tok_s", lang), 1), ("ttft_p99", "TTFT p99 (ms)", 1000),
              ("itl_p99", "ITL p99 (ms)", 1000), ("e2e_p99", "E2E p99 (ms)", 1000)]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.07)
    stats = {id(d): metrics.level_stats(d) for d in {id(s.data): s.data for s in series}.values()}
    for s in series:
        st = stats[id(s.data)]
        st = st[st["backend"] == s.backend].set_index("level").reindex([lv for lv in order if lv in set(st["level"])])
        for i, (col, _, scale) in enumerate(panels, 1):
            y = [None if v is None or pd.isna(v) else float(v) * scale for v in st[col]]
            fig.add_trace(go.Scatter(x=list(st.index), y=y, mode="lines+markers", name=s.label, legendgroup=s.label,
                                     showlegend=i == 1, line={"color": s.color, "width": 2.5}, marker={"size": 8}),
                          row=1, col=i)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title=t("level", lang))
    return _layout(fig, t("vs_load", lang), 380, top=95)


def _bins(times: np.ndarray, weights: np.ndarray, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per second in bins sized so a short run still shows a shape and a long one stays light."""
    width = min((w for w in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0) if end / w <= 120), default=60.0)
    edges = np.arange(0.0, max(end, width) + width, width)
    counts, _ = np.histogram(times, bins=edges, weights=weights)
    return edges[:-1] + width / 2, counts / width


def over_time(series: list[Series], lang: str) -> go.Figure:
    has_kv = any(pd.to_numeric(s.data.samples.loc[s.data.samples["backend"] == s.backend, "kv_usage"],
                               errors="coerce").notna().any() for s in series)
    rows = 3 if has_kv else 2
    mems = {s.label: metrics.memory(s.data, s.backend) for s in series}
    peak = max((m.peak_bytes for m in mems.values() if m.peak_bytes is not None), default=0.0)
    unit, scale = ("GiB", 2**30) if peak >= 2**30 else ("MiB", 2**20)
    sources = sorted({m.source for m in mems.values() if m.source != "none"})
    what = ", ".join(t(f"mem_{src}", lang) for src in sources)
    titles = [t("tok_s", lang), t("memory_unit", lang, unit=unit, what=what)] + ([t("kv_use", lang)] if has_kv else [])
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles)
    for s in series:
        reqs, t0 = s.requests, s.t0
        times = np.asarray([x for lst in reqs["chunk_times"].dropna() for x in lst], dtype=float) - t0
        toks = np.asarray([x for lst in reqs["chunk_tokens"].dropna() for x in lst], dtype=float)
        end = float(reqs["finished"].max() - t0) if not reqs.empty else 1.0
        if times.size == toks.size and times.size:
            x, y = _bins(times, toks, end)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=s.label, legendgroup=s.label,
                                     line={"color": s.color, "width": 2, "shape": "hvh"}), row=1, col=1)
        smp = s.data.samples[s.data.samples["backend"] == s.backend].sort_values("t")
        src = mems[s.label].source
        col = {"gpu": "gpu_mem_bytes", "gpu_device": "gpu_device_used_bytes", "ollama_vram": "ollama_size_vram",
               "ram": "rss_bytes"}.get(src)
        if col and not smp.empty:
            fig.add_trace(go.Scatter(x=smp["t"] - t0, y=pd.to_numeric(smp[col], errors="coerce") / scale,
                                     mode="lines", name=s.label, legendgroup=s.label, showlegend=False,
                                     line={"color": s.color, "width": 2}), row=2, col=1)
        if has_kv and pd.to_numeric(smp.get("kv_usage"), errors="coerce").notna().any():
            fig.add_trace(go.Scatter(x=smp["t"] - t0, y=pd.to_numeric(smp["kv_usage"], errors="coerce") * 100,
                                     mode="lines", name=s.label, legendgroup=s.label, showlegend=False,
                                     line={"color": s.color, "width": 2}), row=3, col=1)
    fig.update_xaxes(title=t("seconds_since", lang), row=rows, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    if has_kv:
        fig.update_yaxes(ticksuffix="%", range=[0, 100], row=3, col=1)
    return _layout(fig, t("over_time", lang), 250 * rows + 60, top=95)


def lengths(series: list[Series], lang: str) -> go.Figure:
    fig = go.Figure()
    per = {s.label: metrics.succeeded(metrics.measured(s.requests))["output_tokens"].dropna().astype(float)
           for s in series}
    every = np.concatenate([v.to_numpy() for v in per.values()]) if per else np.array([])
    lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    edges = np.arange(np.floor(lo), np.ceil(hi) + 2)
    for s in series:
        counts, _ = np.histogram(per[s.label], bins=edges)
        fig.add_trace(go.Bar(x=edges[:-1], y=counts, name=s.label, legendgroup=s.label, marker={"color": s.color},
                             opacity=0.85))
    requested = pd.concat([s.requests["requested_output_tokens"] for s in series]).dropna().unique()
    if len(requested) == 1:
        fig.add_vline(x=float(requested[0]), line_dash="dot", line_color="#555",
                      annotation_text=f"requested {int(requested[0])}")
    fig.update_layout(barmode="group", bargap=0.15)
    fig.update_xaxes(title=t("output_tokens", lang))
    fig.update_yaxes(title=t("requests", lang))
    return _layout(fig, t("lengths", lang))


def errors_over_time(series: list[Series], lang: str) -> go.Figure:
    fig = go.Figure()
    for s in series:
        reqs = s.requests.sort_values("finished")
        end = float(reqs["finished"].max() - s.t0) if not reqs.empty else 1.0
        bad = reqs[reqs["error"].notna()]
        x = [0.0] + list(bad["finished"] - s.t0) + [end]
        y = [0] + list(range(1, len(bad) + 1)) + [len(bad)]
        text = [""] + [f"{lv}: {e}" for lv, e in zip(bad["level"], bad["error"])] + [""]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=s.label, legendgroup=s.label, text=text,
                                 line={"color": s.color, "width": 2.5, "shape": "hv"}, marker={"size": 7},
                                 hovertemplate="%{x:.1f} s: %{y}<br>%{text}<extra></extra>"))
    fig.update_xaxes(title=t("seconds_since", lang))
    fig.update_yaxes(title=t("errors_cum", lang), rangemode="tozero")
    return _layout(fig, t("errors_time", lang), 340)


def all_figures(series: list[Series], lang: str) -> dict[str, go.Figure]:
    return {
        "ttft": cdf(series, "ttft", lang), "itl": cdf(series, "itl", lang), "e2e": cdf(series, "e2e", lang),
        "load": vs_load(series, lang), "time": over_time(series, lang), "lengths": lengths(series, lang),
        "errors": errors_over_time(series, lang),
    }


def figure_json(fig: go.Figure) -> str:
    # inside an inline <script> "</" could close it; JSON reads the escaped form back as "</"
    return fig.to_json().replace("</", "<\\/")
