"""The terminal: live progress while a run goes, and the summary table at the end."""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.loadgen import LevelPlan
from harness.metrics import summarize_level
from harness.runner import Reporter


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def summary_table(summary: list[dict[str, Any]], title: str = "Summary") -> Table:
    t = Table(title=title, header_style="bold", show_lines=False)
    for col in ("backend", "level", "requests", "errors", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
                "ITL p50 ms", "ITL p99 ms", "E2E p50 s", "E2E p99 s", "decode tok/s p50"):
        t.add_column(col, justify="left" if col in ("backend", "level") else "right")
    for s in summary:
        err = str(s["errors"])
        t.add_row(s["backend"], s["level"], str(s["requests"]), f"[red]{err}[/]" if s["errors"] else err,
                  _num(s["output_throughput"]), _ms(s["ttft_s"]["p50"]), _ms(s["ttft_s"]["p99"]),
                  _ms(s["itl_s"]["p50"]), _ms(s["itl_s"]["p99"]), _num(s["e2e_s"]["p50"], "{:.2f}"),
                  _num(s["e2e_s"]["p99"], "{:.2f}"), _num(s["decode_tps"]["p50"]))
    return t


class RichReporter(Reporter):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
        # No refresh thread: it would take the GIL from the load generator at random moments. The display is
        # redrawn from the event loop at most once a second, from the latest 256 requests only.
        self.live = Live(Group(self.progress), console=console, auto_refresh=False, transient=False)
        self.task = None
        self.rows: deque[dict[str, Any]] = deque(maxlen=256)
        self.last = 0.0
        self.pull_task = None

    def __enter__(self) -> RichReporter:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def event(self, row: dict[str, Any]) -> None:
        kind = row["kind"]
        who = f"[bold]{row['backend']}[/] " if row.get("backend") else ""
        if kind == "error":
            self.console.print(f"{who}[red]failed:[/] {escape(row['message'])}")
        elif kind in ("launch", "ready", "stop", "interrupted"):
            self.console.print(f"{who}{kind}: {escape(row['message'])}")
        self.live.refresh()

    def level_start(self, backend: str, plan: LevelPlan) -> None:
        self.rows.clear()
        self.task = self.progress.add_task(f"{backend} {plan.label}", total=plan.total, stats="")
        self.live.refresh()

    def request_done(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.task is None:
            return
        self.progress.advance(self.task)
        now = time.monotonic()
        if now - self.last > 1.0:
            self.last = now
            self._stats()
            self.live.refresh()

    def _stats(self) -> None:
        s = summarize_level(list(self.rows))
        stats = (f"err {s['errors']}  out {_num(s['output_throughput'])} tok/s  TTFT p50 {_ms(s['ttft_s']['p50'])} ms  "
                 f"ITL p50 {_ms(s['itl_s']['p50'])} ms") if s["requests"] else "warming up"
        self.progress.update(self.task, stats=stats)

    def level_end(self, backend: str, plan: LevelPlan) -> None:
        if self.task is not None:
            self._stats()
            self.progress.stop_task(self.task)
            self.live.refresh()
        self.task = None

    def pull_progress(self, backend: str, status: str, completed: int | None, total: int | None) -> None:
        if self.pull_task is None:
            self.pull_task = self.progress.add_task(f"{backend} pull", total=total, stats="")
        self.progress.update(self.pull_task, total=total, completed=completed or 0, stats=status)
        self.live.refresh()
