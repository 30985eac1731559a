"""Memory and engine gauges over a backend's run: psutil RSS, NVML GPU memory, /metrics, Ollama's /api/ps."""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Callable
from urllib.parse import urlparse

import psutil

from harness.backends.base import Backend


class Nvml:
    """GPU memory per process and per device; absent (all None) on hosts without an NVIDIA driver."""

    def __init__(self) -> None:
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.ok = bool(self.handles)
        except Exception:
            self.handles = []

    def read(self, pids: set[int]) -> tuple[int | None, int | None]:
        if not self.ok:
            return None, None
        device = proc = 0
        for h in self.handles:
            device += self.nv.nvmlDeviceGetMemoryInfo(h).used
            for p in self.nv.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in pids and p.usedGpuMemory:
                    proc += p.usedGpuMemory
        return (proc if pids else None), device


def pid_listening_on(url: str) -> int | None:
    """The local process serving `url`, so a server the harness did not start is still measured."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    return None


def tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def rss(procs: list[psutil.Process]) -> int | None:
    total, seen = 0, False
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
            seen = True
    return total if seen else None


class Sampler:
    def __init__(self, backend: Backend, pid: int | None, interval_s: float, emit: Callable[[dict[str, Any]], None]) -> None:
        self.backend = backend
        self.pid = pid if pid is not None else pid_listening_on(backend.url)
        self.interval = interval_s
        self.emit = emit
        self.level: str | None = None
        self.nvml = Nvml()
        self.peak_rss = 0
        self.peak_gpu = 0
        self._task: asyncio.Task | None = None
        self._stopped = False
        self._procs: list[psutil.Process] = []
        self._count = 0

    def _local(self) -> dict[str, Any]:
        gpu, device = self.nvml.read({p.pid for p in self._procs})
        return {"rss_bytes": rss(self._procs), "gpu_mem_bytes": gpu, "gpu_device_used_bytes": device}

    async def sample(self) -> dict[str, Any]:
        # Finding the process tree scans all of /proc, so it is refreshed in a thread every 10th sample; reading
        # a few processes' memory stays inline, a thread would make the load generator wait on the GIL instead.
        if self._count % 10 == 0:
            self._procs = await asyncio.to_thread(tree, self.pid)
        self._count += 1
        row: dict[str, Any] = {"t": time.time(), "backend": self.backend.cfg.name, "level": self.level}
        row.update(self._local())
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                row.update(await self.backend.poll())
        except Exception:
            pass
        self.peak_rss = max(self.peak_rss, row.get("rss_bytes") or 0)
        self.peak_gpu = max(self.peak_gpu, row.get("gpu_mem_bytes") or 0)
        self.emit(row)
        return row

    async def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stopped:
            await self.sample()
            next_t += self.interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Cancels the loop; the flag ends it even if a cancellation is swallowed mid-poll."""
        self._stopped = True
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.interval + 2.0)
            self._task = None
