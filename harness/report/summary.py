"""The comparison table in the terminal, the same rows as the HTML page."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from harness.report import data, metrics
from harness.report.data import run_id
from harness.report.table import build_table
from harness.report.text import fmt_pct, fmt_rate, t


def cache_warning_text(r: pd.Series, lang: str) -> str:
    return t("cache_warning", lang, backend=r["backend"], level=r["level"], beyond=fmt_pct(r["cached_beyond_template_share"]),
             share=fmt_pct(r["cached_share"]))


def _ms(p50: float | None, p99: float | None) -> str:
    return "/".join("—" if v is None or v != v else f"{v * 1000:.0f}" if v >= 0.01 else f"{v * 1000:.1f}"
                    for v in (p50, p99))


def print_summary(run_dir: Path, lang: str = "en", console: Console | None = None, claims: bool = True) -> None:
    console = console or Console()
    run = data.load(Path(run_dir))
    table = build_table([run], lang)
    out = RichTable(title=f"{run_id(run)} ({run.run.get('status', '?')})",
                    show_lines=False, expand=False)
    out.add_column("", style="bold", max_width=26)
    for col in table.columns:
        out.add_column(f"{col.backend}\n[dim]{col.kind}[/dim]", overflow="fold")
    for group, rows in table.groups:
        out.add_section()
        out.add_row(f"[cyan]{group}[/cyan]", *[""] * len(table.columns))
        for row_id, label in rows:
            cells = table.row(row_id)
            out.add_row(label, *[c.text + (f"\n[dim]article: {c.claim}[/dim]" if claims and c.claim else "")
                                 for c in cells])
    console.print(out)
    stats = metrics.level_stats(run)
    if stats.empty:
        console.print("[yellow]no measured requests yet[/yellow]")
        return
    levels = RichTable(title="per level", show_lines=False)
    for name in ("backend", "level", "req", "err", "out tok/s", "decode p50 tok/s", "TTFT ms p50/p99",
                 "ITL ms p50/p99", "E2E ms p50/p99", "cached prompt", "beyond template"):
        levels.add_column(name, justify="left" if name in ("backend", "level") else "right", overflow="fold")
    for _, r in stats.iterrows():
        levels.add_row(r["backend"], r["level"], str(r["requests"]), str(r["errors"]), fmt_rate(r["output_tps"]),
                       fmt_rate(r["decode_tps_p50"]), _ms(r["ttft_p50"], r["ttft_p99"]), _ms(r["itl_p50"], r["itl_p99"]),
                       _ms(r["e2e_p50"], r["e2e_p99"]), fmt_pct(r["cached_share"]),
                       ("[bold red]" + fmt_pct(r["cached_beyond_template_share"]) + " ⚠[/bold red]") if r["cache_warning"]
                       else fmt_pct(r["cached_beyond_template_share"]))
    console.print(levels)
    for r in metrics.cache_warnings(stats):
        console.print(f"[bold white on red] {escape(cache_warning_text(r, lang))} [/bold white on red]")
