"""Rotary embedding fused with the KV-cache store: one launch per layer where rotary then store_kv took two.

The rotated k goes straight into its cache slot and is never materialised; q is rotated into a new tensor exactly as
`rotary` does it (same helper, same rounding), and the cache ends up as `rotary` followed by `store_kv` leaves it.
Qwen3's per-head q/k RMSNorm folds into the same launch, rounded as rms_norm rounds it.
"""
import torch
import triton
import triton.language as tl

from engine import attention
from engine.kernels.common import check_cache, num_sms, pdl_args, pdl_wait, use_triton
from engine.kernels.norm import norm_warps, rms_inv, rms_norm, rms_scale
from engine.kernels.rotary_embedding import head_halves, load_cos_sin, rotary, store_rotated


@triton.jit
def _copy_heads(src_ptr, dst_ptr, src_row, dst_row, first, stride_t, stride_h, NUM_HEADS: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Heads first .. first + BLOCK_H (those below NUM_HEADS) of row src_row -> row dst_row of a contiguous
    [rows, NUM_HEADS, HEAD_DIM] destination."""
    heads = first + tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    mask = (heads < NUM_HEADS) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(src_ptr + src_row * stride_t + heads * stride_h + offs_d[None, :], mask=mask)
    dst = dst_ptr + dst_row * (NUM_HEADS * HEAD_DIM) + heads * HEAD_DIM + offs_d[None, :]
    tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _inv_rms_per_head(src_ptr, row, stride_t, stride_h, eps, count, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """[BLOCK_H, 1] for the first min(count, BLOCK_H) heads, each reduced alone as a [BLOCK_D] row: the shape
    rms_norm reduces, so the sums agree to the bit."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    inv = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h in tl.static_range(BLOCK_H):
        if h < count:
            x = tl.load(src_ptr + row * stride_t + h * stride_h + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
            inv = tl.where(offs_h == h, rms_inv(x.to(tl.float32), eps, HEAD_DIM), inv)
    return inv[:, None]


@triton.jit
def _norm_rotate_heads(src_ptr, weight_ptr, dst_ptr, src_row, dst_row, first, stride_t, stride_h, eps, cos, sin,
                       HAS_NORM: tl.constexpr, NUM_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    """Heads first .. first + BLOCK_H of row src_row, rotated into row dst_row of a contiguous [rows, NUM_HEADS,
    2 * HALF] destination, after rms_norm's per-head RMSNorm when HAS_NORM (Qwen3's q_norm / k_norm)."""
    dtype = src_ptr.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_HALF)
    src = src_ptr + first * stride_h
    x1, x2, mask = head_halves(src, src_row, stride_t, stride_h, NUM_HEADS - first, HALF, BLOCK_H, BLOCK_HALF)
    if HAS_NORM:
        inv = _inv_rms_per_head(src, src_row, stride_t, stride_h, eps, NUM_HEADS - first, 2 * HALF, BLOCK_H,
                                BLOCK_D)
        w1 = tl.load(weight_ptr + offs_d, mask=offs_d < HALF, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(weight_ptr + HALF + offs_d, mask=offs_d < HALF, other=0.0).to(tl.float32)[None, :]
        x1 = rms_scale(x1, inv, w1, dtype).to(dtype).to(tl.float32)  # the normed tensor rms_norm hands over
        x2 = rms_scale(x2, inv, w2, dtype).to(dtype).to(tl.float32)
    store_rotated(x1, x2, cos, sin, mask, dtype, dst_ptr + first * 2 * HALF, dst_row, NUM_HEADS, HALF, BLOCK_H,
                  BLOCK_HALF)


@triton.jit
def _rotary_store_kv_kernel(positions_ptr, slot_mapping_ptr, q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
                            cos_sin_ptr, q_norm_ptr, k_norm_ptr, eps, stride_qt, stride_qh, stride_kt, stride_kh,
                            stride_vt, stride_vh, stride_cos_sin, HAS_NORM: tl.constexpr, NUM_Q_HEADS: tl.constexpr,
                            NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                            BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
                            PDL: tl.constexpr):
    # Grid (token, head block): the q blocks first, then the k/v blocks, so that a step of one token still spreads
    # its heads over several SMs.
    pdl_wait(PDL)
    token = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    Q_BLOCKS: tl.constexpr = (NUM_Q_HEADS + BLOCK_HQ - 1) // BLOCK_HQ
    cos, sin = load_cos_sin(positions_ptr, cos_sin_ptr, token, stride_cos_sin, HALF, BLOCK_HALF)
    if part < Q_BLOCKS:
        _norm_rotate_heads(q_ptr, q_norm_ptr, q_out_ptr, token, token, part * BLOCK_HQ, stride_qt, stride_qh, eps,
                           cos, sin, HAS_NORM, NUM_Q_HEADS, HALF, BLOCK_HQ, BLOCK_HALF, BLOCK_D)
        return
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # CUDA-graph padding: q rows are still written, as rotary writes them, but no cache slot
        return
    first = (part - Q_BLOCKS) * BLOCK_HKV
    _norm_rotate_heads(k_ptr, k_norm_ptr, k_cache_ptr, token, slot, first, stride_kt, stride_kh, eps, cos, sin,
                       HAS_NORM, NUM_KV_HEADS, HALF, BLOCK_HKV, BLOCK_HALF, BLOCK_D)
    _copy_heads(v_ptr, v_cache_ptr, token, slot, first, stride_vt, stride_vh, NUM_KV_HEADS, 2 * HALF, BLOCK_HKV,
                BLOCK_D)


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def heads_per_program(num_heads: int, has_norm: bool, num_tokens: int, sms: int) -> int:
    """All heads of a token in one program (at most 16 under the norm's single warp, where 64 q heads would spill
    registers) once the tokens alone fill the SMs; fewer tokens spread their heads, 4 to a program under the norm
    (which reduces head by head) and 8 without, so that a decode step at batch 1 does not wait on one SM."""
    block = triton.next_power_of_2(num_heads)
    if num_tokens < 2 * sms:
        block = min(block, 4 if has_norm else 8)
    return min(block, 16) if has_norm else block


def _check_norm(q: torch.Tensor, k: torch.Tensor, q_norm_weight: torch.Tensor | None,
                k_norm_weight: torch.Tensor | None, eps: float | None) -> bool:
    """Whether q and k are to be RMS-normalised first; the weights must be [head_dim] like rms_norm's."""
    if q_norm_weight is None and k_norm_weight is None:
        return False
    if q_norm_weight is None or k_norm_weight is None or eps is None:
        raise ValueError("q_norm_weight, k_norm_weight and eps go together")
    if q_norm_weight.shape != (q.size(-1),) or k_norm_weight.shape != (k.size(-1),):
        raise ValueError(f"norm weights {tuple(q_norm_weight.shape)} / {tuple(k_norm_weight.shape)} must be "
                         f"[{q.size(-1)}]")
    return True


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    cos_sin_cache: torch.Tensor, q_norm_weight: torch.Tensor | None = None,
                    k_norm_weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D] (any token/head strides) -> the rotated q, a new [T, Hq, D] tensor.

    The rotated k and the unchanged v are written to k_cache / v_cache ([blocks, block_size, Hkv, D]) at
    slot_mapping[t]; slots < 0 are skipped. With q_norm_weight, k_norm_weight and eps (Qwen3), q and k are first
    RMS-normalised per head: the result is rms_norm(q), rms_norm(k) then this, bit for bit.
    Reads no device value on the host, so it can be captured in a CUDA graph.
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
    has_norm = _check_norm(q, k, q_norm_weight, k_norm_weight, eps)
    # The kernel rounds the normed q/k to their own dtype: weights of another dtype would promote them (rms_norm).
    if has_norm and not (use_triton(q) and q_norm_weight.dtype == k_norm_weight.dtype == q.dtype == k.dtype):
        q, k = rms_norm(q, q_norm_weight, eps), rms_norm(k, k_norm_weight, eps)
        has_norm = False
    if not use_triton(q):
        q_out, k_out = rotary(positions, q, k, cos_sin_cache)
        attention.store_kv(k_out, v, k_cache, v_cache, slot_mapping)
        return q_out
    q, k, v, cos_sin = (_unit_last_stride(t) for t in (q, k, v, cos_sin_cache))
    q_norm, k_norm = (_unit_last_stride(w) for w in (q_norm_weight, k_norm_weight)) if has_norm else (q, k)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens:
        half = head_dim // 2
        sms = num_sms(q.device)
        block_hq = heads_per_program(num_q_heads, has_norm, num_tokens, sms)
        block_hkv = heads_per_program(num_kv_heads, has_norm, num_tokens, sms)
        blocks = triton.cdiv(num_q_heads, block_hq) + triton.cdiv(num_kv_heads, block_hkv)
        _rotary_store_kv_kernel[(num_tokens, blocks)](
            positions, slot_mapping, q, k, v, q_out, k_cache, v_cache, cos_sin, q_norm, k_norm,
            eps if has_norm else 0.0, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            cos_sin.stride(0), HAS_NORM=has_norm, NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=half,
            BLOCK_HQ=block_hq, BLOCK_HKV=block_hkv,
            BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(head_dim),
            num_warps=norm_warps(head_dim) if has_norm else 4,  # norm_warps: rms_norm's reduction order
            **pdl_args(q.device))
    return q_out
