"""Tensor parallelism: one worker process per extra rank; rank 0, in the engine's process, schedules and broadcasts.

torch.distributed does the work: NCCL between GPUs, gloo on the CPU.
"""
import atexit
import multiprocessing as mp
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from engine import step_inputs

# Multicast over NVLink can take a shared host's GPUs out of service; never let NCCL use it.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


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


def init_rank(rank: int, launch: TPLaunch) -> torch.device:
    os.environ.update(SAFE_ENV)
    if launch.device_type == "cuda":
        torch.cuda.set_device(rank)
        device, backend = torch.device("cuda", rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{launch.port}", rank=rank,
                            world_size=launch.world_size, timeout=timedelta(seconds=collective_timeout_s()))
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
    from engine.llm_engine import build_runner

    dump_after = os.environ.get("PAGEBENCH_HANG_DUMP_S")
    if dump_after:
        import faulthandler

        faulthandler.dump_traceback_later(float(dump_after), exit=False)

    device = init_rank(rank, launch)
    runner = build_runner(launch, device)
    while (step := step_inputs.receive()) is not None:
        with torch.inference_mode():
            runner.forward(step)
            if step.sample_rows and runner.config.async_scheduling:
                runner.share_sampled(torch.empty(len(step.sample_rows), dtype=torch.int64, device=device))
    runner.release_graphs()
    if not teardown():
        os._exit(0)  # the rank's work is done; leave the stuck NCCL teardown to the driver


class TPGroup:
    def __init__(self, launch: TPLaunch) -> None:
        ctx = mp.get_context("spawn")
        env_backup = {k: os.environ.get(k) for k in SAFE_ENV}
        os.environ.update(SAFE_ENV)
        self.procs = [ctx.Process(target=worker_main, args=(r, launch), daemon=True, name=f"tp-rank-{r}")
                      for r in range(1, launch.world_size)]
        for p in self.procs:
            p.start()
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
        self.failure: str | None = None
        self.closed = False
        self.teardown_stuck = False
        threading.Thread(target=self._watch, daemon=True, name="tp-watch").start()
        atexit.register(self.shutdown)

    def _watch(self) -> None:
        while not self.closed:
            for p in self.procs:
                if not p.is_alive() and not self.closed:
                    self.failure = f"tensor-parallel worker {p.name} exited with code {p.exitcode}"
                    self._kill()
                    return
            time.sleep(0.5)

    def check(self) -> None:
        if self.failure:
            raise RuntimeError(self.failure)

    def _kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(timeout=5)

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
