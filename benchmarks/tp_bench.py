"""Tensor parallelism on the GPUs of one host (issue 8): decode speed with the custom all-reduce and with NCCL alone.

For each all-reduce choice (and with asynchronous scheduling on or off), one engine of the shape over --tp GPUs: decode at batch 1 (128-token prompt, 256 new
tokens), the steady decode step at batch 64 with 1,024-token contexts, a torch-profiler split of both steps on
rank 0 (GPU kernel time by kind against wall time), and how long the engine takes to shut down. Prints JSON lines
and writes them all to --out:
    NCCL_NVLS_ENABLE=0 python benchmarks/tp_bench.py --shape qwen2.5-32b --tp 2 --out tp.json
"""
import argparse
import json
import random
import time

import torch

from benchmarks.gpu_bench import copy_bandwidth, drain, free, rand_prompt, start_decoding
from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine

KINDS = {"all-reduce": ("allreduce", "all_reduce", "one_shot"), "gemm": ("gemm", "gemv", "nvjet", "cutlass", "sm90_xmma"),
         "attention": ("attention", "attn"), "all-gather": ("allgather",)}


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in KINDS.items() if any(key in low for key in keys)), "other")


def steady_steps(e: LLMEngine, steps: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        e.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def profiled(e: LLMEngine, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = steady_steps(e, steps)
    split: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA":
            split[kind_of(ev.key)] = split.get(kind_of(ev.key), 0.0) + ev.self_device_time_total / steps / 1e3
    return {"wall_ms_per_step": round(wall * 1e3, 3), "gpu_kernel_ms_per_step": round(sum(split.values()), 3),
            "kernel_ms_by_kind": {k: round(v, 3) for k, v in sorted(split.items(), key=lambda kv: -kv[1])}}


def host_profile(e: LLMEngine, steps: int, top: int = 25) -> list[dict]:
    """Rank 0's Python per step, by function: what the GPUs wait on between two forwards."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    steady_steps(e, steps)
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{fn[0].rsplit('/', 2)[-1]}:{fn[1]}:{fn[2]}", "calls_per_step": round(v[1] / steps, 1),
             "self_ms_per_step": round(v[2] / steps * 1e3, 3), "total_ms_per_step": round(v[3] / steps * 1e3, 3)}
            for fn, v in rows]


def at_batch(e: LLMEngine, batch: int, context: int, steps: int, profile: bool = True) -> dict:
    start_decoding(e, batch, context, 3 * steps + 20, random.Random(batch))
    result = {"batch": batch, "context": context, "ms_per_step": round(steady_steps(e, steps) * 1e3, 3)}
    if profile:
        result |= {"profile": profiled(e, steps), "host_profile": host_profile(e, steps)}
    drain(e)
    return result


def run(shape: str, tp: int, custom: bool, async_scheduling: bool, bw: float, profile: bool) -> dict:
    started = time.perf_counter()
    llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", tensor_parallel_size=tp, max_num_seqs=64,
                          max_model_len=4096, kv_cache_fraction=0.92, disable_custom_all_reduce=not custom,
                          async_scheduling=async_scheduling)
    e = llm.engine
    result = {"shape": shape, "tensor_parallel_size": tp, "all_reduce": e.runner.all_reduce,
              "async_scheduling": async_scheduling,
              "start_s": round(time.perf_counter() - started, 1),
              "weights_gb_per_gpu": round(e.weights_bytes_per_rank / 1e9, 2),
              "floor_ms_per_step": round(e.weights_bytes_per_rank / bw * 1e3, 3)}
    prompt = rand_prompt(random.Random(0), 128, e.model_config.vocab_size)
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16))
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=256, min_tokens=256))[0]
    decode_s = out.metrics.finish_time - out.metrics.first_token_time
    result["batch1_decode_tokens_per_s"] = round(255 / decode_s, 1)
    result["batch1_ms_per_step"] = round(decode_s / 255 * 1e3, 3)
    result["batch1"] = at_batch(e, 1, 128, 30, profile)
    result["batch64"] = at_batch(e, 64, 1024, 20, profile)
    t = time.perf_counter()
    llm.close()
    result["close_s"] = round(time.perf_counter() - t, 2)
    result["teardown_stuck"] = e.teardown_stuck
    del llm, e
    free()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-32b")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--all-reduce", default="custom,nccl", help="comma-separated: custom, nccl")
    ap.add_argument("--async-scheduling", default="on", help="comma-separated: on, off")
    ap.add_argument("--no-profile", action="store_true", help="timings only, no profiler passes")
    ap.add_argument("--out", default="tp_bench.json")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": props.name,
           "gpus": torch.cuda.device_count(), "torch": torch.__version__, "copy_bandwidth_tb_s": round(bw / 1e12, 3),
           "runs": []}
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
    variants = [(ar, overlap) for ar in args.all_reduce.split(",") for overlap in args.async_scheduling.split(",")]
    for choice, overlap in variants:
        res["runs"].append(run(args.shape, args.tp, choice == "custom", overlap == "on", bw, not args.no_profile))
        print(json.dumps(res["runs"][-1]), flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
