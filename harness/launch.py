"""Start a backend's server command, wait until it answers, keep its log, stop it and its children."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from harness.backends.base import BackendError
from harness.config import launch_argv
from harness.scenario import BackendBase

# A server without /health (404) is ready once /v1/models answers; one whose /health says 503 is still loading.
READY_PATHS = {"paged": ("/health",), "openai": ("/health", "/v1/models"), "ollama": ("/api/version",)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[1:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


@dataclass(slots=True)
class Launched:
    proc: subprocess.Popen
    argv: list[str]
    url: str
    log_path: Path
    started: float
    # `harness.reaper`, which ends the server's process group if bench's process ends without stopping it.
    reaper: subprocess.Popen | None = None

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    def exit_reason(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        tail = _tail(self.log_path)
        return f"server process exited with code {code}" + (f"; log ends: {tail}" if tail else "")

    async def wait_ready(self, kind: str, timeout_s: float) -> float:
        return await wait_ready(self.url, kind, timeout_s, self.started, self.exit_reason, f"; log: {self.log_path}")

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM to the whole process group, then SIGKILL; children such as Ollama's runners go too."""
        if self.reaper is not None:
            # Ended first: once the server is reaped its group id may be reused by some other process.
            self.reaper.kill()
            self.reaper.wait()
            self.reaper.stdin.close()
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while self.proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()


async def wait_ready(url: str, kind: str, timeout_s: float, started: float | None = None,
                     exit_reason: Callable[[], str | None] | None = None, hint: str = "") -> float:
    """Polls the kind's health path until it answers 200. Without a process to watch (a `url` backend),
    a refused connection fails at once, while a server that answers but is still loading is waited for."""
    paths = READY_PATHS[kind]
    started = time.monotonic() if started is None else started
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as client:
        while True:
            if exit_reason and (reason := exit_reason()):
                raise BackendError(f"{reason} (before it was ready)")
            for path in paths:
                try:
                    status = (await client.get(path)).status_code
                except httpx.HTTPError as e:
                    if exit_reason is None:
                        raise BackendError(f"cannot reach {url}: {e or type(e).__name__}") from None
                    break
                if status == 200:
                    return time.monotonic() - started
                if status != 404:
                    break
            if time.monotonic() > started + timeout_s:
                raise BackendError(f"not ready after {timeout_s:g}s (GET {url}{paths[0]} never answered 200){hint}")
            await asyncio.sleep(0.2)


def start(cfg: BackendBase, log_path: Path) -> Launched:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in launch_argv(cfg.launch)]
    env = {**os.environ, **cfg.env}
    url = (cfg.url or f"http://127.0.0.1:{port}").replace("{port}", str(port))
    if cfg.kind == "ollama":
        host = url.split("://", 1)[1].rstrip("/")
        ours = {"OLLAMA_HOST": host, "OLLAMA_KEEP_ALIVE": str(cfg.keep_alive)}
        if cfg.num_ctx:
            ours["OLLAMA_CONTEXT_LENGTH"] = str(cfg.num_ctx)
        if cfg.num_parallel:
            ours["OLLAMA_NUM_PARALLEL"] = str(cfg.num_parallel)
        env.update({k: v for k, v in ours.items() if k not in cfg.env})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    log.write(f"$ {' '.join(argv)}\n".encode())
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    except OSError as e:
        raise BackendError(f"cannot start `{' '.join(argv)}`: {e.strerror or e}") from None
    finally:
        log.close()
    return Launched(proc, argv, url, log_path, time.monotonic(), start_reaper(proc, cfg.stop_timeout_s))


def start_reaper(server: subprocess.Popen, grace_s: float) -> subprocess.Popen:
    """The server has its own session (a Ctrl-C in bench's terminal is bench's to handle), so nothing else would
    end it if bench were killed outright."""
    return subprocess.Popen([sys.executable, "-m", "harness.reaper", str(server.pid), str(grace_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
