"""Paged decode attention: split-K flash-decoding over block tables, one query token per sequence.

Grid (sequence, KV head, split): a program scores the whole GQA group of its KV head at once (padded to 16 rows so
tl.dot runs on the tensor cores) over its share of the sequence, with an online softmax; a second kernel merges the
splits by log-sum-exp. The split count depends on shapes only, and each sequence divides its own length among the
splits, so the call never reads device values on the host and can be captured in a CUDA graph.
"""
import math

import torch
import triton
import triton.language as tl

from engine.kernels.common import check_cache, check_out, dot_flags, num_sms, online_softmax_step, pdl_args, pdl_wait

LOG2E = 1.4426950408889634
MAX_SPLITS = 32


# Ints and int pointers that vary with a step's make-up are not specialized on (value 1, multiple of 16, 16-byte
# alignment): each new combination would compile a variant in the middle of serving, a second or more per variant.
@triton.jit(do_not_specialize=["stride_bt", "num_splits"],
            do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr"])
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr,
                         part_lse_ptr, qk_scale, stride_qb, stride_qh, stride_ob, stride_oh, stride_bt, num_splits,
                         NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    TOKEN_STRIDE: tl.constexpr = NUM_KV_HEADS * HEAD_DIM

    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        tokens = n0 + offs_n
        n_mask = tokens < end
        blocks = tl.load(table + tokens // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        rows = (blocks * BLOCK_SIZE + tokens % BLOCK_SIZE) * TOKEN_STRIDE + kv_head * HEAD_DIM
        if BLOCK_D == HEAD_DIM:
            kv_mask = n_mask[:, None]
        else:
            kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(s, v, m_i, l_i, acc, UPCAST, PRECISION)

    filled = l_i > 0
    acc = acc / tl.where(filled, l_i, 1.0)[:, None]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:
        out = out_ptr + seq.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part = (seq.to(tl.int64) * NUM_HEADS + heads) * num_splits + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
        tl.store(part_lse_ptr + part, tl.where(filled, m_i + tl.log2(tl.where(filled, l_i, 1.0)), float("-inf")),
                 mask=g_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(part_out_ptr, part_lse_ptr, out_ptr, stride_ob, stride_oh, num_splits,
                         NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    part = (seq.to(tl.int64) * NUM_HEADS + head) * num_splits + offs_s
    lse = tl.load(part_lse_ptr + part, mask=s_mask, other=float("-inf"))
    top = tl.max(lse, 0)
    weights = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    total = tl.sum(weights, 0)
    parts = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(parts * weights[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq.to(tl.int64) * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def decode_config(head_dim: int) -> dict:
    return {"BLOCK_N": 64 if head_dim <= 128 else 32, "num_warps": 4, "num_stages": 2}


def choose_num_splits(batch: int, num_kv_heads: int, max_tokens: int, device: torch.device, block_n: int) -> int:
    # Enough programs for several per SM, so ragged lengths even out as the SMs pull the next program; never more
    # splits than key tiles in the longest sequence the block table can hold.
    wanted = math.ceil(8 * num_sms(device) / max(1, batch * num_kv_heads))
    return max(1, min(wanted, math.ceil(max_tokens / block_n), MAX_SPLITS))


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: torch.Tensor, scale: float, *, out: torch.Tensor | None = None,
                 num_splits: int | None = None, config: dict | None = None) -> torch.Tensor:
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    check_cache(k_cache, v_cache, num_heads, head_dim, block_tables)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = check_out(out, q)
    if batch == 0:
        return out
    cfg = {**decode_config(head_dim), **(config or {})}
    block_n = cfg.pop("BLOCK_N")
    splits = num_splits or choose_num_splits(batch, num_kv_heads, block_tables.size(1) * block_size, q.device,
                                             block_n)
    if not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {splits}")
    if splits > 1:
        part_out = torch.empty(batch, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(batch, num_heads, splits, dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out
    upcast, precision = dot_flags(q.dtype)
    block_d = triton.next_power_of_2(head_dim)
    _decode_split_kernel[(batch, num_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0), splits,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=max(16, triton.next_power_of_2(num_heads // num_kv_heads)), BLOCK_D=block_d, BLOCK_N=block_n,
        DIRECT=splits == 1, UPCAST=upcast, PRECISION=precision, **pdl_args(q.device), **cfg)
    if splits > 1:
        _decode_merge_kernel[(batch, num_heads)](
            part_out, part_lse, out, out.stride(0), out.stride(1), splits, NUM_HEADS=num_heads, HEAD_DIM=head_dim,
            BLOCK_D=block_d, BLOCK_S=MAX_SPLITS, num_warps=2, **pdl_args(q.device))
    return out
