"""The report of a run: a self-contained HTML page and a terminal summary, both read from the run folder."""
from __future__ import annotations

from pathlib import Path

from harness.report import data, html
from harness.report.summary import print_summary
from harness.report.table import build_table

__all__ = ["build_report", "build_compare", "build_table", "print_summary"]


def build_report(run_dir: Path, lang: str = "en") -> Path:
    """Write run_dir/report.html (report.zh.html in Chinese) from the stored rows; partial runs too."""
    run_dir = Path(run_dir)
    name = "report.html" if lang == "en" else f"report.{lang}.html"
    return html.write([data.load(run_dir)], run_dir / name, lang)


def build_compare(run_dirs: list[Path], out: Path, lang: str = "en") -> Path:
    """Write one page putting several runs side by side (other GPUs, versions or settings)."""
    if not run_dirs:
        raise ValueError("build_compare needs at least one run folder")
    return html.write([data.load(Path(d)) for d in run_dirs], Path(out), lang)
