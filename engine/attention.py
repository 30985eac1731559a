"""Paged attention: the metadata a step carries and the pure PyTorch reference ops.

KV cache layout, per layer: k_cache, v_cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
Token t of a sequence lives in slot block_table[t // block_size] * block_size + t % block_size.
A step's tokens are ordered decodes first (one query token each), then extends (prefill chunks).
"""
from dataclasses import dataclass

import torch


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
    t, hq, d = q.shape
    hkv = k.size(1)
    qg = q.float().view(t, hkv, hq // hkv, d)
    scores = torch.einsum("qhgd,khd->hgqk", qg, k.float()) * scale
    q_pos = torch.arange(t, device=q.device).unsqueeze(1) + first_pos
    k_pos = torch.arange(k.size(0), device=q.device).unsqueeze(0)
    scores.masked_fill_(k_pos > q_pos, float("-inf"))
    out = torch.einsum("hgqk,khd->qhgd", scores.softmax(dim=-1), v.float())
    return out.reshape(t, hq, d).to(q.dtype)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: torch.Tensor, scale: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence, all sequences at once: keys gathered through the tables, padding masked."""
    b, hq, d = q.shape
    block_size, hkv = k_cache.size(1), k_cache.size(2)
    max_len = max(int(seq_lens.max()), 1)
    num_blocks = -(-max_len // block_size)
    used = torch.arange(num_blocks, device=q.device).unsqueeze(0) * block_size < seq_lens.unsqueeze(1)
    tables = block_tables[:, :num_blocks].long().masked_fill(~used, 0)
    pad = (torch.arange(max_len, device=q.device).unsqueeze(0) >= seq_lens.unsqueeze(1))[:, :, None, None]
    k = k_cache[tables].reshape(b, -1, hkv, d)[:, :max_len].float().masked_fill(pad, 0.0)
    v = v_cache[tables].reshape(b, -1, hkv, d)[:, :max_len].float().masked_fill(pad, 0.0)
    qg = q.float().view(b, hkv, hq // hkv, d)
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * scale
    scores.masked_fill_(pad[:, None, None, :, 0, 0], float("-inf"))
    result = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), v).reshape(b, hq, d)
    result = result.masked_fill((seq_lens == 0)[:, None, None], 0.0).to(q.dtype)
    return result if out is None else out.copy_(result)


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
