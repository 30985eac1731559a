"""The report reads a run folder only through harness.results.load_run; these helpers name what it needs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.results import RunInfo, Run, load_run

__all__ = ["Run", "load", "backends", "shown_backends", "run_id"]


def load(run_dir: Path | str) -> Run:
    """load_run, with run.json checked against the contract and its optional fields filled in."""
    run = load_run(run_dir)
    try:
        run.run = RunInfo.model_validate(run.run).model_dump(mode="json")
    except ValidationError as exc:
        raise ValueError(f"{Path(run_dir) / 'run.json'} does not follow the run-folder contract:\n{exc}") from exc
    return run


def run_id(run: Run) -> str:
    return str(run.run.get("run_id") or run.path.name)


def backends(run: Run) -> list[dict[str, Any]]:
    """Backends from run.json, plus any that only appear in the rows (a run.json written before they started)."""
    listed = list(run.run.get("backends") or [])
    names = {b["name"] for b in listed}
    extra = [n for n in run.requests["backend"].dropna().unique() if n not in names]
    return listed + [{"name": str(n), "kind": "unknown", "info": {}} for n in extra]


def shown_backends(run: Run, comparing: bool) -> list[dict[str, Any]]:
    """A run's report shows every backend, one that never answered as "not measured"; a comparison of several runs
    leaves out those that failed before their first request, whose columns would only repeat that (each run's
    environment section still lists them with their error)."""
    if not comparing:
        return backends(run)
    rows = set(run.requests["backend"].dropna().unique())
    return [b for b in backends(run) if b["name"] in rows or b.get("status") != "failed"]
