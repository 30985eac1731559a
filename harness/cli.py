"""`bench`: run a scenario against every backend it names, check scenario files, rebuild reports."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness.config import ScenarioError, load_scenario, preflight

app = typer.Typer(
    help="pagebench: measure LLM servers (our paged engine, Ollama, any OpenAI-compatible server) with one workload.\n\n"
         "Start with `bench validate scenarios/smoke.yaml`, then `bench run scenarios/smoke.yaml`; "
         "results go to reports/<run-id>/ (rows as JSONL, summary.json, report.html).",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
# Piped output (CI logs, tee) gets a wide table instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)

ScenarioArg = Annotated[Path, typer.Argument(help="scenario YAML file, e.g. scenarios/smoke.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="override a field: --set backends.0.url=http://127.0.0.1:8000 or --set load.concurrency=[1,4] "
                  "(backends can be named: backends.engine.url=...)")]


def _load(path: Path, overrides: list[str] | None):
    try:
        return load_scenario(path, overrides)
    except ScenarioError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    strict: Annotated[bool, typer.Option(help="also fail when a launch command, model path or prompt file is missing here")] = False,
) -> None:
    """Check a scenario file: every field, its type and range; say which file, field and why when something is wrong."""
    loaded = _load(scenario, set_)
    sc = loaded.scenario
    problems = preflight(loaded)
    for p in problems:
        err.print(f"[yellow]{'error' if strict else 'warning'}:[/] {escape(f'{scenario}: {p}')}", highlight=False)
    if problems and strict:
        raise typer.Exit(1)
    levels = ", ".join(label for label, _, _ in sc.levels())
    console.print(f"[green]ok[/] {scenario}: {sc.name}: {len(sc.backends)} backend(s) "
                  f"({', '.join(f'{b.name}={b.kind}' for b in sc.backends)}); levels {levels}", highlight=False)


def _type_name(a: object) -> str:
    origin, args = typing.get_origin(a), typing.get_args(a)
    if origin is typing.Literal:
        return " | ".join(map(str, args))
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(x) for x in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return "null" if a is type(None) else getattr(a, "__name__", str(a))


@app.command()
def schema() -> None:
    """List every scenario field with its type, default and meaning."""
    from pydantic import BaseModel

    from harness.scenario import Dist, Load, OllamaBackend, OpenAIBackend, PagedBackend, Scenario, SharedPrefix, Slo, Workload

    sections = [("top level", Scenario), ("backends[] with kind: paged", PagedBackend), ("backends[] with kind: openai", OpenAIBackend),
                ("backends[] with kind: ollama", OllamaBackend), ("workload", Workload), ("workload.input_tokens / output_tokens", Dist),
                ("workload.shared_prefix", SharedPrefix), ("load", Load), ("slo", Slo)]
    for title, model in sections:
        console.print(f"[bold]{title}[/]")
        for name, f in model.model_fields.items():
            value = None if f.is_required() else f.get_default(call_default_factory=True)
            default = "required" if f.is_required() else "see its section" if isinstance(value, BaseModel) else f"default {value!r}"
            console.print(f"  {name}: {_type_name(f.annotation)} ({default}){' - ' + f.description if f.description else ''}",
                          highlight=False, markup=False)
    console.print("Strings may use ${VAR} or ${VAR:-default}; `bench run --set a.b=value` overrides any field.")


@app.command()
def run(
    scenario: ScenarioArg,
    out: Annotated[Path, typer.Option(help="folder that receives the run folder <UTC time>-<scenario name>/")] = Path("reports"),
    only: Annotated[Optional[list[str]], typer.Option(help="run only this backend (repeat for several)")] = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check everything and print the plan and a sample request; send nothing")] = False,
    report: Annotated[bool, typer.Option(help="write report.html when the run ends")] = True,
) -> None:
    """Run SCENARIO: start or reach each backend in turn, warm it, send the identical workload at every load level,
    and record every request, memory sample and event in reports/<run-id>/ as they happen.

    Exit code: 0 all good; 1 a backend failed or requests failed (reason on the last line); 2 bad scenario; 130 interrupted.
    """
    from harness.runner import PreflightError, Runner, run_async
    from harness.workload import WorkloadError

    loaded = _load(scenario, set_)
    runner = Runner(loaded, out, only)
    try:
        runner.prepare()
    except (PreflightError, WorkloadError, FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    if dry_run:
        _print_plan(runner)
        return
    from harness.ui import RichReporter, summary_table

    with RichReporter(console) as ui:
        runner.ui = ui
        outcome = run_async(_main(runner))
    console.line()
    if not _print_comparison(outcome.run_dir):
        console.print(summary_table(outcome.summary, f"{loaded.scenario.name}: {outcome.info.status}"))
    if report:
        _build_report(outcome.run_dir)
    console.print(f"run folder: {outcome.run_dir}")
    if outcome.interrupted:
        err.print("bench: interrupted; finished requests are in the run folder")
        raise typer.Exit(130)
    if outcome.failures:
        err.print(f"bench: {'; '.join(outcome.failures)}", highlight=False, markup=False)
        raise typer.Exit(1)


async def _main(runner):
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await runner.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _print_plan(runner) -> None:
    from harness.backends import make_backend
    from harness.workload import describe

    sc = runner.sc
    console.print(f"{sc.name}: {sc.description}".rstrip(": "), highlight=False, markup=False)
    chosen = [b for b in sc.backends if not runner.only or b.name in runner.only]
    for b in chosen:
        where = f"launch `{b.launch if isinstance(b.launch, str) else ' '.join(b.launch)}`" if b.launch else f"url {b.url}"
        console.print(f"  backend {b.name} ({b.kind}, model {b.model}): {where}", highlight=False, markup=False)
    for p in runner.plans:
        stop = " and ".join(x for x in (f"{p.requests} requests" if p.requests else "", f"{p.duration_s:g}s" if p.duration_s else "") if x)
        console.print(f"  level {p.label}: {p.warmup} warm-up + {stop}", highlight=False, markup=False)
    console.print(f"  workload: {json.dumps(describe(runner.items))}", highlight=False, markup=False)
    first = runner.items[0]
    for b in chosen[:3]:
        backend = make_backend(b, b.url or "http://127.0.0.1:1", sc.workload)
        body = backend.body(first)
        body = json.loads(json.dumps(body, default=str))
        for key in ("messages", "prompt"):
            if key in body:
                body[key] = (json.dumps(body[key])[:160] + "...") if len(json.dumps(body[key])) > 160 else body[key]
        console.print(f"  first request to {b.name}: {json.dumps(body)}", highlight=False, markup=False)
    console.print("dry run: nothing was sent")


def _print_comparison(run_dir: Path, lang: str = "en") -> bool:
    """The report's comparison table and per-level table, in the terminal too."""
    try:
        from harness.report import print_summary

        print_summary(run_dir, lang=lang, console=console)
        return True
    except Exception as e:  # the rows are on disk; a table bug must not hide them
        err.print(f"[yellow]no comparison table:[/] {escape(f'{type(e).__name__}: {e}')}")
        return False


LangOpt = Annotated[str, typer.Option("--lang", help="en, or zh for the article's language (Chinese)")]


def _check_lang(lang: str) -> None:
    if lang not in ("en", "zh"):
        err.print(f"[red]error:[/] --lang must be en or zh, got {escape(lang)!r}")
        raise typer.Exit(2)


def _build_report(run_dir: Path, lang: str = "en") -> Path | None:
    try:
        from harness.report import build_report
    except ImportError as e:
        err.print(f"[yellow]no report:[/] {escape(f'the report module is not available ({e}); the rows are in {run_dir}')}")
        return None
    try:
        path = build_report(run_dir, lang=lang)
    except Exception as e:  # the measurements are already on disk; a report bug must not hide them
        err.print(f"[yellow]report failed:[/] {escape(f'{type(e).__name__}: {e}; rebuild with `bench report {run_dir}`')}")
        return None
    console.print(f"report: {path}")
    return path


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. reports/20250101-120000-smoke")],
           lang: LangOpt = "en") -> None:
    """Rebuild RUN_DIR/report.html (report.zh.html with --lang zh) from the rows stored in the run folder."""
    _check_lang(lang)
    if not (run_dir / "run.json").exists():
        err.print(f"[red]error:[/] {run_dir} is not a run folder (no run.json)")
        raise typer.Exit(2)
    _print_comparison(run_dir, lang)
    if _build_report(run_dir, lang) is None:
        raise typer.Exit(1)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run folders")],
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("reports/compare.html"),
    lang: LangOpt = "en",
) -> None:
    """Put several runs side by side (different GPUs, versions or settings) in one HTML page."""
    _check_lang(lang)
    missing = [str(d) for d in run_dirs if not (d / "run.json").exists()]
    if missing:
        err.print(f"[red]error:[/] not run folders (no run.json): {', '.join(missing)}")
        raise typer.Exit(2)
    try:
        from harness.report import build_compare
    except ImportError as e:
        err.print(f"[red]error:[/] {escape(f'the report module is not available ({e})')}")
        raise typer.Exit(1) from None
    console.print(f"comparison: {build_compare(run_dirs, out, lang=lang)}")


if __name__ == "__main__":
    app()
