"""RMSNorm with the residual add fused in, Hugging Face semantics: normalise in fp32, cast back, then scale."""
import torch
import triton
import triton.language as tl

from engine.kernels.common import use_triton


@triton.jit
def rms_inv(x, eps, N: tl.constexpr):
    """1 / rms of an fp32 row (masked lanes 0); the reduction's order, fixed by the row's shape and the launch's
    num_warps (norm_warps), decides the result's last bit, so a fused caller reduces a row of the same shape."""
    return 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)


@triton.jit
def rms_scale(x, inv_rms, w, dtype: tl.constexpr):
    """Hugging Face order: normalise in fp32, round to the input dtype, then multiply by the weight (fp32 result)."""
    return (x * inv_rms).to(dtype).to(tl.float32) * w


def norm_warps(n: int) -> int:
    return min(16, max(1, triton.next_power_of_2(n) // 256))


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr, eps, stride_x, stride_r,
                     N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(dtype)
        tl.store(new_residual_ptr + row * N + offs, summed, mask=mask)
        x = summed.to(tl.float32)
    inv_rms = rms_inv(x, eps, N)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = rms_scale(x, inv_rms, w, dtype)
    tl.store(out_ptr + row * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    h = x.float()
    normed = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed if residual is None else (normed, x)


def _rows(t: torch.Tensor) -> torch.Tensor:
    rows = t.reshape(-1, t.size(-1))
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Returns weight * norm(x), or (weight * norm(x + residual), x + residual) when residual is given."""
    if not use_triton(x):
        return _rms_norm_torch(x, weight, eps, residual)
    n = x.size(-1)
    assert weight.shape == (n,), f"weight {tuple(weight.shape)} does not match hidden size {n}"
    xs = _rows(x)
    rs = _rows(residual) if residual is not None else xs
    assert residual is None or residual.shape == x.shape and residual.dtype == x.dtype, "residual must match x"
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    new_residual = torch.empty_like(x) if residual is not None else out
    if xs.size(0) > 0:
        block = triton.next_power_of_2(n)
        _rms_norm_kernel[(xs.size(0),)](
            xs, rs, weight, out, new_residual, eps, xs.stride(0), rs.stride(0), N=n, BLOCK=block,
            HAS_RESIDUAL=residual is not None, num_warps=norm_warps(n))
    return out if residual is None else (out, new_residual)
