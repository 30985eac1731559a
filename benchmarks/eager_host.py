"""Where the host time of an eager (prefill or mixed) step goes on a GPU: cProfile over each of the first steps of a
fresh engine's burst behind a new 2,000-token prefix, over the first step of a burst that shares a cached one, and
over a step of 8,192 new prompt tokens (with Python's garbage-collection pauses), plus the host cost of one
launch of each kind the step makes (a Triton kernel, a torch matmul, a torch allocation). Prints JSON.

    python benchmarks/eager_host.py [--shape qwen3-0.6b] [--top 30] [--out eager_host.json]
"""
import argparse
import cProfile
import gc
import json
import pstats
import random
import time

import torch

from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine


def rand_prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(100, vocab - 100) for _ in range(n)]


def profiled_step(e: LLMEngine, top: int) -> dict:
    """cProfile over one engine step (launch only: under asynchronous scheduling the tokens are read a step later)."""
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    pauses: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            pauses.append(now)
        else:
            pauses.append(now - pauses.pop())

    gc.callbacks.append(on_gc)
    t = time.perf_counter()
    prof.enable()
    e.step()
    prof.disable()
    wall = (time.perf_counter() - t) * 1e3
    gc.callbacks.remove(on_gc)
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": f"{file.rsplit('/', 2)[-1] if '/' in file else file}:{line}:{name}",
                     "calls": ncalls, "self_ms": round(tottime * 1e3, 3), "cum_ms": round(cumtime * 1e3, 3)})
    by_self = sorted(rows, key=lambda r: r["self_ms"], reverse=True)[:top]
    by_cum = sorted(rows, key=lambda r: r["cum_ms"], reverse=True)[:top]
    return {"step_ms_under_cprofile": round(wall, 3), "gc_pauses_ms": [round(p * 1e3, 3) for p in pauses],
            "by_self_time": by_self, "by_cumulative_time": by_cum}


def launch_costs(n: int = 2000) -> dict:
    """Host microseconds per call of one Triton kernel, one torch matmul and one allocation, the GPU kept busy
    enough that the queue never drains (so no call waits on the device)."""
    from engine.kernels import rms_norm

    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(1024, device="cuda", dtype=torch.bfloat16)
    m = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)

    def per_call(fn) -> float:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t) / n * 1e6
        torch.cuda.synchronize()
        return round(dt, 2)

    return {"triton_rms_norm_us": per_call(lambda: rms_norm(x, w, 1e-6)),
            "triton_rms_norm_residual_us": per_call(lambda: rms_norm(x, w, 1e-6, x)),
            "torch_linear_us": per_call(lambda: torch.nn.functional.linear(x, m)),
            "torch_empty_us": per_call(lambda: torch.empty(64, 1024, device="cuda", dtype=torch.bfloat16)),
            "torch_index_select_us": per_call(lambda: x.index_select(0, torch.zeros(1, dtype=torch.long,
                                                                                     device="cuda")))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-0.6b")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="eager_host.json")
    args = ap.parse_args()
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "triton": __import__("triton").__version__, "launch_costs": launch_costs()}
    llm = LLM.from_config(args.shape, dtype="bfloat16", device="cuda", max_num_seqs=64, max_num_batched_tokens=8192,
                          enable_prefix_caching=True, kv_cache_fraction=0.9, max_model_len=4096)
    e = llm.engine
    vocab = e.model_config.vocab_size
    rng = random.Random(5)
    system = rand_prompt(rng, 2000, vocab)
    params = SamplingParams(temperature=0.0, max_tokens=4, min_tokens=4)
    # A fresh engine's first burst behind a new shared prefix (gpu_bench's prefix test), each of its first steps
    # under cProfile: the first computes the prefix, the second the 63 other prompts, the third is their first decode.
    llm.generate([rand_prompt(rng, 64, vocab)], params)
    for _ in range(64):
        e.add_request(None, system + rand_prompt(rng, 32, vocab), params)
    res["first_burst_steps"] = [profiled_step(e, args.top) for _ in range(4)]
    while e.has_unfinished_requests():
        e.step()
    system = rand_prompt(rng, 2000, vocab)
    llm.generate([system + rand_prompt(rng, 32, vocab)], params)
    llm.generate([system + rand_prompt(rng, 32, vocab) for _ in range(64)], params)
    for _ in range(64):
        e.add_request(None, system + rand_prompt(rng, 32, vocab), params)
    res["cached_prefix_first_step"] = profiled_step(e, args.top)
    while e.has_unfinished_requests():
        e.step()
    for _ in range(4):
        e.add_request(None, rand_prompt(rng, 2048, vocab), params)
    res["new_8192_tokens_step"] = profiled_step(e, args.top)
    while e.has_unfinished_requests():
        e.step()
    llm.close()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
