"""GPU benchmarks of the engine (issue 7): decode at batch 1, offline throughput, KV utilization, prefix sharing,
profiles of decode steps and of a prefill burst.

Random weights with real configs; Hugging Face generate() and the copy bandwidth measured in the same run.
Prints a short table and writes JSON. Run on a GPU host:
    python benchmarks/gpu_bench.py --out gpu_bench.json [--shapes qwen3-0.6b,qwen2.5-7b] [--tests decode,hf,throughput,prefix,profile,prefill]
"""
import argparse
import gc
import json
import os
import random
import statistics
import time
from collections.abc import Callable

import torch

from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine
from engine.loader import bundled_config


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record(); dst.copy_(src); end.record(); end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / statistics.median(times)


def gemm_peak(n: int = 8192) -> float:
    """bf16 matmul FLOP/s on this card now: the compute floor's denominator."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record(); a @ b; end.record(); end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n ** 3 / statistics.median(times)


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def rand_prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(100, vocab - 100) for _ in range(n)]


def decode_batch1(shape: str, bw: float, prompt_len: int = 128, new: int = 256, tp: int = 1) -> dict:
    llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", max_num_seqs=8, kv_cache_fraction=0.92,
                          max_model_len=4096, tensor_parallel_size=tp)
    e = llm.engine
    rng = random.Random(0)
    prompt = rand_prompt(rng, prompt_len, e.model_config.vocab_size)
    params = SamplingParams(temperature=0.0, max_tokens=new, min_tokens=new)
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16))
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = llm.generate([prompt], params)[0]
    wall = time.perf_counter() - t
    m = out.metrics
    decode_s = m.finish_time - m.first_token_time
    floor_ms = e.weights_bytes_per_rank / bw * 1e3
    result = {"shape": shape, "tensor_parallel_size": tp, "weights_gb_per_gpu": round(e.weights_bytes_per_rank / 1e9, 2), "kv_cache_gb": round(e.runner.kv_cache_bytes / 1e9, 2),
              "tokens": new, "wall_tokens_per_s": round(new / wall, 1), "decode_tokens_per_s": round((new - 1) / decode_s, 1),
              "ms_per_step": round(decode_s / (new - 1) * 1e3, 3), "floor_ms_per_step": round(floor_ms, 3),
              "fraction_of_floor": round(floor_ms / (decode_s / (new - 1) * 1e3), 3), "graphs": bool(e.runner.graphs)}
    llm.close()
    del llm, e
    free()
    return result


def hf_generate(shape: str, batch: int = 1, prompt_len: int = 128, new: int = 64) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = bundled_config(shape)
    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.randint(100, cfg["vocab_size"] - 100, (batch, prompt_len), device="cuda")
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, **kw)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    del model
    free()
    return {"shape": shape, "batch": batch, "tokens_per_s": round(batch * new / dt, 1)}


def offline_throughput(shape: str, n: int = 256, lo: int = 100, hi: int = 1024) -> dict:
    llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", max_num_seqs=256, max_num_batched_tokens=8192,
                          kv_cache_fraction=0.9, max_model_len=4096)
    e = llm.engine
    rng = random.Random(0)
    prompts = [rand_prompt(rng, rng.randint(lo, hi), e.model_config.vocab_size) for _ in range(n)]
    outs_len = [rng.randint(lo, hi) for _ in range(n)]
    params = [SamplingParams(temperature=0.0, max_tokens=k, min_tokens=k, ignore_eos=True) for k in outs_len]
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8))
    e.peak_blocks, e.utilization_at_peak = 0, 0.0
    torch.cuda.synchronize()
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    dt = time.perf_counter() - t
    total = sum(len(o.token_ids) for o in outs)
    s = e.stats()
    result = {"shape": shape, "requests": n, "output_tokens": total, "seconds": round(dt, 2),
              "output_tokens_per_s": round(total / dt, 1), "kv_blocks_total": s.kv_blocks_total,
              "peak_kv_blocks_used": s.peak_kv_blocks_used, "kv_utilization_at_peak": round(s.kv_utilization_at_peak, 4),
              "preemptions": s.num_preemptions}
    del llm, e
    free()
    return result


def prefix_sharing(shape: str, n: int = 64, system_len: int = 2000, suffix: int = 32) -> dict:
    result = {"shape": shape, "requests": n, "shared_tokens": system_len}
    rng = random.Random(1)
    for caching in (True, False):
        llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", max_num_seqs=n, max_num_batched_tokens=8192,
                              enable_prefix_caching=caching, kv_cache_fraction=0.9, max_model_len=4096)
        vocab = llm.engine.model_config.vocab_size
        system = rand_prompt(rng, system_len, vocab)
        llm.generate([rand_prompt(rng, 64, vocab)], SamplingParams(temperature=0.0, max_tokens=4))
        key = "with_cache" if caching else "without_cache"
        result[key] = timed_burst(llm, [system + rand_prompt(rng, suffix, vocab) for _ in range(n)])
        if caching:
            # The shared prefix is cached now: the same burst again, once plainly and once under the profiler.
            result["all_cached"] = timed_burst(llm, [system + rand_prompt(rng, suffix, vocab) for _ in range(n)])
            result["all_cached_profile"] = profile_generate(llm, [system + rand_prompt(rng, suffix, vocab)
                                                                  for _ in range(n)])
        del llm
        free()
    result["ttft_p50_ratio"] = round(result["without_cache"]["ttft_p50_s"] / result["with_cache"]["ttft_p50_s"], 2)
    return result


class HostPhases:
    """Host seconds per engine phase and step, by wrapping the engine's methods: no profiler, no syncs added.
    `complete` includes waiting for the step's sampled tokens (the GPU); the others are the host's own work."""

    def __init__(self, e: LLMEngine) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        # When each step's launches ended on the host and when the GPU got through them, from one origin: which of
        # the two a burst waits on. Events only: nothing here syncs.
        self.start_event, self.ends = torch.cuda.Event(enable_timing=True), []
        self.start_event.record()
        self.t0 = time.perf_counter()
        self.wrapped = [(e, "_drain_pending", "admit"), (e.scheduler, "schedule", "schedule"),
                        (e.runner, "prepare", "prepare"), (e.runner, "forward", "forward"),
                        (e.runner, "launch", "launch"), (e, "_complete", "complete")]
        for owner, name, label in self.wrapped:
            setattr(owner, name, self.timed(getattr(owner, name), label))

    def remove(self) -> None:
        """Puts the engine's own methods back (the wrappers are instance attributes over them), and adds each step's
        gpu_end_ms (after a sync)."""
        for owner, name, _ in self.wrapped:
            vars(owner).pop(name, None)
        torch.cuda.synchronize()
        for row, end in zip(self.steps, self.ends):
            row["gpu_end_ms"] = round(self.start_event.elapsed_time(end), 3)

    def timed(self, fn: Callable, label: str) -> Callable:
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[label] = self.current.get(label, 0.0) + (time.perf_counter() - t) * 1e3
        return run

    def step(self, e: LLMEngine) -> list:
        self.current = {}
        before = allocations()
        t = time.perf_counter()
        outputs = e.step()
        self.current["step"] = (time.perf_counter() - t) * 1e3
        self.current["host_end_ms"] = (time.perf_counter() - self.t0) * 1e3
        self.ends.append(torch.cuda.Event(enable_timing=True))
        self.ends[-1].record()
        # cudaMalloc and cudaHostAlloc wait for the device to go idle: a step that needs new memory pays for that.
        after = allocations()
        self.current.update({k: after[k] - before[k] for k in after if after[k] != before[k]})
        self.steps.append({k: round(v, 3) for k, v in self.current.items()})
        return outputs


def allocations() -> dict[str, int]:
    """Device segments and pinned host blocks the caching allocators have asked the driver for so far."""
    counts = {"device_segments_new": torch.cuda.memory_stats().get("segment.all.allocated", 0)}
    host_stats = getattr(torch.cuda, "host_memory_stats", None)
    if host_stats is not None:
        counts["host_allocs_new"] = host_stats().get("num_host_alloc", 0)
    return counts


def timed_burst(llm: LLM, prompts: list[list[int]], max_tokens: int = 16, steps_kept: int = 4) -> dict:
    """The prompts added at once and stepped to the end: TTFT from each request's arrival, and the host phases of the
    first steps (schedule, prepare, forward = kernel launches, launch = prepare + forward + sampling)."""
    e = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens)
    torch.cuda.synchronize()
    phases = HostPhases(e)
    for p in prompts:
        e.add_request(None, p, params)
    ttfts = []
    while e.has_unfinished_requests():
        ttfts += [o.metrics.first_token_time - o.metrics.arrival_time for o in phases.step(e) if o.finished]
    phases.remove()
    return {"ttft_p50_s": round(statistics.median(ttfts), 4), "ttft_max_s": round(max(ttfts), 4),
            "hit_rate": round(e.stats().prefix_cache_hit_rate, 4), "steps": len(phases.steps),
            "first_steps_host_ms": phases.steps[:steps_kept]}


def profile_generate(llm: LLM, prompts: list[list[int]], max_tokens: int = 16) -> dict:
    """One generate() under the torch profiler: its steps, TTFT p50, and where the GPU time went."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    e = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens)
    for p in prompts:
        e.add_request(None, p, params)
    torch.cuda.synchronize()
    steps, ttfts, t = 0, [], time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        while e.has_unfinished_requests():
            ttfts += [o.metrics.first_token_time - o.metrics.arrival_time for o in e.step() if o.finished]
            steps += 1
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    gpu_ms, top = top_kernels(prof, steps)
    return {"steps": steps, "ms_per_step_profiled": round(wall / steps * 1e3, 3), "gpu_kernel_ms_per_step":
            round(gpu_ms, 3), "ttft_p50_s": round(statistics.median(ttfts), 4), "top_kernels": top}


def start_decoding(e: LLMEngine, batch: int, context: int, max_tokens: int, rng: random.Random) -> None:
    """batch requests of context random tokens, past their prefill and five decode steps: a steady decode batch."""
    for _ in range(batch):
        e.add_request(None, rand_prompt(rng, context, e.model_config.vocab_size),
                      SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    while e.scheduler.waiting or e.pending or any(s.num_computed_tokens < s.num_prompt_tokens for s in e.scheduler.running):
        e.step()
    for _ in range(5):
        e.step()


def drain(e: LLMEngine) -> None:
    for request_id in list(e.seqs):
        e.abort_request(request_id)
    e.step()


def profile(shape: str, batch: int, context: int, async_scheduling: bool = False, steps: int = 30) -> dict:
    """Where a decode step's time goes: host time per step against GPU kernel time, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", max_num_seqs=max(batch, 8), max_model_len=4096,
                          kv_cache_fraction=0.9, async_scheduling=async_scheduling)
    e = llm.engine
    start_decoding(e, batch, context, 2 * steps + 40, random.Random(2))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        e.step()
    torch.cuda.synchronize()
    plain = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            e.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / steps
    gpu_total, top = top_kernels(prof, steps)
    result = {"shape": shape, "batch": batch, "context": context, "async_scheduling": async_scheduling,
              "ms_per_step": round(plain * 1e3, 3),
              "ms_per_step_profiled": round(wall * 1e3, 3),
              "gpu_kernel_ms_per_step": round(gpu_total, 3), "top_kernels": top}
    drain(e)
    del llm, e
    free()
    return result


def top_kernels(prof: object, steps: int, n: int = 24) -> tuple[float, list[dict]]:
    events = [ev for ev in prof.key_averages() if ev.device_type.name == "CUDA"]
    total = sum(ev.self_device_time_total for ev in events) / steps / 1e3
    top = sorted(events, key=lambda ev: ev.self_device_time_total, reverse=True)[:n]
    return total, [{"name": ev.key[:90], "ms_per_step": round(ev.self_device_time_total / steps / 1e3, 4),
                    "calls_per_step": round(ev.count / steps, 2)} for ev in top]


def profile_prefill(shape: str, peak: float, prompts: int = 64, length: int = 1024, chunk: int = 4096) -> dict:
    """A burst of prompts through chunked prefill: time per chunk, kernels, and the share of the GEMM peak."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    llm = LLM.from_config(shape, dtype="bfloat16", device="cuda", max_num_seqs=prompts, max_model_len=4096,
                          max_num_batched_tokens=chunk, kv_cache_fraction=0.9)
    e = llm.engine
    rng = random.Random(3)
    vocab = e.model_config.vocab_size
    llm.generate([rand_prompt(rng, length, vocab)], SamplingParams(temperature=0.0, max_tokens=1))
    for _ in range(prompts):
        e.add_request(None, rand_prompt(rng, length, vocab), SamplingParams(temperature=0.0, max_tokens=1))
    torch.cuda.synchronize()
    steps, t = 0, time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        while e.has_unfinished_requests():
            e.step()
            steps += 1
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    gpu_ms, top = top_kernels(prof, steps)
    c = e.model_config
    # The LM head runs on each prompt's last row only, so it is left out with the embedding.
    params = sum(p.numel() for n, p in e.runner.model.named_parameters() if "embed" not in n and "lm_head" not in n)
    attn = 4 * c.num_attention_heads * c.head_dim * c.num_hidden_layers * prompts * length * (length + 1) / 2
    flops = 2 * params * prompts * length + attn
    result = {"shape": shape, "prompts": prompts, "prompt_tokens": length, "chunk_tokens": chunk, "steps": steps,
              "ms_per_step_profiled": round(wall / steps * 1e3, 3), "gpu_kernel_ms_per_step": round(gpu_ms, 3),
              "tflops_per_s": round(flops / wall / 1e12, 1), "fraction_of_gemm_peak": round(flops / wall / peak, 3),
              "top_kernels": top}
    del llm, e
    free()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_bench.json")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen2.5-7b,qwen2.5-32b")
    ap.add_argument("--tests", default="decode,hf,throughput,prefix")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size for the decode test")
    ap.add_argument("--profile-cases", default="qwen3-0.6b:1:128,qwen3-0.6b:256:800,qwen2.5-7b:1:128",
                    help="decode steps to profile, as shape:batch:context[:async],...")
    ap.add_argument("--prefill-chunks", default="4096,8192", help="chunk sizes (tokens per step) for the prefill test")
    args = ap.parse_args()
    if os.environ.get("PAGEBENCH_HANG_DUMP_S"):
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["PAGEBENCH_HANG_DUMP_S"]), exit=False)
    shapes, tests = args.shapes.split(","), args.tests.split(",")
    props = torch.cuda.get_device_properties(0)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": props.name,
                 "gpu_memory_gb": round(props.total_memory / 1e9, 1), "torch": torch.__version__,
                 "triton": __import__("triton").__version__, "cuda": torch.version.cuda}
    bw = copy_bandwidth()
    res["copy_bandwidth_tb_s"] = round(bw / 1e12, 3)
    print(f"{props.name}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)

    for shape in shapes:
        if "decode" in tests:
            r = res.setdefault("decode_batch1", []); r.append(decode_batch1(shape, bw, tp=args.tp)); save()
            print(json.dumps(r[-1]), flush=True)
        if "hf" in tests:
            r = res.setdefault("hf_generate", []); r.append(hf_generate(shape)); save()
            print(json.dumps(r[-1]), flush=True)
    if "throughput" in tests:
        res["offline_throughput"] = offline_throughput("qwen3-0.6b"); save()
        print(json.dumps(res["offline_throughput"]), flush=True)
    if "profile" in tests:
        cases = [case.split(":") for case in args.profile_cases.split(",")]
        res["profile"] = [profile(s, int(b), int(c), rest == ["async"]) for s, b, c, *rest in cases]
        save()
        for p in res["profile"]:
            print(json.dumps(p, indent=1), flush=True)
    if "prefill" in tests:
        peak = gemm_peak()
        res["gemm_peak_tflops"] = round(peak / 1e12, 1)
        res["prefill"] = [profile_prefill(shape, peak, chunk=int(c)) for shape in shapes
                          for c in args.prefill_chunks.split(",")]
        save()
        for p in res["prefill"]:
            print(json.dumps(p, indent=1), flush=True)
    if "prefix" in tests:
        res["prefix_sharing"] = prefix_sharing("qwen3-0.6b"); save()
        print(json.dumps(res["prefix_sharing"]), flush=True)
    print("\nshape            engine tok/s  HF tok/s  ratio  floor-fraction")
    hf = {h["shape"]: h["tokens_per_s"] for h in res.get("hf_generate", [])}
    for d in res.get("decode_batch1", []):
        h = hf.get(d["shape"])
        print(f"{d['shape']:<16} {d['decode_tokens_per_s']:>12} {h or '-':>9} {d['decode_tokens_per_s'] / h if h else 0:>6.1f}"
              f"  {d['fraction_of_floor']:.2f}")
    save()


if __name__ == "__main__":
    main()
