"""Neox-style (rotate-half) rotary embedding of q and k in one launch, reading the engine's cos/sin cache."""
import torch
import triton
import triton.language as tl

from engine.kernels.common import use_triton


@triton.jit
def load_cos_sin(positions_ptr, cache_ptr, token, stride_cache, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d, mask=d_mask, other=0.0)[None, :]
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d, mask=d_mask, other=0.0)[None, :]
    return cos, sin


@triton.jit
def head_halves(src_ptr, src_row, stride_t, stride_h, count, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_HALF: tl.constexpr):
    """(first halves, second halves, mask) of the first min(count, BLOCK_H) heads of row src_row (strided), as fp32
    [BLOCK_H, BLOCK_HALF] tiles."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < count) & (offs_d[None, :] < HALF)
    src = src_ptr + src_row * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    return x1, x2, mask


@triton.jit
def store_rotated(x1, x2, cos, sin, mask, src_dtype: tl.constexpr, dst_ptr, dst_row, NUM_HEADS: tl.constexpr,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotated halves -> row dst_row of a contiguous [rows, NUM_HEADS, 2 * HALF] destination.

    fp32 math rounded to the source dtype, then cast to the destination's (a no-op when they match), so a rotated
    k written straight into a cache holds what rotary's output copied there by store_kv would.
    """
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    dst = dst_ptr + dst_row * (NUM_HEADS * 2 * HALF) + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
    dst_dtype = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos - x2 * sin).to(src_dtype).to(dst_dtype), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(src_dtype).to(dst_dtype), mask=mask)


@triton.jit
def rotate_heads(src_ptr, dst_ptr, src_row, dst_row, stride_t, stride_h, cos, sin, NUM_HEADS: tl.constexpr,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Heads of row src_row (strided) -> row dst_row of a contiguous [rows, NUM_HEADS, 2 * HALF] destination."""
    x1, x2, mask = head_halves(src_ptr, src_row, stride_t, stride_h, NUM_HEADS, HALF, BLOCK_H, BLOCK_HALF)
    store_rotated(x1, x2, cos, sin, mask, src_ptr.dtype.element_ty, dst_ptr, dst_row, NUM_HEADS, HALF, BLOCK_H,
                  BLOCK_HALF)


@triton.jit
def _rotary_kernel(positions_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr, cache_ptr, stride_qt, stride_qh, stride_kt,
                   stride_kh, stride_cache, NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr,
                   HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cos, sin = load_cos_sin(positions_ptr, cache_ptr, token, stride_cache, HALF, BLOCK_HALF)
    rotate_heads(q_ptr, q_out_ptr, token, token, stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, HALF, BLOCK_HQ,
                 BLOCK_HALF)
    rotate_heads(k_ptr, k_out_ptr, token, token, stride_kt, stride_kh, cos, sin, NUM_K_HEADS, HALF, BLOCK_HK,
                 BLOCK_HALF)


def _rotary_torch(positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor) -> torch.Tensor:
    cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
           cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] or [T, Hq * D], k likewise (any token/head strides) -> new rotated q, k of the same shapes.

    Computed in fp32 and rounded once; cos_sin_cache is [max_position, D] float32, cos in the first half.
    """
    head_dim = cos_sin_cache.size(-1)
    if head_dim % 2 or q.size(-1) % head_dim or k.size(-1) % head_dim:
        raise ValueError(f"q {tuple(q.shape)} / k {tuple(k.shape)} do not split into heads of the cache's even "
                         f"width {head_dim}")
    shapes = q.shape, k.shape
    q, k = (t.unflatten(-1, (-1, head_dim)) if t.dim() == 2 else t for t in (q, k))
    if not use_triton(q):
        q_out, k_out = _rotary_torch(positions, q, cos_sin_cache), _rotary_torch(positions, k, cos_sin_cache)
        return q_out.reshape(shapes[0]), k_out.reshape(shapes[1])
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens, num_q_heads, _ = q.shape
    num_k_heads = k.size(1)
    if num_tokens:
        half = head_dim // 2
        _rotary_kernel[(num_tokens,)](
            positions, q, k, q_out, k_out, cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cache.stride(0),
            NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads, HALF=half,
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(num_k_heads),
            BLOCK_HALF=triton.next_power_of_2(half), num_warps=4)
    return q_out.reshape(shapes[0]), k_out.reshape(shapes[1])
