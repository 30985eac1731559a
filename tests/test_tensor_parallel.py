"""Tensor parallelism on the CPU over gloo: two processes give the same greedy tokens as one."""
import os
import random
import signal
import time

import pytest

from engine import LLM, SamplingParams
from tests.tiny_models import make_tiny_checkpoint

PARAMS = SamplingParams(temperature=0.0, max_tokens=12, min_tokens=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp-llama")
    make_tiny_checkpoint("llama", str(path))
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 512) for _ in range(n)] for n in (4, 17, 40)]
    return str(path), prompts


def test_tp2_matches_tp1(checkpoint):
    path, prompts = checkpoint
    single = LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048).generate(prompts, PARAMS)
    with LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048, tensor_parallel_size=2) as llm:
        double = llm.generate(prompts, PARAMS)
        procs = llm.engine.tp_group.procs
    assert [o.token_ids for o in double] == [o.token_ids for o in single]
    assert not any(p.is_alive() for p in procs)


def test_rank_count_must_divide_heads(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="does not divide num_attention_heads"):
        LLM(path, dtype="float32", device="cpu", tensor_parallel_size=3)


def test_dead_worker_is_a_clear_error_and_leaves_no_orphans(checkpoint):
    path, prompts = checkpoint
    llm = LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048, tensor_parallel_size=2)
    worker = llm.engine.tp_group.procs[0]
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while llm.engine.tp_group.failure is None and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(RuntimeError, match="tensor-parallel worker tp-rank-1 exited"):
        llm.generate(prompts, PARAMS)
    llm.close()
    assert not worker.is_alive()


def two_gpus():
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two NVIDIA GPUs")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("custom_all_reduce", [True, False])
def test_tp2_matches_tp1_on_two_gpus(tmp_path, custom_all_reduce):
    torch = two_gpus()
    import transformers

    from tests.test_engine_gpu import SMALL

    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL)).save_pretrained(tmp_path)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (7, 40, 200)]
    single = LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_tokens=8192).generate(prompts, PARAMS)
    with LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_tokens=8192, tensor_parallel_size=2,
             disable_custom_all_reduce=not custom_all_reduce) as llm:
        double = llm.generate(prompts, PARAMS)
        used = llm.engine.runner.all_reduce
        procs = llm.engine.tp_group.procs
    print("all-reduce:", used)
    if custom_all_reduce and torch.cuda.can_device_access_peer(0, 1):
        assert used.startswith("one-shot"), used
    assert [o.token_ids for o in double] == [o.token_ids for o in single]
    assert not any(p.is_alive() for p in procs)


def custom_all_reduce_rank(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from engine.custom_all_reduce import try_custom_all_reduce
    from engine.tp_workers import SAFE_ENV

    os.environ.update(SAFE_ENV)
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            device_id=device)
    comm, why = try_custom_all_reduce(device, torch.bfloat16)
    report = {"why": why}
    if comm is not None:
        gen = torch.Generator(device=device).manual_seed(rank)
        for rows in (1, 7, 64, 256):
            x = torch.randn(rows, 5120, device=device, dtype=torch.bfloat16, generator=gen)
            expected = x.clone()
            dist.all_reduce(expected)
            report[f"eager {rows}"] = bool(torch.equal(comm(x), expected))
        x = torch.zeros(64, 5120, device=device, dtype=torch.bfloat16)
        comm(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = comm(x)
        for _ in range(3):
            x.copy_(torch.randn(64, 5120, device=device, dtype=torch.bfloat16, generator=gen))
            expected = x.clone()
            dist.all_reduce(expected)
            graph.replay()
            report.setdefault("graph", True)
            report["graph"] &= bool(torch.equal(out, expected))
        too_big = torch.empty((8 << 20) // (5120 * 2) + 1, 5120, device=device, dtype=torch.bfloat16)
        report["accepts over 8 MiB"] = comm.accepts(too_big)
        del graph
    torch.cuda.synchronize()
    dist.barrier()
    results.put((rank, report))
    dist.destroy_process_group()


@pytest.mark.gpu
def test_custom_all_reduce_equals_nccl_on_two_gpus():
    torch = two_gpus()
    if not torch.cuda.can_device_access_peer(0, 1):
        pytest.skip("the two GPUs cannot reach each other's memory")
    import multiprocessing as mp

    from engine.tp_workers import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=custom_all_reduce_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    reports = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    print(reports)
    for rank, report in reports.items():
        assert report["why"] == "", report["why"]
        assert report.pop("accepts over 8 MiB") is False
        assert all(v for k, v in report.items() if k != "why"), (rank, report)


@pytest.mark.parametrize("hangs", [False, True])
def test_nccl_teardown_is_bounded(monkeypatch, hangs):
    """A stuck NCCL destroy (seen on two H200s) costs at most the timeout, never the process."""
    import threading
    import time

    import torch.distributed as dist

    from engine import tp_workers

    released = threading.Event()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(tp_workers.torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(dist, "destroy_process_group", (lambda: released.wait(5)) if hangs else (lambda: None))
    start = time.monotonic()
    assert tp_workers.teardown(timeout_s=0.3) is (not hangs)
    assert time.monotonic() - start < 2.0
    released.set()


def test_workers_outlive_an_idle_spell_longer_than_the_collective_timeout(checkpoint, monkeypatch):
    """Workers wait for the next step with no deadline: an idle server must not lose its ranks."""
    monkeypatch.setenv("PAGEBENCH_TP_COLLECTIVE_TIMEOUT_S", "2")
    path, prompts = checkpoint
    with LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048, tensor_parallel_size=2) as llm:
        first = llm.generate(prompts, PARAMS)
        time.sleep(5)
        assert llm.engine.tp_group.failure is None
        again = llm.generate(prompts, PARAMS)
    assert [o.token_ids for o in again] == [o.token_ids for o in first]


def test_tp2_with_async_scheduling_matches_tp1(checkpoint):
    """Under TP the unread tokens of a step reach every rank's next step on the device, not through the host."""
    path, prompts = checkpoint
    single = LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048).generate(prompts, PARAMS)
    with LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048, tensor_parallel_size=2,
             async_scheduling=True) as llm:
        double = llm.generate(prompts, PARAMS)
    assert [o.token_ids for o in double] == [o.token_ids for o in single]
