"""The machine a run happened on: CPU, memory, GPUs and driver."""
from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import psutil


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpus() -> list[dict[str, Any]]:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                        "driver": driver.decode() if isinstance(driver, bytes) else driver})
        return out
    except Exception:
        return []


def host_info() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "os": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "cpu_count": psutil.cpu_count(logical=True),
            "ram_bytes": psutil.virtual_memory().total, "gpus": gpus()}
