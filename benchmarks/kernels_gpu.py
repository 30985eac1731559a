"""Check every Triton kernel at full model size against its reference, then time it against the bandwidth floor.

Runs on one CUDA GPU (about 2 to 3 minutes on an H100). Ceilings measured in the same run: device-to-device copy
bandwidth (bytes read + written) and a bf16 matrix product. Each row gives the median time (triton do_bench, L2
flushed before every run), the bytes the kernel must move over that time, and the eager torch / SDPA time where one
exists (for rope+store_kv: the rotary and store_kv launches it fuses; for qk_norm+rope+store_kv: the two q/k RMSNorm
launches and the rope+store_kv launch it fuses). Prints a short table, writes everything to --out as JSON.

The gemv section times the small-batch fused projections (engine.kernels.gemv) against today's launches inside
CUDA graphs, as a decode step runs them (see gemv_rows). The extend_gqa section times the per-head extend kernel
against the GQA-packed one on short queries over a cached prefix (see extend_gqa_rows).

    python benchmarks/kernels_gpu.py --out kernels.json [--no-sweep] [--only gemv extend_gqa ...]
"""
import argparse
import datetime
import functools
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from engine import attention as ref
from engine import kernels as K
from engine.kernels import decode_attention, extend_attention, gemv, norm, rotary_embedding, sampler

SHAPES = {  # q heads, kv heads, head dim, hidden, intermediate
    "qwen3-0.6b": (16, 8, 128, 1024, 3072),
    "qwen2.5-7b": (28, 4, 128, 3584, 18944),
    "qwen2.5-32b": (40, 8, 128, 5120, 27648),
}
DECODE_BATCHES, DECODE_CONTEXTS = (1, 8, 64), (1152, 2048)
EXTEND_NEW, EXTEND_CACHED = 1024, (0, 2000)
HELPER_TOKENS, VOCAB = (64, 1024), 151936
GEMV_TOKENS, GEMV_REPLAYS = (1, 2, 4, 8, 16), 30
DT = torch.bfloat16
DEV = torch.device("cuda")


def timed(fn) -> float:
    return do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e-3


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected.double()).norm() / expected.double().norm()).item()


def ceilings() -> dict:
    src = torch.randn(2**28, device=DEV)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src))
    a, b = torch.randn(8192, 8192, device=DEV, dtype=DT), torch.randn(8192, 8192, device=DEV, dtype=DT)
    mm_s = timed(lambda: a @ b)
    return {"copy_GBps": 2 * src.nbytes / copy_s / 1e9, "matmul_TFLOPs": 2 * 8192**3 / mm_s / 1e12}


def paged_pool(batch: int, seq_len: int, kv_heads: int, dim: int, block_size: int = 16):
    per_seq = math.ceil(seq_len / block_size)
    num_blocks = batch * per_seq + 7
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, device=DEV, dtype=DT)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device=DEV)[: batch * per_seq].view(batch, per_seq).int()
    return k_cache, v_cache, tables


def row(kernel: str, shape: str, case: str, seconds: float, nbytes: float, ceil: dict, err: float,
        baseline_s: float | None = None, flops: float | None = None, **extra) -> dict:
    out = {"kernel": kernel, "shape": shape, "case": case, "us": seconds * 1e6, "GBps": nbytes / seconds / 1e9,
           "pct_copy": 100 * nbytes / seconds / 1e9 / ceil["copy_GBps"], "rel_err": err,
           "baseline_us": None if baseline_s is None else baseline_s * 1e6, **extra}
    if flops:
        out["TFLOPs"] = flops / seconds / 1e12
        out["pct_matmul"] = 100 * out["TFLOPs"] / ceil["matmul_TFLOPs"]
    return out


def ragged_lens(batch: int, longest: int) -> torch.Tensor:
    lens = torch.randint(min(100, longest // 2), longest + 1, (batch,), generator=torch.Generator().manual_seed(batch))
    lens[0] = longest
    return lens.to(device=DEV, dtype=torch.int32)


def decode_case(shape: str, batch: int, ctx: int, ceil: dict, ragged: bool = False, kind: str = "decode",
                variants: tuple = ({},)) -> list[dict]:
    hq, hkv, d, _, _ = SHAPES[shape]
    k_cache, v_cache, tables = paged_pool(batch, ctx, hkv, d)
    lens = ragged_lens(batch, ctx) if ragged else torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
    q = torch.randn(batch, hq, d, device=DEV, dtype=DT)
    args = (q, k_cache, v_cache, tables, lens, d**-0.5)
    expected = ref.paged_decode(*args)
    sdpa = None
    if not ragged:
        k = k_cache[tables.long()].reshape(batch, -1, hkv, d)[:, :ctx].transpose(1, 2).contiguous()
        v = v_cache[tables.long()].reshape(batch, -1, hkv, d)[:, :ctx].transpose(1, 2).contiguous()
        sdpa = timed(lambda: F.scaled_dot_product_attention(q.unsqueeze(2), k, v, scale=d**-0.5, enable_gqa=True))
    nbytes = 2 * int(lens.sum()) * hkv * d * 2 + 2 * q.nbytes + tables.nbytes
    case = f"B={batch} ctx={'U[100,' if ragged else ''}{ctx}{']' if ragged else ''}"
    rows = []
    for kw in variants:
        config = kw.get("config") or decode_attention.decode_config(d)
        splits = kw.get("num_splits") or decode_attention.choose_num_splits(batch, hkv, tables.size(1) * 16, DEV,
                                                                            config["BLOCK_N"])
        err = rel_err(K.paged_decode(*args, **kw), expected)
        seconds = timed(lambda: K.paged_decode(*args, **kw))
        rows.append(row(kind, shape, case, seconds, nbytes, ceil, err, sdpa, splits=splits, config=config))
    return rows


def decode_rows(ceil: dict) -> list[dict]:
    rows = []
    for shape in SHAPES:
        for batch in DECODE_BATCHES:
            for ctx in DECODE_CONTEXTS:
                rows += decode_case(shape, batch, ctx, ceil)
        rows += decode_case(shape, DECODE_BATCHES[-1], DECODE_CONTEXTS[-1], ceil, ragged=True)
    return rows


def extend_rows(ceil: dict, configs: tuple = (None,), shapes: list[str] | None = None) -> list[dict]:
    rows = []
    for shape in shapes or list(SHAPES):
        hq, hkv, d, _, _ = SHAPES[shape]
        for cached in EXTEND_CACHED:
            total, new = cached + EXTEND_NEW, EXTEND_NEW
            k_cache, v_cache, tables = paged_pool(1, total, hkv, d)
            q = torch.randn(new, hq, d, device=DEV, dtype=DT)
            starts = torch.tensor([0, new], dtype=torch.int32, device=DEV)
            lens = torch.tensor([total], dtype=torch.int32, device=DEV)
            args = (q, k_cache, v_cache, tables, starts, lens, new, d**-0.5)
            expected = ref.paged_extend(*args)
            baseline = None
            if cached == 0:
                k = k_cache[tables[0].long()].reshape(-1, hkv, d)[:total].transpose(0, 1).unsqueeze(0).contiguous()
                v = v_cache[tables[0].long()].reshape(-1, hkv, d)[:total].transpose(0, 1).unsqueeze(0).contiguous()
                qt = q.transpose(0, 1).unsqueeze(0).contiguous()
                baseline = timed(lambda: F.scaled_dot_product_attention(qt, k, v, is_causal=True, scale=d**-0.5,
                                                                        enable_gqa=True))
            flops = 4 * d * hq * (new * cached + new * (new + 1) / 2)
            nbytes = 2 * total * hkv * d * 2 + 2 * q.nbytes
            for cfg in configs:
                err = rel_err(K.paged_extend(*args, config=cfg), expected)
                seconds = timed(lambda: K.paged_extend(*args, config=cfg))
                cfg_used = {**extend_attention.extend_config(d, new), **(cfg or {})}
                rows.append(row("extend", shape, f"new={new} cached={cached}", seconds, nbytes, ceil, err, baseline,
                                flops, config=cfg_used))
    return rows


# (shape, sequences, new tokens each, cached tokens each): a mixed step's extends behind a shared 2,000-token
# prefix, Qwen2.5-7B's group of 7 on short chunks, and one fresh prompt that paged_extend keeps on the per-head kernel.
EXTEND_GQA_CASES = (("qwen3-0.6b", 63, 32, 2000), ("qwen2.5-7b", 64, 16, 1024), ("qwen3-0.6b", 1, 2032, 0))


def extend_gqa_rows(ceil: dict) -> list[dict]:
    """The per-head extend kernel (baseline column) against the GQA-packed one (us column), each launched directly,
    whatever paged_extend would pick (dispatch column). rel_err: each kernel against the PyTorch reference, the
    packed row the larger of that and its difference from the per-head kernel's output."""
    rows = []
    for shape, batch, new, cached in EXTEND_GQA_CASES:
        hq, hkv, d, _, _ = SHAPES[shape]
        total = cached + new
        k_cache, v_cache, tables = paged_pool(batch, total, hkv, d)
        q = torch.randn(batch * new, hq, d, device=DEV, dtype=DT)
        starts = torch.arange(batch + 1, device=DEV, dtype=torch.int32) * new
        lens = torch.full((batch,), total, dtype=torch.int32, device=DEV)
        args = (q, k_cache, v_cache, tables, starts, lens, new, d**-0.5)
        expected = ref.paged_extend(*args)
        outs = {packed: torch.empty_like(q) for packed in (False, True)}
        launches = {packed: functools.partial(extend_attention.launch_extend, q, k_cache, v_cache, outs[packed],
                                              tables, starts, lens, new, d**-0.5, packed) for packed in outs}
        for launch in launches.values():
            launch()
        per_head_s, packed_s = timed(launches[False]), timed(launches[True])
        dispatch = "packed" if extend_attention.packs_gqa(hq // hkv, new) else "per-head"
        flops = 4 * d * hq * batch * (new * cached + new * (new + 1) / 2)
        nbytes = batch * 2 * total * hkv * d * 2 + 2 * q.nbytes
        case = f"{batch}x new={new} cached={cached}"
        rows.append(row("extend per-head", shape, case, per_head_s, nbytes, ceil, rel_err(outs[False], expected),
                        flops=flops, dispatch=dispatch))
        err = max(rel_err(outs[True], expected), rel_err(outs[True], outs[False]))
        rows.append(row("extend packed", shape, case, packed_s, nbytes, ceil, err, per_head_s, flops,
                        ratio=per_head_s / packed_s, dispatch=dispatch))
    return rows


def helper_rows(ceil: dict) -> list[dict]:
    rows = []
    for shape, (hq, hkv, d, hidden, inter) in SHAPES.items():
        for tokens in HELPER_TOKENS:
            case = f"T={tokens}"
            qkv = torch.randn(tokens, hq + 2 * hkv, d, device=DEV, dtype=DT)
            q, k, v = qkv[:, :hq], qkv[:, hq:hq + hkv], qkv[:, hq + hkv:]
            k_cache, v_cache, _ = paged_pool(1, 4 * tokens, hkv, d)
            slots = torch.randperm(k_cache.size(0) * 16, device=DEV)[:tokens]
            want = [c.clone() for c in (k_cache, v_cache)]
            ref.store_kv(k, v, *want, slots)
            K.store_kv(k, v, k_cache, v_cache, slots)
            err = max(rel_err(k_cache, want[0]), rel_err(v_cache, want[1]))
            rows.append(row("store_kv", shape, case, timed(lambda: K.store_kv(k, v, k_cache, v_cache, slots)),
                            4 * tokens * hkv * d * 2, ceil, err,
                            timed(lambda: ref.store_kv(k, v, k_cache, v_cache, slots))))

            x, res = torch.randn(tokens, hidden, device=DEV, dtype=DT), torch.randn(tokens, hidden, device=DEV,
                                                                                     dtype=DT)
            w = torch.randn(hidden, device=DEV, dtype=DT)
            got, want = K.rms_norm(x, w, 1e-6, res), norm._rms_norm_torch(x, w, 1e-6, res)
            rows.append(row("rms_norm+add", shape, case, timed(lambda: K.rms_norm(x, w, 1e-6, res)),
                            4 * x.nbytes + w.nbytes, ceil, max(rel_err(got[0], want[0]), rel_err(got[1], want[1])),
                            timed(lambda: norm._rms_norm_torch(x, w, 1e-6, res))))

            positions = torch.randint(0, 32768, (tokens,), device=DEV)
            cache = torch.randn(32768, d, device=DEV)
            got = K.rotary(positions, q, k, cache)
            want = [rotary_embedding._rotary_torch(positions, t, cache) for t in (q, k)]
            torch_rotary = lambda: [rotary_embedding._rotary_torch(positions, t, cache) for t in (q, k)]  # noqa: E731
            rows.append(row("rotary", shape, case, timed(lambda: K.rotary(positions, q, k, cache)),
                            2 * tokens * (hq + hkv) * d * 2 + tokens * d * 4, ceil,
                            max(rel_err(got[0], want[0]), rel_err(got[1], want[1])), timed(torch_rotary)))

            gate_up = torch.randn(tokens, 2 * inter, device=DEV, dtype=DT)
            torch_silu = lambda: F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # noqa: E731
            rows.append(row("silu_and_mul", shape, case, timed(lambda: K.silu_and_mul(gate_up)),
                            1.5 * gate_up.nbytes, ceil, rel_err(K.silu_and_mul(gate_up), torch_silu()),
                            timed(torch_silu)))
    vocab = VOCAB
    for batch in (1, 64):
        logits = torch.randn(batch, vocab, device=DEV)
        temps = torch.full((batch,), 0.7, device=DEV)
        top_ks = torch.full((batch,), 50, device=DEV)
        top_ps = torch.full((batch,), 0.9, device=DEV)
        greedy_ok = torch.equal(K.sample(logits, temps * 0, top_ks, top_ps, all_greedy=True), logits.argmax(-1))
        drawn = K.sample(logits, temps, top_ks, top_ps)
        in_top_k = bool((logits.topk(50, -1).indices == drawn[:, None]).any(-1).all())
        failed = 0.0 if greedy_ok and in_top_k else 1.0  # reported in the rel_err column: 1 fails the check

        def torch_sampler(greedy: bool, filtered: bool) -> torch.Tensor:
            thresholds = sampler.keep_thresholds(logits, temps, top_ks, top_ps) if filtered else None
            return sampler._sample_torch(logits, temps, thresholds, None, greedy)

        for mode, kwargs in (("greedy", {"all_greedy": True}), ("random", {"filtered": False}),
                             ("top-k+top-p", {})):
            seconds = timed(lambda: K.sample(logits, temps, top_ks, top_ps, **kwargs))
            base = timed(lambda: torch_sampler(mode == "greedy", mode == "top-k+top-p"))
            rows.append(row("sample", f"V={vocab}", f"B={batch} {mode}", seconds, logits.nbytes, ceil, failed,
                            base))
    return rows


def rotary_store_kv_rows(ceil: dict, qk_norm: bool = False) -> list[dict]:
    """The fused rotary + cache store against the launches it replaces (baseline column): rotary then store_kv, or
    with qk_norm (Qwen3's per-head q/k RMSNorm folded in) rms_norm(q), rms_norm(k) then the unnormed fused launch,
    the path before the fold. T=1 is batch-1 decode.

    The check is exact: q and both caches must equal the unfused path's bit for bit (rel_err column: 0 equal, 1 not).
    """
    rows = []
    for shape, (hq, hkv, d, _, _) in SHAPES.items():
        for tokens in (1, *HELPER_TOKENS):
            qkv = torch.randn(tokens, hq + 2 * hkv, d, device=DEV, dtype=DT)
            q, k, v = qkv[:, :hq], qkv[:, hq:hq + hkv], qkv[:, hq + hkv:]
            k_cache, v_cache, _ = paged_pool(1, 4 * tokens, hkv, d)
            slots = torch.randperm(k_cache.size(0) * 16, device=DEV)[:tokens]
            positions = torch.randint(0, 32768, (tokens,), device=DEV)
            cos_sin = torch.randn(32768, d, device=DEV)
            norms = {"q_norm_weight": torch.randn(d, device=DEV, dtype=DT),
                     "k_norm_weight": torch.randn(d, device=DEV, dtype=DT), "eps": 1e-6} if qk_norm else {}

            def unfused(caches: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                if qk_norm:
                    q_normed = K.rms_norm(q, norms["q_norm_weight"], norms["eps"])
                    k_normed = K.rms_norm(k, norms["k_norm_weight"], norms["eps"])
                    return K.rotary_store_kv(positions, q_normed, k_normed, v, *caches, slots, cos_sin)
                q_out, k_out = K.rotary(positions, q, k, cos_sin)
                K.store_kv(k_out, v, *caches, slots)
                return q_out

            want_caches = k_cache.clone(), v_cache.clone()
            want_q = unfused(want_caches)
            got_q = K.rotary_store_kv(positions, q, k, v, k_cache, v_cache, slots, cos_sin, **norms)
            identical = torch.equal(got_q, want_q) and torch.equal(k_cache, want_caches[0]) and torch.equal(
                v_cache, want_caches[1])
            seconds = timed(lambda: K.rotary_store_kv(positions, q, k, v, k_cache, v_cache, slots, cos_sin, **norms))
            nbytes = 2 * tokens * (hq + 2 * hkv) * d * 2 + tokens * d * 4 + (2 * d * 2 if qk_norm else 0)
            rows.append(row("qk_norm+rope+store_kv" if qk_norm else "rope+store_kv", shape, f"T={tokens}", seconds,
                            nbytes, ceil, 0.0 if identical else 1.0, timed(lambda: unfused(want_caches))))
    return rows


def graph_seconds(step, calls: int) -> float:
    """Seconds per call of step(i), i < calls, captured once in a CUDA graph and replayed (median of GEMV_REPLAYS):
    the gaps between launches count, as in a decode step's graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiles, cuBLAS workspaces
        for i in range(calls):
            step(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            step(i)
    graph.replay()
    times = []
    for _ in range(GEMV_REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls)
    return statistics.median(times)


def gemv_rows(ceil: dict) -> list[dict]:
    """Each projection of a decoder layer at M = 1..16 tokens: today's launches (rms_norm(+residual) then F.linear for
    QKV and gate/up, F.linear for o_proj, silu_and_mul then F.linear for down_proj; baseline column) against the fused
    kernel (us column). Calls cycle through copies of the weight worth twice the L2, so weights stream from HBM as in
    a real step; GB/s counts weight bytes only. rel_err: max |fused - today's| / max |today's| (and 1 if the fused
    residual differs from rms_norm's by a bit); policy: whether fused_gemv_enabled picks the fused kernel by default."""
    l2 = torch.cuda.get_device_properties(DEV).L2_cache_size
    eps, rows = 1e-6, []
    for shape, (hq, hkv, d, hidden, inter) in SHAPES.items():
        projections = {"qkv": ((hq + 2 * hkv) * d, hidden), "o": (hidden, hq * d), "gate_up": (2 * inter, hidden),
                       "down": (hidden, inter)}
        for op, (n, k) in projections.items():
            nbytes = n * k * DT.itemsize
            copies = max(1, math.ceil(2 * l2 / nbytes))
            weights = [torch.randn(n, k, device=DEV, dtype=DT) / k**0.5 for _ in range(copies)]
            bias = torch.randn(n, device=DEV, dtype=DT) if op == "qkv" and shape != "qwen3-0.6b" else None
            norm_w = 1 + torch.randn(k, device=DEV, dtype=DT) / 4
            calls = max(8, len(weights))
            for m in GEMV_TOKENS:
                x = torch.randn(m, 2 * k if op == "down" else k, device=DEV, dtype=DT)
                res = torch.randn(m, k, device=DEV, dtype=DT)
                if op in ("qkv", "gate_up"):
                    def today(w):
                        h, new_res = K.rms_norm(x, norm_w, eps, res)
                        return F.linear(h, w, bias), new_res

                    def fused(w):
                        return gemv.norm_gemv(x, res, norm_w, eps, w, bias)
                elif op == "o":
                    today, fused = (lambda w: (F.linear(x, w), None)), (lambda w: (gemv.gemv(x, w), None))
                else:
                    today = lambda w: (F.linear(K.silu_and_mul(x), w), None)  # noqa: E731
                    fused = lambda w: (gemv.silu_mul_gemv(x, w), None)  # noqa: E731
                (want, want_res), (got, got_res) = today(weights[0]), fused(weights[0])
                err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
                if want_res is not None and not torch.equal(got_res, want_res):
                    err = 1.0
                base_s = graph_seconds(lambda i: today(weights[i % len(weights)]), calls)
                fused_s = graph_seconds(lambda i: fused(weights[i % len(weights)]), calls)
                rows.append(row(f"gemv {op}", shape, f"M={m} N={n} K={k}", fused_s, nbytes, ceil, err, base_s,
                                ratio=base_s / fused_s, baseline_GBps=nbytes / base_s / 1e9,
                                policy=gemv.fused_gemv_enabled(m, n, k, DT, {"qkv": "norm", "gate_up": "norm",
                                                                             "down": "silu_mul"}.get(op, "plain")),
                                config=gemv.gemv_config(n, k, DT.itemsize, gemv.num_sms(DEV))))
            del weights
    return rows


def decode_sweep(ceil: dict) -> list[dict]:
    configs = [{"BLOCK_N": n, "num_warps": w, "num_stages": s} for n in (32, 64, 128) for s in (2, 3, 4)
               for w in ((4, 8) if n == 128 else (4,))]
    rows = []
    for batch, ragged in [(b, False) for b in DECODE_BATCHES] + [(DECODE_BATCHES[-1], True)]:
        hkv = SHAPES["qwen2.5-7b"][1]
        default = decode_attention.choose_num_splits(batch, hkv, DECODE_CONTEXTS[-1], DEV, 64)
        splits = sorted({1, 2, 4, 8, 16, 32, default // 2, default * 2} - {0, default})
        variants = [{"config": c} for c in configs] + [{"num_splits": s} for s in splits]
        rows += decode_case("qwen2.5-7b", batch, DECODE_CONTEXTS[-1], ceil, ragged, "decode-sweep", variants)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'kernel':21s} {'shape':12s} {'case':24s} {'us':>9s} {'GB/s':>7s} {'%copy':>6s} {'TF/s':>6s} "
          f"{'base us':>9s} {'rel err':>8s}")
    for r in rows:
        tf = f"{r['TFLOPs']:6.0f}" if "TFLOPs" in r else " " * 6
        base = f"{r['baseline_us']:9.1f}" if r["baseline_us"] is not None else " " * 9
        extra = f" splits={r['splits']}" if "splits" in r else ""
        if "policy" in r:
            default = "fused" if r["policy"] else "cuBLAS"
            extra += f" speedup {r['ratio']:.2f}x base {r['baseline_GBps']:.0f} GB/s default={default}"
        if "dispatch" in r:
            extra += (f" speedup {r['ratio']:.2f}x" if "ratio" in r else "") + f" dispatch={r['dispatch']}"
        if r.get("config"):
            extra += " " + ",".join(f"{k}={v}" for k, v in r["config"].items())
        print(f"{r['kernel']:21s} {r['shape']:12s} {r['case']:24s} {r['us']:9.1f} {r['GBps']:7.0f} "
              f"{r['pct_copy']:6.1f} {tf} {base} {r['rel_err']:8.1e}{extra}")


def fastest(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kernel"], r["shape"], r["case"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    return list(best.values())


SECTIONS = {
    "decode": decode_rows,
    "extend": extend_rows,
    "extend_gqa": extend_gqa_rows,
    "helpers": helper_rows,
    "rope": lambda ceil: rotary_store_kv_rows(ceil) + rotary_store_kv_rows(ceil, qk_norm=True),
    "gemv": gemv_rows,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kernels.json", help="JSON results path (default kernels.json)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the decode/extend config sweeps")
    parser.add_argument("--only", nargs="+", choices=[*SECTIONS, "sweep"], metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}, sweep); default all")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_gpu.py needs a CUDA GPU")
    started = time.time()
    torch.manual_seed(0)
    ceil = ceilings()
    print(f"{torch.cuda.get_device_name()}: copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul "
          f"{ceil['matmul_TFLOPs']:.0f} TFLOP/s", flush=True)
    rows = [r for name, section in SECTIONS.items() if not args.only or name in args.only for r in section(ceil)]
    sweep = []
    if not args.no_sweep and (not args.only or "sweep" in args.only):
        sweep = decode_sweep(ceil) + extend_rows(ceil, (
            {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
            {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
            {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 4},
            {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}), shapes=["qwen2.5-7b"])
    bad = [r for r in rows + sweep if not r["rel_err"] <= 1e-2]
    report = {"device": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count,
              "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **ceil,
              "results": rows, "sweep": sweep, "failed_checks": len(bad), "wall_s": time.time() - started}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print_table(rows)
    if sweep:
        print("sweep: fastest variant per case (all variants in the JSON)")
        print_table(fastest(sweep))
    print(f"copy {ceil['copy_GBps']:.0f} GB/s, matmul {ceil['matmul_TFLOPs']:.0f} TFLOP/s, "
          f"{len(bad)} failed checks, {report['wall_s']:.0f} s")
    if bad:
        raise SystemExit(f"{len(bad)} kernels disagree with their reference (rel err > 1e-2)")


if __name__ == "__main__":
    main()
