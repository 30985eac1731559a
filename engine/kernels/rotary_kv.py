"""Rotary embedding fused with the KV-cache store: one launch per layer where rotary then store_kv took two.

The rotated k goes straight into its cache slot and is never materialised; q is rotated into a new tensor exactly as
`rotary` does it (same helper, same rounding), and the cache ends up as `rotary` followed by `store_kv` leaves it.
"""
import torch
import triton
import triton.language as tl

from engine import attention
from engine.kernels.common import check_cache, use_triton
from engine.kernels.rotary_embedding import load_cos_sin, rotary, rotate_heads


@triton.jit
def _copy_heads(src_ptr, dst_ptr, src_row, dst_row, stride_t, stride_h, NUM_HEADS: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(src_ptr + src_row * stride_t + offs_h[:, None] * stride_h + offs_d[None, :], mask=mask)
    dst = dst_ptr + dst_row * (NUM_HEADS * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_store_kv_kernel(positions_ptr, slot_mapping_ptr, q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
                            cos_sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                            stride_cos_sin, NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
                            BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cos, sin = load_cos_sin(positions_ptr, cos_sin_ptr, token, stride_cos_sin, HALF, BLOCK_HALF)
    rotate_heads(q_ptr, q_out_ptr, token, token, stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, HALF, BLOCK_HQ,
                 BLOCK_HALF)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # CUDA-graph padding: q rows are still written, as rotary writes them, but no cache slot
        return
    rotate_heads(k_ptr, k_cache_ptr, token, slot, stride_kt, stride_kh, cos, sin, NUM_KV_HEADS, HALF, BLOCK_HKV,
                 BLOCK_HALF)
    _copy_heads(v_ptr, v_cache_ptr, token, slot, stride_vt, stride_vh, NUM_KV_HEADS, 2 * HALF, BLOCK_HKV, BLOCK_D)


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    cos_sin_cache: torch.Tensor) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D] (any token/head strides) -> the rotated q, a new [T, Hq, D] tensor.

    The rotated k and the unchanged v are written to k_cache / v_cache ([blocks, block_size, Hkv, D]) at
    slot_mapping[t]; slots < 0 are skipped. Reads no device value on the host, so it can be captured in a CUDA graph.
    """
    head_dim = cos_sin_cache.size(-1)
    if head_dim % 2 or q.dim() != 3 or k.dim() != 3 or q.size(-1) != head_dim or k.size(-1) != head_dim \
            or v.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must be [tokens, heads, "
                         f"{head_dim}] with k and v alike, {head_dim} being the cos/sin cache's even width")
    num_tokens, num_q_heads, _ = q.shape
    num_kv_heads = k.size(1)
    check_cache(k_cache, v_cache, num_q_heads, head_dim)
    if k_cache.size(2) != num_kv_heads:
        raise ValueError(f"k {tuple(k.shape)} does not match cache {tuple(k_cache.shape)}")
    if not use_triton(q):
        q_out, k_out = rotary(positions, q, k, cos_sin_cache)
        attention.store_kv(k_out, v, k_cache, v_cache, slot_mapping)
        return q_out
    q, k, v, cos_sin = (_unit_last_stride(t) for t in (q, k, v, cos_sin_cache))
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens:
        half = head_dim // 2
        _rotary_store_kv_kernel[(num_tokens,)](
            positions, slot_mapping, q, k, v, q_out, k_cache, v_cache, cos_sin, q.stride(0), q.stride(1),
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin.stride(0),
            NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=half,
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
            BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(head_dim), num_warps=4)
    return q_out
