"""Small-batch (M <= 16 tokens) projections with their prologue fused in: RMSNorm (+ residual add) before the QKV and
gate/up projections, SiLU*mul before down_proj. At batch 1 a decode step is launch-bound; each fusion saves a launch
(two where cuBLAS adds a split-K reduce). One token goes to engine.kernels.row_gemv where its ROW_CONFIGS holds
a configuration measured faster than the unfused launches; the 16-row kernel here where the size policy takes it."""

import torch
import triton
import triton.language as tl

from engine.kernels import row_gemv
from engine.kernels.common import INTERPRET, dot_flags, env_switch, num_sms
from engine.kernels.norm import rms_scale

MAX_M = 16  # tl.dot needs 16 rows: one row tile, rows >= M masked to zero
PLAIN, NORM, SILU_MUL = 0, 1, 2
# Measured on an H200 (2026-12-03, benchmarks/kernels_gpu.py --only gemv, inside CUDA graphs): only the plain product
# of a small matrix at up to 4 rows beats cuBLAS (Qwen3-0.6B's o_proj, 4 MiB: 6.3 us against 8.3 to 13.0, where
# cuBLAS splits K); the fused prologues and every larger matrix lose (0.14x to 0.97x), one program per 16 rows over
# the whole K being too little parallelism. They stay available, forced on with PAGEBENCH_FUSED_GEMV=1.
AUTO_MAX_M = 4
AUTO_MAX_WEIGHT_BYTES = 4 << 20
FORCE: bool | None = env_switch("PAGEBENCH_FUSED_GEMV")  # read once; None follows the size policy


def fused_gemv_enabled(m: int, n: int, k: int, dtype: torch.dtype, prologue: str = "plain") -> bool:
    """Whether a projection of an [m, k] input by an [n, k] weight takes these kernels, after its prologue ("plain",
    "norm": RMSNorm with the residual add, "silu_mul")."""
    if not 0 < m <= MAX_M or FORCE is False:
        return False
    if FORCE is True:
        return True
    return prologue == "plain" and m <= AUTO_MAX_M and n * k * dtype.itemsize <= AUTO_MAX_WEIGHT_BYTES


def fused_gemv_allowed(x: torch.Tensor, weight: torch.Tensor, prologue: str = "plain") -> bool:
    """On CPU tensors the kernels run only in the interpreter, and only when forced on (tests): the CPU engine keeps
    its torch path, which is token-identical to Hugging Face."""
    one_token = x.dim() == 2 and x.size(0) == 1 and x.dtype == weight.dtype != torch.float32
    if one_token and row_gemv.row_config(weight.size(0), weight.size(1), prologue, x.device) is not None:
        return True
    if not (x.is_cuda or INTERPRET and FORCE is True) or x.dim() != 2 or x.dtype != weight.dtype:
        return False
    return fused_gemv_enabled(x.size(0), weight.size(0), weight.size(1), weight.dtype, prologue)


def gemv_config(n: int, k: int, itemsize: int, sms: int) -> dict:
    """A program streams BLOCK_N weight rows over the whole K: take the widest BLOCK_N that still gives every SM two
    programs, and about 8 KB of weight per pipeline stage so enough loads are in flight to cover HBM latency."""
    block_n = 64
    while block_n > 16 and triton.cdiv(n, block_n) < 2 * sms:
        block_n //= 2
    block_k = max(16, min(8192 // (block_n * itemsize), triton.next_power_of_2(k)))
    num_stages = 4 if triton.cdiv(k, block_k) >= 4 else 2
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 4, "num_stages": num_stages}


@triton.jit
def _prologue(x_ptr, r_ptr, nw_ptr, offs_m, offs_k, mask, inv_rms, stride_xm, stride_rm, dtype: tl.constexpr,
              K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The dot's left operand for one K tile, rounded to dtype where the unfused kernels round."""
    x_offs = offs_m[:, None] * stride_xm + offs_k[None, :]
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    if PROLOGUE == 1:  # NORM
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_k[None, :], mask=mask, other=0.0)
            x = (x + r.to(tl.float32)).to(dtype).to(tl.float32)
        nw = tl.load(nw_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        x = rms_scale(x, inv_rms[:, None], nw[None, :], dtype)
    elif PROLOGUE == 2:  # SILU_MUL
        up = tl.load(x_ptr + x_offs + K, mask=mask, other=0.0).to(tl.float32)
        x = (x / (1.0 + tl.exp(-x))).to(dtype).to(tl.float32) * up
    return x.to(dtype)


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, r_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, new_r_ptr, M, eps, stride_xm, stride_rm,
                 N: tl.constexpr, K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    offs_m = tl.arange(0, 16)
    m_mask = offs_m < M
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    inv_rms = tl.zeros([16], tl.float32)
    if PROLOGUE == 1:  # NORM
        # Every program needs the rows' RMS before its first tile; x is M x K, a few KB that sit in L2.
        sum_sq = tl.zeros([16], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = m_mask[:, None] & (offs_k < K)[None, :]
            s = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask, other=0.0)
            if HAS_RESIDUAL:
                r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_k[None, :], mask=mask, other=0.0)
                s = (s.to(tl.float32) + r.to(tl.float32)).to(dtype)
                if pid == 0:
                    tl.store(new_r_ptr + offs_m[:, None] * K + offs_k[None, :], s, mask=mask)
            s = s.to(tl.float32)
            sum_sq += tl.sum(s * s, 1)
        inv_rms = 1.0 / tl.sqrt(sum_sq / K + eps)  # rms_inv's formula over the streamed row
    acc = tl.zeros([16, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = _prologue(x_ptr, r_ptr, nw_ptr, offs_m, offs_k, m_mask[:, None] & k_mask[None, :], inv_rms, stride_xm,
                      stride_rm, dtype, K, PROLOGUE, HAS_RESIDUAL)
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(dtype), mask=m_mask[:, None] & n_mask[None, :])


def _rows(t: torch.Tensor, what: str) -> torch.Tensor:
    rows = t.reshape(-1, t.size(-1))
    if rows.size(0) > MAX_M:
        raise ValueError(f"{what} has {rows.size(0)} rows; the fused gemv kernels take at most {MAX_M}")
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(prologue: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, k = weight.shape
    xs = _rows(x, "x")
    width = 2 * k if prologue == SILU_MUL else k
    if xs.size(1) != width or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} does not fit a contiguous weight {tuple(weight.shape)} "
                         f"{weight.dtype} (x's last dim must be {width})")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} does not match {n} outputs")
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm weight {tuple(norm_weight.shape)} does not match hidden size {k}")
    rs = xs
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match x {tuple(x.shape)}")
        rs = _rows(residual, "residual")
    one_token = xs.size(0) == 1 and config is None and FORCE is not True  # forced: the 16-row kernel, as tested
    row = row_gemv.row_config(n, k, row_gemv.PROLOGUES[prologue], x.device) if one_token else None
    if row is not None:
        y, new_residual = row_gemv.row_gemv(prologue, xs, weight, bias, residual if residual is None else rs,
                                            norm_weight, eps, row)
        return y.view(*x.shape[:-1], n), None if new_residual is None else new_residual.view(x.shape)
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    cfg = {**gemv_config(n, k, weight.element_size(), num_sms(x.device)), **(config or {})}
    upcast, precision = dot_flags(x.dtype)
    if xs.size(0):
        _gemv_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
            xs, rs, norm_weight if norm_weight is not None else weight, weight, bias if bias is not None else weight,
            y, new_residual if new_residual is not None else y, xs.size(0), eps, xs.stride(0), rs.stride(0), N=n,
            K=k, PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
            UPCAST=upcast, PRECISION=precision, **cfg)
    return y, new_residual


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
              weight: torch.Tensor, bias: torch.Tensor | None = None,
              config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) @ weight.T + bias, x + residual); without residual the second is x itself. The norm
    rounds as rms_norm does (Hugging Face order), the product accumulates in fp32."""
    y, new_residual = _launch(NORM, x, weight, bias, residual, norm_weight, eps, config)
    return y, x if new_residual is None else new_residual


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: dict | None = None) -> torch.Tensor:
    """x @ weight.T + bias for at most 16 rows, fp32 accumulation."""
    return _launch(PLAIN, x, weight, bias, config=config)[0]


def silu_mul_gemv(gate_up: torch.Tensor, weight: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ weight.T with gate_up = [gate | up], the activation rounded as silu_and_mul rounds it."""
    return _launch(SILU_MUL, gate_up, weight, config=config)[0]
