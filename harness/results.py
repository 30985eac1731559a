"""The run folder: row models, an append-as-it-happens writer, and `load_run` for the report."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict

Kind = Literal["paged", "ollama", "openai"]


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class GpuInfo(Row):
    index: int
    name: str
    memory_total_bytes: int | None = None
    driver: str | None = None


class HostInfo(Row):
    hostname: str
    os: str
    python: str
    cpu_model: str | None = None
    cpu_count: int | None = None
    ram_bytes: int | None = None
    gpus: list[GpuInfo] = []


class BackendRun(Row):
    name: str
    kind: Kind
    model: str
    side: str | None = None
    url: str | None = None
    launched: bool = False
    launch_command: str | None = None
    ready_s: float | None = None
    version: str | None = None
    status: Literal["pending", "running", "complete", "failed"] = "pending"
    error: str | None = None
    info: dict[str, Any] = {}


class LevelInfo(Row):
    label: str
    mode: Literal["closed", "open"]
    concurrency: int | None = None
    rate: float | None = None


class RunInfo(Row):
    run_id: str
    scenario_name: str
    scenario_path: str
    started_at: str
    finished_at: str | None = None
    status: Literal["running", "complete", "interrupted", "failed"] = "running"
    host: HostInfo
    pagebench_version: str
    event_loop: str | None = None
    backends: list[BackendRun] = []
    levels: list[LevelInfo] = []
    # How prompts were made: tagged per run, one per request, or shared on purpose (`sharing` says why).
    prompts: dict[str, Any] = {}
    # The rows' unix stamps are monotonic ones mapped once: unix = unix0 + (monotonic - monotonic0) (record.Clock).
    clock: dict[str, Any] = {}


class RequestRow(Row):
    backend: str
    level: str
    concurrency: int | None = None
    rate: float | None = None
    phase: Literal["warmup", "measure"]
    index: int
    user: int | None = None
    intended_send: float
    sent: float
    first_token: float | None = None
    finished: float
    ttft_s: float | None = None
    e2e_s: float
    itl_s: list[float] = []
    chunk_times: list[float] = []
    chunk_tokens: list[int] = []
    tpot_s: float | None = None
    decode_tps: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    template_tokens: int | None = None
    output_tokens: int | None = None
    requested_output_tokens: int
    finish_reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    server: dict[str, Any] = {}


class SampleRow(Row):
    t: float
    backend: str
    level: str | None = None
    rss_bytes: int | None = None
    gpu_mem_bytes: int | None = None
    gpu_device_used_bytes: int | None = None
    kv_blocks_used: float | None = None
    kv_blocks_total: float | None = None
    kv_usage: float | None = None
    kv_utilization: float | None = None
    running: float | None = None
    waiting: float | None = None
    ollama_size_vram: int | None = None
    ollama_size: int | None = None
    prefix_cache_hit_rate: float | None = None
    num_preemptions: float | None = None


class EventRow(Row):
    t: float
    backend: str | None = None
    level: str | None = None
    kind: str
    message: str


class RunWriter:
    """Appends each row as it happens and rewrites run.json atomically, so a crash loses nothing finished."""

    def __init__(self, run_dir: Path, info: RunInfo, scenario_bytes: bytes) -> None:
        self.dir = run_dir
        self.info = info
        (run_dir / "backends").mkdir(parents=True, exist_ok=True)
        (run_dir / "scenario.yaml").write_bytes(scenario_bytes)
        self._files = {n: open(run_dir / f"{n}.jsonl", "a", encoding="utf-8") for n in ("requests", "samples", "events")}
        self.write_info()

    def _append(self, name: str, row: dict[str, Any]) -> None:
        f = self._files[name]
        f.write(json.dumps(row, separators=(",", ":")) + "\n")
        f.flush()

    def request(self, row: dict[str, Any]) -> None:
        self._append("requests", row)

    def sample(self, row: dict[str, Any]) -> None:
        self._append("samples", row)

    def event(self, row: dict[str, Any]) -> None:
        self._append("events", row)

    def write_info(self) -> None:
        _atomic_json(self.dir / "run.json", self.info.model_dump(mode="json"))

    def write_summary(self, summary: list[dict[str, Any]]) -> None:
        _atomic_json(self.dir / "summary.json", summary)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads every complete row; a torn last line from a crash is skipped, not fatal."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


_REQUEST_COLUMNS = list(RequestRow.model_fields)
_SAMPLE_COLUMNS = list(SampleRow.model_fields)
_EVENT_COLUMNS = list(EventRow.model_fields)


@dataclass(slots=True)
class Run:
    path: Path
    run: dict[str, Any]
    summary: list[dict[str, Any]]
    requests: pd.DataFrame
    samples: pd.DataFrame
    events: pd.DataFrame
    scenario_text: str
    summary_recomputed: bool = False
    backend_logs: dict[str, Path] = field(default_factory=dict)


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df.columns:
            df[c] = None
    return df[columns + [c for c in df.columns if c not in columns]]


def _slo_of(scenario_text: str) -> dict[str, Any] | None:
    try:
        slo = yaml.safe_load(scenario_text).get("slo")
    except (yaml.YAMLError, AttributeError):
        return None
    return slo if isinstance(slo, dict) else None


def load_run(run_dir: str | Path) -> Run:
    """Everything in a run folder; the summary is recomputed from the rows if the run never wrote one."""
    from harness.metrics import summarize

    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no run.json)")
    run = json.loads(info_path.read_text(encoding="utf-8"))
    requests = read_jsonl(run_dir / "requests.jsonl")
    summary_path = run_dir / "summary.json"
    recomputed = not summary_path.exists()
    scenario_path = run_dir / "scenario.yaml"
    scenario_text = scenario_path.read_text(encoding="utf-8", errors="replace") if scenario_path.exists() else ""
    if recomputed:
        prompts = run.get("prompts")
        summary = summarize(requests, _slo_of(scenario_text), bool(prompts.get("sharing")) if prompts else None)
    else:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return Run(
        path=run_dir,
        run=run,
        summary=summary,
        requests=_frame(requests, _REQUEST_COLUMNS),
        samples=_frame(read_jsonl(run_dir / "samples.jsonl"), _SAMPLE_COLUMNS),
        events=_frame(read_jsonl(run_dir / "events.jsonl"), _EVENT_COLUMNS),
        scenario_text=scenario_text,
        summary_recomputed=recomputed,
        backend_logs={p.stem: p for p in sorted((run_dir / "backends").glob("*.log"))},
    )
