"""One-token projections (a decode step at batch 1) as weight streams: each program multiplies BLOCK_N weight rows by
the token's activation over one K range on the CUDA cores, so no tensor-core tile pads the one row to sixteen and the
grid is as wide as HBM needs. The prologue is fused in: RMSNorm with the residual add (its 1/rms applied to the
finished dot products, so one pass over K), or SiLU*mul. Where N alone gives too few programs, K is split; each
split writes its partial sums and the last program of an output block (an arrival counter) adds them in split
order, so results do not depend on scheduling and no second launch is needed."""
import functools
import json
import os

import torch
import triton
import triton.language as tl

from engine.kernels.common import INTERPRET, env_switch, num_sms, pdl_args, pdl_wait

PLAIN, NORM, SILU_MUL = 0, 1, 2
PROLOGUES = ("plain", "norm", "silu_mul")
MAX_SPLIT_K = 8
MAX_SPLIT_N = 1 << 16  # outputs of a split launch; the workspace holds MAX_SPLIT_K partial rows of this many


@triton.jit
def _row_tile(acc, sum_sq, w, x_ptr, r_ptr, nw_ptr, new_r_ptr, offs_k, k_mask, K, pid_n, dtype: tl.constexpr,
              PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    a = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    if PROLOGUE == 1:  # NORM
        if HAS_RESIDUAL:
            a = (a + tl.load(r_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)).to(dtype)
            if pid_n == 0:
                tl.store(new_r_ptr + offs_k, a, mask=k_mask)
            a = a.to(tl.float32)
        sum_sq += a * a
        a = a * tl.load(nw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    elif PROLOGUE == 2:  # SILU_MUL: x is [gate | up]
        up = tl.load(x_ptr + K + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        a = ((a / (1.0 + tl.exp(-a))).to(dtype).to(tl.float32) * up).to(dtype).to(tl.float32)
    acc += w.to(tl.float32) * a[None, :]
    return acc, sum_sq


@triton.jit
def _row_gemv_kernel(x_ptr, r_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, new_r_ptr, part_ptr, count_ptr, eps, N, K, K_SPLIT,
                     SPLIT_K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    dtype = y_ptr.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    sum_sq = tl.zeros([BLOCK_K], tl.float32)
    k_begin = pid_k * K_SPLIT
    k_end = tl.minimum(k_begin + K_SPLIT, K)
    # The first weight tile is loaded before waiting on the previous kernel: the weights are no kernel's output.
    offs_k = k_begin + tl.arange(0, BLOCK_K)
    k_mask = offs_k < k_end
    w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
    pdl_wait(PDL)
    acc, sum_sq = _row_tile(acc, sum_sq, w, x_ptr, r_ptr, nw_ptr, new_r_ptr, offs_k, k_mask, K, pid_n, dtype,
                            PROLOGUE, HAS_RESIDUAL)
    for k0 in range(k_begin + BLOCK_K, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc, sum_sq = _row_tile(acc, sum_sq, w, x_ptr, r_ptr, nw_ptr, new_r_ptr, offs_k, k_mask, K, pid_n, dtype,
                                PROLOGUE, HAS_RESIDUAL)
    y = tl.sum(acc, 1)
    if PROLOGUE == 1:  # NORM runs unsplit: this program saw the whole row
        y = y / tl.sqrt(tl.sum(sum_sq, 0) / K + eps)
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(dtype), mask=n_mask)
    else:
        tl.store(part_ptr + pid_k * N + offs_n, y, mask=n_mask)
        tl.debug_barrier()  # every thread's partial is written before the arrival is counted
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(part_ptr + s * N + offs_n, mask=n_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + offs_n, total.to(dtype), mask=n_mask)
            tl.store(count_ptr + pid_n, 0)  # ready for the next launch on this stream


_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial sums and arrival counters for split launches, made once per device (before any CUDA graph capture:
    the first decode step runs eagerly) and left zeroed by every launch that uses them. Launches on one stream
    only: two split launches running at once would share the counters."""
    if device not in _workspaces:
        _workspaces[device] = (torch.empty(MAX_SPLIT_K * MAX_SPLIT_N, dtype=torch.float32, device=device),
                               torch.zeros(MAX_SPLIT_N, dtype=torch.int32, device=device))
    return _workspaces[device]


def default_config(n: int, k: int, prologue: int, sms: int) -> dict:
    """Placeholder until the H200 sweep (benchmarks/gemv_sweep.py) decides: 16 rows a program, K split until there
    are four programs an SM (never under NORM, whose 1/rms needs the whole row)."""
    block_n, block_k = 16, 512
    split = 1
    while (prologue != NORM and split < MAX_SPLIT_K and triton.cdiv(n, block_n) * split < 4 * sms
           and k // (2 * split) >= block_k):
        split *= 2
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split, "num_warps": 4, "num_stages": 3}


def row_gemv(prologue: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float,
             config: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = prologue(x) @ weight.T + bias for one token (x [1, K], or [1, 2K] under SILU_MUL), and under NORM with a
    residual the new residual x + residual. The caller has checked shapes and dtypes (engine.kernels.gemv)."""
    n, k = weight.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    new_residual = torch.empty(1, k, dtype=x.dtype, device=x.device) if residual is not None else None
    cfg = dict(config)
    split = cfg.pop("SPLIT_K")
    if split > 1 and (prologue == NORM or n > MAX_SPLIT_N or split > MAX_SPLIT_K):
        raise ValueError(f"SPLIT_K={split} does not fit N={n} (at most {MAX_SPLIT_N}) or this prologue")
    k_split = triton.cdiv(triton.cdiv(k, split), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    part, count = workspace(x.device) if split > 1 else (y, y)
    _row_gemv_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), split)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else weight, weight,
        bias if bias is not None else weight, y, new_residual if new_residual is not None else y, part, count, eps,
        n, k, k_split, SPLIT_K=split, PROLOGUE=prologue, HAS_RESIDUAL=residual is not None,
        HAS_BIAS=bias is not None, **pdl_args(x.device), **cfg)
    return y, new_residual


# Which configuration a projection takes: those measured faster than the unfused launches on an
# H200 (benchmarks/gemv_sweep.py), by (N, K, prologue). PAGEBENCH_ROW_GEMV=0 turns them off, =1 takes them for every
# shape (default_config where none was measured); PAGEBENCH_ROW_GEMV_TABLE names a sweep's JSON whose gains join them.
ROW_FORCE: bool | None = env_switch("PAGEBENCH_ROW_GEMV")


def _row(block_n: int, block_k: int, split_k: int, num_warps: int, num_stages: int) -> dict:
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k, "num_warps": num_warps,
            "num_stages": num_stages}


# Measured 2026-12-03 on an H200 (gemv_sweep.py at 9338f09, docs/benchmarks/2026-12-03-h200-gemv-sweep-9338f09.json):
# us per call inside CUDA graphs, this kernel / the unfused launches (the norm or SiLU*mul launch, then cuBLAS; the
# 0.6B o_proj took the 16-row kernel before, 6.3 us). The LM heads stay on cuBLAS (within 2%). Qwen2.5-7B's
# down_proj lost alone (40.5 against 39.3 us: its 18,944-wide rows stream at 3.5 TB/s against 4.0 for gate/up), but
# with programmatic dependent launch it won in the engine's decode step, where it replaces three launches (SiLU*mul,
# cuBLAS, its split-K reduce) that wait for each other: 243.1 -> 252.4 tokens/s at batch 1 (H200, d829dd9, twice
# in one call; benchmarks/gpu_bench.py --tests decode with this entry in PAGEBENCH_ROW_GEMV_TABLE).
ROW_CONFIGS: dict[tuple[int, int, str], dict] = {
    (4096, 1024, "norm"): _row(8, 1024, 1, 4, 2),  # 0.6B qkv 5.2 / 7.2
    (1024, 2048, "plain"): _row(4, 1024, 1, 8, 2),  # 0.6B o 3.9 / 12.7
    (6144, 1024, "norm"): _row(16, 512, 1, 4, 4),  # 0.6B gate/up 6.4 / 7.8
    (1024, 3072, "silu_mul"): _row(16, 256, 8, 8, 2),  # 0.6B down 5.6 / 8.9
    (4608, 3584, "norm"): _row(16, 512, 1, 4, 2),  # 7B qkv 11.9 / 13.4
    (3584, 3584, "plain"): _row(4, 512, 1, 8, 4),  # 7B o 9.7 / 11.9
    (37888, 3584, "norm"): _row(8, 512, 1, 4, 2),  # 7B gate/up 67.8 / 72.1
    (3584, 18944, "silu_mul"): _row(32, 512, 2, 4, 4),  # 7B down 40.5 / 39.3 alone; wins in the step (above)
}
ROW_MIN_GAIN = 0.97  # a measured configuration must take at most this share of today's time


@functools.cache
def row_configs() -> dict[tuple[int, int, str], dict]:
    path = os.environ.get("PAGEBENCH_ROW_GEMV_TABLE")
    if not path:
        return ROW_CONFIGS
    table = dict(ROW_CONFIGS)  # the sweep's gains added, or put in place of the measured entries they cover
    with open(path) as f:
        sweep = json.load(f)
    for p in sweep["projections"]:
        if p["best"] and p["best"][0]["us"] <= ROW_MIN_GAIN * p["today_us"]:
            table[(p["N"], p["K"], p["prologue"])] = p["best"][0]["config"]
    return table


def row_config(n: int, k: int, prologue: str, device: torch.device) -> dict | None:
    """The one-token kernel's configuration for this projection, or None where today's launches stay: measured on
    Hopper (compute capability 9.0) only, so other GPUs keep cuBLAS unless PAGEBENCH_ROW_GEMV=1."""
    if ROW_FORCE is False or not (device.type == "cuda" or INTERPRET and ROW_FORCE):
        return None
    config = row_configs().get((n, k, prologue))
    if ROW_FORCE:
        return config or default_config(n, k, PROLOGUES.index(prologue), num_sms(device))
    if config is None or torch.cuda.get_device_capability(device) != (9, 0):
        return None
    return config
