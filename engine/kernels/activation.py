"""SiLU(gate) * up over the merged gate/up projection output, in one pass."""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from engine.kernels.common import pdl_args, pdl_wait, use_triton


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + offs, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (silu * up).to(dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] with the same rounding as the eager torch ops."""
    if x.size(-1) % 2:
        raise ValueError(f"silu_and_mul needs an even last dimension, got {x.size(-1)}")
    if not use_triton(x):
        gate, up = x.chunk(2, -1)
        return F.silu(gate) * up
    n = x.size(-1) // 2
    rows = x.reshape(-1, 2 * n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if rows.size(0):
        block = min(1024, triton.next_power_of_2(n))
        _silu_and_mul_kernel[(rows.size(0), triton.cdiv(n, block))](rows, out, rows.stride(0), N=n, BLOCK=block,
                                                                    num_warps=4, **pdl_args(x.device))
    return out
