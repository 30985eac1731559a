"""Tensor parallelism: one worker process per extra rank; rank 0, in the engine's process, schedules and broadcasts.

torch.distributed does the work: NCCL between GPUs, gloo on the CPU. Workers are fresh interpreters
(`python -c`), not multiprocessing children: nothing re-runs the user's script in them, so a script with no
`if __name__ == "__main__":` guard works, and each worker's stderr comes back through a pipe to say why it died.
"""
import atexit
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

import engine
from engine import step_inputs

# Multicast over NVLink can take a shared host's GPUs out of service; never let NCCL use it.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TAIL_LINES = 12
JOINED_KEY = "pagebench/workers-joined"
ABORTED_KEY = "pagebench/start-up-aborted"
# Only a bound for a worker that lives but never arrives; rank 0 watches the workers' processes meanwhile.
RENDEZVOUS_TIMEOUT_S = 600.0
T = TypeVar("T")


class WorkerFailed(RuntimeError):
    """A tensor-parallel worker died; the message carries how and the last lines it wrote."""


@dataclass(slots=True)
class TPLaunch:
    model: str
    dtype: str
    device_type: str
    world_size: int
    port: int
    engine_kwargs: dict = field(default_factory=dict)
    hf_config: dict | None = None
    tokenizer: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_divisible(num_heads: int, num_kv_heads: int, world_size: int) -> None:
    if num_heads % world_size:
        raise ValueError(f"tensor_parallel_size {world_size} does not divide num_attention_heads {num_heads}")
    if num_kv_heads % world_size and world_size % num_kv_heads:
        raise ValueError(f"tensor_parallel_size {world_size} and num_key_value_heads {num_kv_heads}: "
                         f"one must divide the other")


def init_rank(rank: int, launch: TPLaunch, store: dist.Store | None = None) -> torch.device:
    """Joins the group; rank 0 passes the store it serves, the workers reach it at launch.port."""
    os.environ.update(SAFE_ENV)
    if launch.device_type == "cuda":
        torch.cuda.set_device(rank)
        device, backend = torch.device("cuda", rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if store is None:
        store = dist.TCPStore("127.0.0.1", launch.port, launch.world_size, is_master=False,
                              timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
        store.add(JOINED_KEY, 1)
    else:
        # gloo's rendezvous waits no longer than one collective may (seconds, in some tests), while a worker's
        # imports alone can take longer on a busy host: rank 0 joins once every worker is at the door.
        while store.add(JOINED_KEY, 0) < launch.world_size - 1:
            if store.check([ABORTED_KEY]):
                raise RuntimeError("tensor-parallel start-up aborted")
            time.sleep(0.05)
    timeout = timedelta(seconds=collective_timeout_s())
    dist.init_process_group(backend, store=store, rank=rank, world_size=launch.world_size, timeout=timeout)
    step_inputs.open_channel()
    return device


def collective_timeout_s() -> float:
    """How long one collective inside a step may wait for the other ranks before the rank gives up."""
    return float(os.environ.get("PAGEBENCH_TP_COLLECTIVE_TIMEOUT_S", 600))


TEARDOWN_TIMEOUT_S = 15.0


def teardown(timeout_s: float = TEARDOWN_TIMEOUT_S) -> bool:
    """Ends this rank's process group; False if it did not end within timeout_s.

    On two H200s (2026-11-26) NCCL's destroy, and its abort too, waited forever at shutdown with decode CUDA graphs
    that had captured all-reduces still alive; the graphs are now released first, and the wait is bounded either
    way so that no process hangs on its way out."""
    if not dist.is_initialized():
        return True
    step_inputs.close_channel()
    if dist.get_backend() != "nccl":
        dist.destroy_process_group()
        return True
    torch.cuda.synchronize()
    done = threading.Event()

    def run() -> None:
        try:
            dist.destroy_process_group()
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="nccl-teardown").start()
    return done.wait(timeout_s)


def worker_main(rank: int, launch: TPLaunch) -> None:
    from engine.startup import build_runner

    dump_after = os.environ.get("PAGEBENCH_HANG_DUMP_S")
    if dump_after:
        import faulthandler

        faulthandler.dump_traceback_later(float(dump_after), exit=False)

    device = init_rank(rank, launch)
    runner = build_runner(launch.model, launch.dtype, device, launch.engine_kwargs, launch.hf_config)
    while (step := step_inputs.receive()) is not None:
        with torch.inference_mode():
            runner.forward(step)
            if step.sample_rows and runner.config.async_scheduling:
                runner.share_sampled(torch.empty(len(step.sample_rows), dtype=torch.int64, device=device))
    runner.release_graphs()
    if not teardown():
        os._exit(0)  # the rank's work is done; leave the stuck NCCL teardown to the driver


def worker_process() -> None:
    """A worker's entry: rank and launch arrive pickled on stdin, and stdin's end means rank 0's process is gone.

    Without that a worker whose rank 0 was killed would wait for its next step for as long as the idle wait lasts,
    holding its GPU."""
    # Raw reads of fd 0 only: a daemon thread blocked inside sys.stdin's buffered reader aborts the interpreter's
    # exit ("could not acquire lock ... at interpreter shutdown").
    size = struct.unpack("<q", _read_exactly(0, 8))[0]
    rank, launch = pickle.loads(_read_exactly(0, size))

    def exit_when_rank0_is_gone() -> None:
        while os.read(0, 1 << 16):
            pass
        os._exit(1)

    threading.Thread(target=exit_when_rank0_is_gone, daemon=True, name="rank0-watch").start()
    worker_main(rank, launch)


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise SystemExit("rank 0 closed the pipe before sending this worker its launch")
        data += chunk
    return data


class Worker:
    """One worker process, its stderr passed through to ours with its name, and its last lines kept."""

    def __init__(self, rank: int, launch: TPLaunch) -> None:
        self.name = f"tp-rank-{rank}"
        root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **SAFE_ENV, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from engine.tp_workers import worker_process; worker_process()"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._reader = threading.Thread(target=self._pass_stderr, daemon=True, name=f"{self.name}-stderr")
        self._reader.start()
        try:
            payload = pickle.dumps((rank, launch))
            self.proc.stdin.write(struct.pack("<q", len(payload)) + payload)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; its exit code and stderr say why

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            self.proc.kill()

    def _pass_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            try:
                print(f"({self.name}) {line}", file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass  # our own stderr is closed; the tail is still kept

    def describe(self, during: str) -> str:
        """How the worker ended, with the last lines it wrote (its traceback, when Python raised)."""
        self._reader.join(10)  # the pipe ends with the process; only a busy host delays the last lines
        code = self.proc.poll()
        if code is not None and code < 0:
            how = f"exited (killed by {signal.Signals(-code).name}"
            how += ": out of memory, or killed by hand)" if code == -signal.SIGKILL else ")"
        else:
            how = f"exited with code {code}"
        lines = [line for line in self.tail if line.strip()]
        said = "; its last lines:\n" + "\n".join(f"  {line}" for line in lines) if lines else ""
        return f"tensor-parallel worker {self.name} {how} {during}{said}"


def refuse_while_bootstrapping() -> None:
    """A multiprocessing child that re-runs a script with no main guard (a DataLoader worker, say) would start a
    whole engine and its workers of its own; multiprocessing refuses a new process there, with a message about
    freeze_support that does not say what to change."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "a tensor-parallel engine was being created while a multiprocessing child process re-ran the main "
            "script on its way up; put the code that creates LLM under `if __name__ == \"__main__\":`")


class TPGroup:
    def __init__(self, launch: TPLaunch) -> None:
        refuse_while_bootstrapping()
        # Rank 0 serves the rendezvous on a port the kernel picks: no other process can take it in between.
        self.store = dist.TCPStore("127.0.0.1", 0, launch.world_size, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
        launch.port = self.store.port
        self.procs = [Worker(r, launch) for r in range(1, launch.world_size)]
        self.failure: str | None = None
        self.closed = False
        self.started = False
        self.teardown_stuck = False
        # Called from the watch thread once a worker has died after start-up; a server ends itself there.
        self.on_failure: Callable[[str], None] | None = None
        threading.Thread(target=self._watch, daemon=True, name="tp-watch").start()
        atexit.register(self.shutdown)

    def start(self, rank0_startup: Callable[[dist.Store], T]) -> T:
        """Runs rank 0's start-up (rendezvous, loading, the first collectives) while watching the workers.

        Those steps wait on the other ranks inside torch.distributed, where nothing notices that a peer has died:
        a worker that died before it joined left rank 0 waiting in the rendezvous for the whole timeout. So the
        start-up runs in a thread, and this one ends it the moment a worker's process ends, with that worker's
        own last words."""
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["value"] = rank0_startup(self.store)
            except BaseException as e:  # handed to the caller's thread below
                outcome["error"] = e

        thread = threading.Thread(target=run, daemon=True, name="tp-rank-0-startup")
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.1)
                if self.failure is not None:
                    raise WorkerFailed(self.failure)
            if "error" in outcome:
                # A collective that failed because its peer vanished: the peer's own error is the one to show.
                deadline = time.monotonic() + 2.0
                while self.failure is None and time.monotonic() < deadline and not self.closed:
                    time.sleep(0.05)
                if self.failure is not None:
                    raise WorkerFailed(self.failure) from outcome["error"]
                raise outcome["error"]
        except BaseException:
            self.abort(thread)
            raise
        self.started = True
        return outcome["value"]

    def _watch(self) -> None:
        while not self.closed:
            for p in self.procs:
                if not p.is_alive() and not self.closed:
                    self.failure = p.describe("after start-up" if self.started else "while starting")
                    self._kill()
                    if self.on_failure is not None and self.started:
                        self.on_failure(self.failure)
                    return
            time.sleep(0.1)

    def check(self) -> None:
        if self.failure:
            raise WorkerFailed(self.failure)

    def _kill(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.join(timeout=5)

    def abort(self, startup: threading.Thread | None = None) -> None:
        """Start-up failed on some rank: no worker outlives it, and rank 0 leaves the group it may have joined."""
        self.closed = True
        self.store.set(ABORTED_KEY, "1")  # ends rank 0's own wait for the workers to arrive
        self._kill()
        if startup is not None:
            startup.join(5)  # its collectives fail now that the peers are gone; the rendezvous may not, and is left
        if startup is None or not startup.is_alive():
            self.teardown_stuck = not teardown()

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.failure is None and dist.is_initialized():
            try:
                step_inputs.send(None)
            except Exception:
                pass
            self.teardown_stuck = not teardown()
        for p in self.procs:
            p.join(timeout=10)
        self._kill()
        if self.failure is not None:
            # With its peers gone this process's group must still end, or no later engine here can start one.
            self.teardown_stuck = not teardown()
