"""A whole run: every selected backend in turn, every load level, everything written as it happens."""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from harness import __version__
from harness.backends import BackendError, make_backend
from harness.config import LoadedScenario, preflight
from harness.hostinfo import host_info
from harness.launch import Launched, start, wait_ready
from harness.loadgen import LevelPlan, LevelRun, plans
from harness.metrics import summarize
from harness.record import Clock, RequestRecord
from harness.results import BackendRun, LevelInfo, RunInfo, RunWriter
from harness.sampler import Sampler
from harness.scenario import BackendBase
from harness.workload import Prompts, WorkItem, build_workload


class PreflightError(Exception):
    pass


class Reporter:
    """Callbacks for a live display; the default shows nothing."""

    def event(self, row: dict[str, Any]) -> None: ...
    def level_start(self, backend: str, plan: LevelPlan) -> None: ...
    def request_done(self, row: dict[str, Any]) -> None: ...
    def level_end(self, backend: str, plan: LevelPlan) -> None: ...
    def pull_progress(self, backend: str, status: str, completed: int | None, total: int | None) -> None: ...


@dataclass(slots=True)
class Outcome:
    run_dir: Path
    info: RunInfo
    summary: list[dict[str, Any]]
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)


def run_async(coro: Any) -> Any:
    """uvloop where installed: it cuts the generator's cost per token by about a fifth (BENCHMARKS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Runner:
    def __init__(self, loaded: LoadedScenario, out_dir: Path, only: list[str] | None = None,
                 reporter: Reporter | None = None) -> None:
        self.loaded = loaded
        self.sc = loaded.scenario
        self.out_dir = Path(out_dir)
        self.only = only
        self.ui = reporter or Reporter()
        self.clock = Clock()
        self.rows: list[dict[str, Any]] = []
        self.items: Prompts | list[WorkItem] = []
        self.plans = plans(self.sc)

    def prepare(self) -> None:
        problems = preflight(self.loaded, self.only)
        if problems:
            raise PreflightError("\n".join([f"{self.loaded.path}: cannot start:", *[f"  {p}" for p in problems]]))
        # A fresh nonce per run tags every prompt, so a server that stayed up since an earlier run finds none of them cached.
        self.items = build_workload(self.sc, self.loaded.base_dir, nonce=secrets.token_hex(6))

    def _open_run(self) -> RunWriter:
        now = time.time()
        run_id = f"{datetime.fromtimestamp(now, timezone.utc):%Y%m%d-%H%M%S}-{self.sc.name}"
        run_dir = self.out_dir / run_id
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = self.out_dir / f"{run_id}-{n}"
        backends = [BackendRun(name=b.name, kind=b.kind, model=b.model, url=b.url, side=b.article_side,
                               launch_command=" ".join(b.launch) if isinstance(b.launch, list) else b.launch)
                    for b in self.sc.backends if not self.only or b.name in self.only]
        levels = [LevelInfo(label=p.label, mode=p.mode, concurrency=p.concurrency, rate=p.rate) for p in self.plans]
        info = RunInfo(run_id=run_dir.name, scenario_name=self.sc.name, scenario_path=str(self.loaded.path),
                       started_at=_iso(now), host=host_info(), pagebench_version=__version__, backends=backends, levels=levels,
                       event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
                       prompts=self.items.info() if isinstance(self.items, Prompts) else {},
                       clock=self.clock.anchor())
        return RunWriter(run_dir, info, self.loaded.raw_bytes)

    def _event(self, kind: str, message: str, backend: str | None = None, level: str | None = None) -> None:
        row = {"t": time.time(), "backend": backend, "level": level, "kind": kind, "message": message}
        self.writer.event(row)
        self.ui.event(row)

    def _on_record(self, rec: RequestRecord) -> None:
        row = rec.to_row(self.clock)
        self.writer.request(row)
        self.rows.append(row)
        self.ui.request_done(row)

    async def run(self) -> Outcome:
        if not self.items:
            self.prepare()
        self.writer = self._open_run()
        info = self.writer.info
        interrupted = False
        try:
            for br in info.backends:
                cfg = next(b for b in self.sc.backends if b.name == br.name)
                await self._run_backend(cfg, br)
        except asyncio.CancelledError:
            interrupted = True
            self._event("interrupted", "run interrupted; finished requests are kept")
        finally:
            shared = bool(self.items.sharing) if isinstance(self.items, Prompts) else None
            summary = summarize(self.rows, self.sc.slo.model_dump() if self.sc.slo else None, shared)
            self.writer.write_summary(summary)
            failed = [b for b in info.backends if b.status == "failed"]
            info.status = "interrupted" if interrupted else ("failed" if failed else "complete")
            info.finished_at = _iso(time.time())
            self.writer.write_info()
            self.writer.close()
        failures = [f"{b.name}: {b.error}" for b in failed]
        failures += [f"{s['backend']} {s['level']}: {s['errors']}/{s['requests']} requests failed"
                     for s in summary if s["errors"] and not any(f.startswith(f"{s['backend']}:") for f in failures)]
        return Outcome(self.writer.dir, info, summary, interrupted, failures)

    async def _run_backend(self, cfg: BackendBase, br: BackendRun) -> None:
        name = cfg.name
        br.status = "running"
        self.writer.write_info()
        launched: Launched | None = None
        backend = sampler = watchdog = None
        current: list[LevelRun] = []
        try:
            url = cfg.url
            if cfg.launch:
                launched = start(cfg, self.writer.dir / "backends" / f"{name}.log")
                url = launched.url
                br.launched, br.launch_command, br.url = True, launched.command, url
                self._event("launch", launched.command, name)
                br.ready_s = await launched.wait_ready(cfg.kind, cfg.ready_timeout_s)
                self._event("ready", f"ready after {br.ready_s:.1f}s at {url}", name)
            else:
                await wait_ready(url, cfg.kind, cfg.ready_timeout_s)
            backend = make_backend(cfg, url, self.sc.workload)
            try:
                br.version, br.info = await backend.prepare(lambda s, c, t: self.ui.pull_progress(name, s, c, t))
            except httpx.ConnectError as e:
                raise BackendError(f"cannot reach {url}: {e or 'connection refused'}") from None
            except httpx.HTTPError as e:
                raise BackendError(f"{url} did not answer: {type(e).__name__}: {e}") from None
            if launched:
                # The launched process may have become another program (scripts/ollama_serve.py execs
                # `ollama serve`): /proc names the binary that actually serves, e.g. which Ollama build ran.
                with contextlib.suppress(OSError):
                    br.info["executable"] = str(Path(f"/proc/{launched.proc.pid}/exe").readlink())
            self.writer.write_info()
            self._event("prepared", f"version {br.version}; info {br.info}", name)
            sampler = Sampler(backend, launched.proc.pid if launched else None, self.sc.load.sample_interval_s, self.writer.sample)
            sampler.start()
            abort = asyncio.Event()
            if launched:
                watchdog = asyncio.create_task(self._watch(launched, current))
            for i, plan in enumerate(self.plans):
                if i and self.sc.load.cooldown_s:
                    await asyncio.sleep(self.sc.load.cooldown_s)
                sampler.level = plan.label
                self._event("level_start", f"{plan.label}: {plan.total or 'until ' + str(plan.duration_s) + 's'} requests", name, plan.label)
                self.ui.level_start(name, plan)
                prompts = self.items.level(i) if isinstance(self.items, Prompts) else self.items
                lr = LevelRun(backend, prompts, plan, self._on_record, abort)
                current[:] = [lr]
                await lr.run()
                sampler.level = None
                self.ui.level_end(name, plan)
                self._event("level_end", f"{plan.label}: {lr.next_k} requests sent", name, plan.label)
                reason = lr.abort_reason or (launched and launched.exit_reason() and f"died mid-run: {launched.exit_reason()}")
                if reason:
                    raise BackendError(reason)
            br.status = "complete"
        except BackendError as e:
            br.status, br.error = "failed", str(e)
            self._event("error", str(e), name)
        except Exception as e:  # one backend's surprise must not cost the others their turn
            br.status, br.error = "failed", " ".join(f"{type(e).__name__}: {e}".split())[:300]
            self._event("error", br.error, name)
            self._event("traceback", traceback.format_exc(), name)
        except asyncio.CancelledError:
            br.status, br.error = "failed", "interrupted"
            raise
        finally:
            if watchdog:
                watchdog.cancel()
            if sampler:
                with contextlib.suppress(Exception):
                    await sampler.sample()
                await sampler.stop()
                if sampler.peak_rss:
                    br.info["peak_rss_bytes"] = sampler.peak_rss
                if sampler.peak_gpu:
                    br.info["peak_gpu_mem_bytes"] = sampler.peak_gpu
            if backend:
                with contextlib.suppress(Exception):
                    await backend.close()
            if launched:
                code = await launched.stop(cfg.stop_timeout_s)
                self._event("stop", f"server stopped (exit code {code})", name)
            self.writer.write_info()

    async def _watch(self, launched: Launched, current: list[LevelRun]) -> None:
        while True:
            await asyncio.sleep(0.2)
            if reason := launched.exit_reason():
                for lr in current:
                    lr.stop(f"died mid-run: {reason}")
                return
