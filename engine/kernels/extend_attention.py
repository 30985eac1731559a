"""Paged extend attention: flash-attention forward for new tokens over a cached prefix plus themselves.

Query token i of sequence s sits at position seq_lens[s] - qlen_s + i and sees keys 0..that position; prefix-cache
hits and chunked prefill are the same case. Grid (query head, query tile, sequence); the key loop runs unmasked over
keys every row of the tile sees, then masked over the causal diagonal.

For short queries under GQA a packed variant runs instead: grid (KV head, tile, sequence), a tile's rows are (token,
q head of the group) pairs, token-major, so the group shares each K/V tile and short queries still fill the tile.
"""
import torch
import triton
import triton.language as tl

from engine.kernels.common import INTERPRET, check_cache, check_out, dot_flags, online_softmax_step

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, q_pos, kv_head, lo, hi, seq_len, qk_scale,
                 offs_n, offs_d, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr):
    TOKEN_STRIDE: tl.constexpr = NUM_KV_HEADS * HEAD_DIM
    for n0 in range(lo, hi, BLOCK_N):
        keys = n0 + offs_n
        if MASKED:
            n_mask = keys < seq_len
            blocks = tl.load(table + keys // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        else:
            blocks = tl.load(table + keys // BLOCK_SIZE).to(tl.int64)
        rows = (blocks * BLOCK_SIZE + keys % BLOCK_SIZE) * TOKEN_STRIDE + kv_head * HEAD_DIM
        kv_ptrs = rows[:, None] + offs_d[None, :]
        if MASKED:
            if BLOCK_D == HEAD_DIM:
                kv_mask = n_mask[:, None]
            else:
                kv_mask = n_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_cache_ptr + kv_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_cache_ptr + kv_ptrs, mask=kv_mask, other=0.0)
        elif BLOCK_D == HEAD_DIM:
            k = tl.load(k_cache_ptr + kv_ptrs)
            v = tl.load(v_cache_ptr + kv_ptrs)
        else:
            k = tl.load(k_cache_ptr + kv_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            v = tl.load(v_cache_ptr + kv_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            s = tl.where((keys[None, :] <= q_pos[:, None]) & n_mask[None, :], s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(s, v, m_i, l_i, acc, UPCAST, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _attend_causal(q, q_pos, k_cache_ptr, v_cache_ptr, table, kv_head, visible_to_all, causal_end, seq_len, qk_scale,
                   offs_n, offs_d, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr):
    """The normalised attention of q's rows (at positions q_pos): unmasked over the keys every row sees, then masked
    over the diagonal up to causal_end."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, q_pos, kv_head, 0,
                                 visible_to_all, seq_len, qk_scale, offs_n, offs_d, NUM_KV_HEADS, HEAD_DIM,
                                 BLOCK_SIZE, BLOCK_D, BLOCK_N, False, UPCAST, PRECISION)
    acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, q_pos, kv_head, visible_to_all,
                                 causal_end, seq_len, qk_scale, offs_n, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE,
                                 BLOCK_D, BLOCK_N, True, UPCAST, PRECISION)
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None]


# As in decode_attention: no specialization on what varies with a step's make-up (the block-table width, and the
# offsets of a mixed step's extend half of the metadata), so serving never waits for a new variant to compile.
@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "query_start_loc_ptr", "seq_lens_ptr"])
def _extend_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
                   qk_scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, NUM_HEADS: tl.constexpr,
                   NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr):
    head = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix = seq_len - q_len
    kv_head = head // (NUM_HEADS // NUM_KV_HEADS)

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    tokens = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = prefix + offs_m

    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    visible_to_all = (prefix + tile * BLOCK_M) // BLOCK_N * BLOCK_N
    causal_end = tl.minimum(seq_len, prefix + (tile + 1) * BLOCK_M)
    acc = _attend_causal(q, q_pos, k_cache_ptr, v_cache_ptr, table, kv_head, visible_to_all, causal_end, seq_len,
                         qk_scale, offs_n, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_D, BLOCK_M, BLOCK_N,
                         UPCAST, PRECISION)
    tl.store(out_ptr + tokens[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "query_start_loc_ptr", "seq_lens_ptr"])
def _extend_packed_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, query_start_loc_ptr,
                          seq_lens_ptr, qk_scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
                          NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    kv_head = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)
    seq = tl.program_id(2)
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len * GROUP:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix = seq_len - q_len

    packed = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    token = packed // GROUP
    heads = kv_head * GROUP + packed % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    row_mask = token < q_len
    d_mask = offs_d < HEAD_DIM
    tokens = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = prefix + token

    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    first_token = tile * BLOCK_M // GROUP
    last_token = ((tile + 1) * BLOCK_M - 1) // GROUP
    visible_to_all = (prefix + first_token) // BLOCK_N * BLOCK_N
    causal_end = tl.minimum(seq_len, prefix + last_token + 1)
    acc = _attend_causal(q, q_pos, k_cache_ptr, v_cache_ptr, table, kv_head, visible_to_all, causal_end, seq_len,
                         qk_scale, offs_n, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_D, BLOCK_M, BLOCK_N,
                         UPCAST, PRECISION)
    tl.store(out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


def extend_config(head_dim: int, max_query_len: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32 or head_dim > 128:
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    block_m = 64 if max_query_len <= 64 else 128
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "num_warps": 8 if block_m == 128 else 4, "num_stages": 3}


# Up to 64 new tokens the per-head kernel runs one 64-row tile per (q head, sequence), mostly padding when short. The
# packed kernel's tiles, each a sweep of its sequence's K/V, number kv_heads x ceil(q_len x group / 64): never
# more than the per-head kernel's q_heads, up to group x fewer (2x for Qwen3-0.6B at 32 new tokens, 3.5x for
# Qwen2.5-7B at 16). Longer queries fill the per-head kernel's 128-row tiles; it stays the measured path there.
PACKED_MAX_QUERY_LEN = 64


def packs_gqa(group: int, max_query_len: int) -> bool:
    return group > 1 and max_query_len <= PACKED_MAX_QUERY_LEN


def launch_extend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                  block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                  max_query_len: int, scale: float, packed: bool, config: dict | None = None) -> None:
    """One kernel, chosen by the caller (paged_extend through packs_gqa; benchmarks force either)."""
    num_heads, head_dim = q.shape[1:]
    block_size, num_kv_heads = k_cache.shape[1:3]
    # A packed tile spans few tokens whatever the query length: the 64-row config, more programs for a small batch.
    cfg = {**extend_config(head_dim, PACKED_MAX_QUERY_LEN if packed else max_query_len, q.dtype), **(config or {})}
    upcast, precision = dot_flags(q.dtype)
    if packed:
        kernel, heads, rows = _extend_packed_kernel, num_kv_heads, max_query_len * (num_heads // num_kv_heads)
    else:
        kernel, heads, rows = _extend_kernel, num_heads, max_query_len
    kernel[(heads, triton.cdiv(rows, cfg["BLOCK_M"]), seq_lens.size(0))](
        q, k_cache, v_cache, out, block_tables, query_start_loc, seq_lens, scale * LOG2E, q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0), NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_D=triton.next_power_of_2(head_dim), UPCAST=upcast,
        PRECISION=precision, **cfg)


def paged_extend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 query_start_loc: torch.Tensor, seq_lens: torch.Tensor, max_query_len: int, scale: float,
                 *, out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.size(2)
    check_cache(k_cache, v_cache, num_heads, head_dim, block_tables)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = check_out(out, q)
    if num_tokens == 0 or seq_lens.size(0) == 0 or max_query_len <= 0:
        return out
    launch_extend(q, k_cache, v_cache, out, block_tables, query_start_loc, seq_lens, max_query_len, scale,
                  packs_gqa(num_heads // num_kv_heads, max_query_len), config)
    return out
