"""Starts `engine serve` as a real subprocess on a free 127.0.0.1 port, waits for /health, and always stops it."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

TINY_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=64,
                  intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2)


@dataclass(slots=True)
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    startup_seconds: float

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=30).text
        return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if not s.labels}

    def wait_idle(self, timeout_s: float = 30.0) -> dict[str, float]:
        """Metrics once nothing runs or waits, or the last ones seen when the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            if (m["pagebench:num_requests_running"] == 0 and m["pagebench:num_requests_waiting"] == 0) \
                    or time.monotonic() > deadline:
                return m
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_dir(path: Path) -> str:
    """A Hugging Face directory with a config and no weights: the engine fills it at random, fast on any CPU."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return str(path)


@contextlib.contextmanager
def running_server(model: str, *args: str, log_dir: Path, timeout_s: float = 300.0) -> Iterator[ServerProcess]:
    port = free_port()
    log_path = log_dir / f"engine-serve-{port}.log"
    argv = [sys.executable, "-m", "engine.cli", "serve", model, "--port", str(port), *args]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(argv)}` exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"server not ready after {timeout_s:g}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield ServerProcess(url, proc, log_path, time.monotonic() - started)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def still_running_after(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of `procs` still alive (a zombie counts as ended) when all have ended or `seconds` have passed."""
    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    ends = time.monotonic() + seconds
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < ends:
        time.sleep(0.1)
    return alive
