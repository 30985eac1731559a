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


@pytest.mark.gpu
def test_tp2_matches_tp1_on_two_gpus(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two NVIDIA GPUs")
    import transformers

    from tests.test_engine_gpu import SMALL

    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL)).save_pretrained(tmp_path)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (7, 40, 200)]
    single = LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_tokens=8192).generate(prompts, PARAMS)
    with LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_tokens=8192, tensor_parallel_size=2) as llm:
        double = llm.generate(prompts, PARAMS)
    assert [o.token_ids for o in double] == [o.token_ids for o in single]


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
