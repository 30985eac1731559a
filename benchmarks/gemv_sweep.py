"""One-token projections on one GPU: today's launches (cuBLAS, with the RMSNorm or SiLU*mul launch before it) against
engine.kernels.row_gemv over a grid of tile, split and pipeline settings, for every projection of Qwen3-0.6B and
Qwen2.5-7B (QKV and gate/up with RMSNorm and the residual add, o_proj plain, down_proj after SiLU*mul, the LM head).

Inside CUDA graphs, as a decode step runs them; the calls cycle through copies of the weight worth twice the L2, so
weights stream from HBM. The configurations compile first in worker processes (Triton's disk cache), then one process
times them one after another. Prints JSON: ceilings measured in the same run (copy and read bandwidth), and for each
projection today's time, plain cuBLAS's, and the fastest configurations with their error against a float64
reference.

    python benchmarks/gemv_sweep.py --out gemv_sweep.json [--shapes qwen2.5-7b] [--ops down] [--wide] [--workers 12]
"""
import argparse
import datetime
import itertools
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import kernels as K
from engine.kernels import row_gemv as R
from kernels_gpu import graph_seconds  # benchmarks/, this script's folder, is first on sys.path

SHAPES = {  # q heads, kv heads, head dim, hidden, intermediate, qkv bias
    "qwen3-0.6b": (16, 8, 128, 1024, 3072, False),
    "qwen2.5-7b": (28, 4, 128, 3584, 18944, True),
}
VOCAB, EPS = 151936, 1e-6
DT = torch.bfloat16
TILES = [(4, 256), (4, 512), (4, 1024), (8, 128), (8, 256), (8, 512), (8, 1024), (16, 128), (16, 256), (16, 512),
         (16, 1024), (32, 128), (32, 256), (32, 512)]


def projections(shape: str) -> dict[str, tuple[int, int, int, bool]]:
    hq, hkv, d, hidden, inter, qkv_bias = SHAPES[shape]
    return {"qkv": ((hq + 2 * hkv) * d, hidden, R.NORM, qkv_bias), "o": (hidden, hq * d, R.PLAIN, False),
            "gate_up": (2 * inter, hidden, R.NORM, False), "down": (hidden, inter, R.SILU_MUL, False),
            "lm_head": (VOCAB, hidden, R.PLAIN, False)}


WIDE_TILES = [(bn, bk) for bn in (2, 4, 8, 16, 32, 64) for bk in (128, 256, 512, 1024, 2048)]


def configs(n: int, k: int, prologue: int, sms: int, wide: bool = False) -> list[dict]:
    """The grid timed for one projection; wide: more tiles, warps, stages and uneven splits (slower to sweep)."""
    out = []
    grid = itertools.product(WIDE_TILES, (2, 4, 8), (1, 2)) if wide else itertools.product(TILES, (4, 8), (2, 4))
    for (block_n, block_k), warps, stages in grid:
        per_thread = block_n * block_k // (32 * warps)
        if not 8 <= per_thread <= 128 or block_k > k:
            continue
        for split in (1, 2, 3, 4, 6, 8) if wide else (1, 2, 4, 8):
            programs = math.ceil(n / block_n) * split
            if split > 1 and (prologue == R.NORM or n > R.MAX_SPLIT_N or k // split < block_k
                              or math.ceil(n / block_n) >= 8 * sms):
                continue
            if programs < sms // 2:
                continue
            out.append({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split, "num_warps": warps,
                        "num_stages": stages})
    return out


def inputs(n: int, k: int, prologue: int, bias: bool, dev: torch.device, copies: int = 1) -> dict:
    gen = torch.Generator(device=dev).manual_seed(n * 7 + k)
    return {"weights": [torch.randn(n, k, device=dev, dtype=DT, generator=gen) / k**0.5 for _ in range(copies)],
            "x": torch.randn(1, 2 * k if prologue == R.SILU_MUL else k, device=dev, dtype=DT, generator=gen),
            "residual": torch.randn(1, k, device=dev, dtype=DT, generator=gen) if prologue == R.NORM else None,
            "norm_weight": 1 + torch.randn(k, device=dev, dtype=DT, generator=gen) / 4 if prologue == R.NORM else None,
            "bias": torch.randn(n, device=dev, dtype=DT, generator=gen) if bias else None}


def fused(prologue: int, t: dict, w: torch.Tensor, cfg: dict):
    return R.row_gemv(prologue, t["x"], w, t["bias"], t["residual"], t["norm_weight"], EPS, cfg)


def today(prologue: int, t: dict, w: torch.Tensor):
    if prologue == R.NORM:
        h, new_res = K.rms_norm(t["x"], t["norm_weight"], EPS, t["residual"])
        return F.linear(h, w, t["bias"]), new_res
    if prologue == R.SILU_MUL:
        return F.linear(K.silu_and_mul(t["x"]), w), None
    return F.linear(t["x"], w, t["bias"]), None


def reference(prologue: int, t: dict, w: torch.Tensor) -> torch.Tensor:
    x = t["x"].double()
    if prologue == R.NORM:
        x = x + t["residual"].double()
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * t["norm_weight"].double()
    elif prologue == R.SILU_MUL:
        gate, up = x.chunk(2, -1)
        x = F.silu(gate) * up
    y = x @ w.double().T
    return y if t["bias"] is None else y + t["bias"].double()


def jobs(shapes: list[str], ops: list[str], sms: int, wide: bool) -> list[tuple[str, str, dict]]:
    return [(shape, op, cfg) for shape in shapes for op, (n, k, pro, _) in projections(shape).items() if op in ops
            for cfg in configs(n, k, pro, sms, wide)]


def compile_worker(args: tuple[list[tuple[str, str, dict]], int]) -> int:
    """Runs each configuration once, so that Triton's disk cache holds its binary for the timing process."""
    chunk, _ = args
    dev, failures, made = torch.device("cuda"), 0, {}
    for shape, op, cfg in chunk:
        n, k, pro, bias = projections(shape)[op]
        key = (n, k, pro, bias)
        if key not in made:
            made.clear()
            made[key] = inputs(n, k, pro, bias, dev)
        t = made[key]
        try:
            fused(pro, t, t["weights"][0], cfg)
        except Exception:  # noqa: BLE001 - timed later, reported there
            failures += 1
    torch.cuda.synchronize()
    return failures


def ceilings(dev: torch.device) -> dict:
    src = torch.randn(2**28, device=dev)
    dst = torch.empty_like(src)
    big = torch.randn(2**30, device=dev, dtype=DT)
    copy_s = graph_seconds(lambda i: dst.copy_(src), 4)
    read_s = graph_seconds(lambda i: torch.sum(big, dtype=torch.float32), 4)
    return {"copy_GBps": 2 * src.nbytes / copy_s / 1e9, "read_GBps": big.nbytes / read_s / 1e9}


def measure(shape: str, op: str, dev: torch.device, l2: int, sms: int, top: int, deadline: float,
            wide: bool = False) -> dict:
    """Today's launches, plain cuBLAS and every configuration (until the deadline) for one projection."""
    n, k, pro, bias = projections(shape)[op]
    nbytes = n * k * DT.itemsize
    copies = max(1, math.ceil(2 * l2 / nbytes))
    t = inputs(n, k, pro, bias, dev, copies)
    calls = max(8, copies)
    ws = t["weights"]
    want = reference(pro, t, ws[0])
    scale = want.abs().max().item()
    today_s = graph_seconds(lambda i: today(pro, t, ws[i % copies]), calls)
    linear_s = graph_seconds(lambda i: F.linear(t["x"][:, :k], ws[i % copies]), calls)
    today_err = (today(pro, t, ws[0])[0].double() - want).abs().max().item() / scale
    rows = []
    for cfg in configs(n, k, pro, sms, wide):
        if time.perf_counter() > deadline:
            break
        try:
            got = fused(pro, t, ws[0], cfg)[0]
            err = (got.double() - want).abs().max().item() / scale
            sec = graph_seconds(lambda i, cfg=cfg: fused(pro, t, ws[i % copies], cfg), calls)
        except Exception as exc:  # noqa: BLE001 - one configuration's failure is recorded, the sweep goes on
            rows.append({"config": cfg, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        rows.append({"config": cfg, "us": sec * 1e6, "GBps": nbytes / sec / 1e9, "err": err})
    timed = sorted((r for r in rows if "us" in r), key=lambda r: r["us"])
    return {"shape": shape, "op": op, "N": n, "K": k, "prologue": R.PROLOGUES[pro], "bias": bias,
            "weight_MB": nbytes / 1e6, "today_us": today_s * 1e6, "today_GBps": nbytes / today_s / 1e9,
            "linear_us": linear_s * 1e6, "linear_GBps": nbytes / linear_s / 1e9, "today_err": today_err,
            "timed": len(timed), "failed": [r for r in rows if "error" in r][:3], "best": timed[:top],
            "by_split": {s: min((r for r in timed if r["config"]["SPLIT_K"] == s), key=lambda r: r["us"],
                                default=None) for s in (1, 2, 3, 4, 6, 8)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ops", default="qkv,o,gate_up,down,lm_head")
    ap.add_argument("--wide", action="store_true", help="a wider grid (see configs)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--budget-s", type=float, default=240, help="stop timing new configurations after this long")
    args = ap.parse_args()
    dev = torch.device("cuda")
    shapes = args.shapes.split(",")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    ops = args.ops.split(",")
    all_jobs = jobs(shapes, ops, sms, args.wide)
    t0 = time.perf_counter()
    by_binary: dict[tuple, tuple[str, str, dict]] = {}
    for shape, op, cfg in all_jobs:  # one job per binary: N, K and the split width are runtime arguments
        _, _, pro, bias = projections(shape)[op]
        by_binary.setdefault((pro, bias, tuple(sorted(cfg.items()))), (shape, op, cfg))
    distinct = list(by_binary.values())
    chunks = [distinct[i::args.workers] for i in range(args.workers)]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        compile_failures = sum(pool.map(compile_worker, [(c, i) for i, c in enumerate(chunks)]))
    compile_s = time.perf_counter() - t0
    print(f"compiled {len(distinct)} binaries for {len(all_jobs)} timings in {compile_s:.0f} s "
          f"({compile_failures} failed)", file=sys.stderr, flush=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(dev),
              "torch": torch.__version__, "sms": sms, "l2_bytes": l2, "compile_s": compile_s, "configs": len(all_jobs),
              "ceilings": ceilings(dev), "projections": []}
    deadline = time.perf_counter() + args.budget_s
    for shape in shapes:
        for op in (op for op in projections(shape) if op in ops):
            entry = measure(shape, op, dev, l2, sms, args.top, deadline, args.wide)
            result["projections"].append(entry)
            b = entry["best"][0] if entry["best"] else {"us": float("nan"), "config": None, "err": float("nan")}
            print(f"{shape:11} {op:8} today {entry['today_us']:7.1f} us  linear {entry['linear_us']:7.1f}  best "
                  f"{b['us']:7.1f} ({entry['weight_MB'] * 1e3 / b['us']:5.0f} GB/s, err {b['err']:.1e}) {b['config']}",
                  flush=True)
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ceilings"]))


if __name__ == "__main__":
    main()
