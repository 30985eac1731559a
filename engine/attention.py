"""Paged attention: the metadata a step carries and the pure PyTorch reference ops.

KV cache layout, per layer: k_cache, v_cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
Token t of a sequence lives in slot block_table[t // block_size] * block_size + t % block_size.
A step's tokens are ordered decodes first (one query token each), then extends (prefill chunks).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 = padding, not written
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32: tokens in the cache once this step's are written
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    num_decodes: int
    num_decode_tokens: int
    max_query_len: int
    max_seq_len: int


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[valid]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[valid]


def _gather(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    block_size = cache.size(1)
    blocks = block_table[: -(-seq_len // block_size)].long()
    return cache[blocks].reshape(-1, *cache.shape[2:])[:seq_len]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, first_pos: int) -> torch.Tensor:
    """Causal attention of t queries at positions first_pos.. over keys 0..len(k)-1, in fp32."""
    t, hq, d = q.shape
    mask = None
    if t > 1:
        q_pos = torch.arange(t, device=q.device).unsqueeze(1) + first_pos
        mask = torch.arange(k.size(0), device=q.device).unsqueeze(0) <= q_pos
    out = F.scaled_dot_product_attention(q.float().transpose(0, 1), k.float().transpose(0, 1),
                                         v.float().transpose(0, 1), attn_mask=mask, scale=scale,
                                         enable_gqa=k.size(1) != hq)
    return out.transpose(0, 1).to(q.dtype)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: torch.Tensor, scale: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence, each over its own keys; an empty sequence (padding) gives zeros.

    One sequence at a time: on the CPU faster than one padded batch, which must also zero the slots past each
    sequence's end (they may hold anything, NaN included); BENCHMARKS.md, "Engine on the CPU", has the figures."""
    out = torch.empty_like(q) if out is None else out
    for i, seq_len in enumerate(seq_lens.tolist()):
        if seq_len == 0:
            out[i] = 0
            continue
        k = _gather(k_cache, block_tables[i], seq_len)
        v = _gather(v_cache, block_tables[i], seq_len)
        out[i : i + 1] = _attend(q[i : i + 1], k, v, scale, seq_len - 1)
    return out


def paged_extend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 query_start_loc: torch.Tensor, seq_lens: torch.Tensor, max_query_len: int, scale: float, *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty_like(q) if out is None else out
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        s, e = starts[i], starts[i + 1]
        k = _gather(k_cache, block_tables[i], seq_len)
        v = _gather(v_cache, block_tables[i], seq_len)
        out[s:e] = _attend(q[s:e], k, v, scale, seq_len - (e - s))
    return out


class TorchAttentionBackend:
    name = "torch"
    store_kv = staticmethod(store_kv)
    paged_decode = staticmethod(paged_decode)
    paged_extend = staticmethod(paged_extend)


def get_backend(device: torch.device) -> object:
    if device.type == "cuda":
        from engine.kernels import TritonAttentionBackend

        return TritonAttentionBackend
    return TorchAttentionBackend


def attend_to_cache(backend: object, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over K/V already in the caches, this step's tokens included (stored by the caller); into out
    ([tokens, heads, head_dim], contiguous last dim) where given."""
    nd, ndt = meta.num_decodes, meta.num_decode_tokens
    if ndt == q.size(0):
        return backend.paged_decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, out=out)
    if nd == 0:
        return backend.paged_extend(q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                                    meta.max_query_len, scale, out=out)
    out = torch.empty_like(q) if out is None else out
    backend.paged_decode(q[:ndt], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], scale, out=out[:ndt])
    backend.paged_extend(q[ndt:], k_cache, v_cache, meta.block_tables[nd:], meta.query_start_loc[nd:] - ndt,
                         meta.seq_lens[nd:], meta.max_query_len, scale, out=out[ndt:])
    return out
