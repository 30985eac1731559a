"""Triton kernels against the PyTorch references: engine.attention for attention, eager torch for the fused helpers.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, small sizes); with CUDA the same tests run
compiled, and the `gpu` tests add full model shapes, CUDA-graph capture and a no-host-sync check.
Every output buffer the kernels allocate is poisoned (NaN / -1) so unwritten elements fail; unused cache slots and
block-table padding point at NaN KV, so a kernel reading past a sequence fails too.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.triton_interpreter import (HAS_CUDA, forget_kernels, kernel_module, restore_interpret_setting,
                                     skip_module_if_triton_came_first)

skip_module_if_triton_came_first()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from engine import attention as ref  # noqa: E402
from engine.layers.activation import SiluAndMul  # noqa: E402
from engine.layers.norm import RMSNorm  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402
from tests.kernel_launches import record_launches  # noqa: E402

K = kernel_module("engine.kernels")
restore_interpret_setting()


@pytest.fixture(autouse=True, scope="module")
def interpreter_only_here():
    """Without CUDA the interpreter is on only while this module's tests run; other modules see triton as it was."""
    if HAS_CUDA:
        yield
        return
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    restore_interpret_setting()
    forget_kernels()


DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}
# Elementwise helpers round once, so they sit near one ulp; the interpreter truncates fp32 -> bf16 instead of rounding.
HELPER_TOL = {torch.bfloat16: 4e-3 if HAS_CUDA else 1e-2, torch.float16: 2.5e-3, torch.float32: 2.5e-6}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture
def poison(monkeypatch):
    """Every torch.empty / empty_like during the test comes back full of NaN (floats) or -1 (integers)."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan") if t.is_floating_point() else -1) if t.numel() and t.dtype != torch.bool else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))


class PagedKV:
    """A KV pool holding `seq_lens` sequences in shuffled, non-contiguous blocks; every other slot holds NaN."""

    def __init__(self, seq_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 gen: torch.Generator, spare_blocks: int = 3) -> None:
        self.block_size = block_size
        need = [math.ceil(n / block_size) for n in seq_lens]
        num_blocks = sum(need) + spare_blocks
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
        self.v_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
        ids = torch.randperm(num_blocks, generator=gen).tolist()
        nan_block = ids.pop()
        self.block_tables = torch.full((len(seq_lens), max(need, default=0) + 2), nan_block, dtype=torch.int32)
        for s, (n, blocks) in enumerate(zip(seq_lens, need)):
            self.block_tables[s, :blocks] = torch.tensor(ids[:blocks], dtype=torch.int32)
            ids = ids[blocks:]
            slots = self.slots(s, 0, n)
            for cache in (self.k_cache, self.v_cache):
                cache.view(-1, num_kv_heads, head_dim)[slots] = _randn(n, num_kv_heads, head_dim, dtype=dtype, gen=gen)
        self.block_tables = self.block_tables.to(DEVICE)

    def slots(self, seq: int, start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        table = self.block_tables[seq].cpu().long()
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(DEVICE)


def _randn(*shape: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def check_decode(seq_lens: list[int], num_kv_heads: int, ratio: int, head_dim: int, block_size: int,
                 dtype: torch.dtype, seed: int, num_splits: int | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    kv = PagedKV(seq_lens, block_size, num_kv_heads, head_dim, dtype, gen)
    q = _randn(len(seq_lens), num_kv_heads * ratio, head_dim, dtype=dtype, gen=gen)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim ** -0.5
    out = K.paged_decode(q, kv.k_cache, kv.v_cache, kv.block_tables, lens, scale, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "unwritten or NaN-contaminated output"
    live = lens > 0
    assert (out[~live] == 0).all(), "seq_len 0 rows must come out as zeros"
    expected = ref.paged_decode(q[live], kv.k_cache, kv.v_cache, kv.block_tables[live], lens[live], scale)
    assert rel_err(out[live], expected) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ratio", [1, 3, 4, 8])
def test_decode_matches_reference(poison, dtype, ratio):
    seq_lens = [1, 15, 16, 17, 0, 50, 33]
    check_decode(seq_lens, 2 if ratio < 8 else 1, ratio, 64, 16, dtype, seed=ratio, num_splits=1)
    check_decode(seq_lens, 2 if ratio < 8 else 1, ratio, 64, 16, dtype, seed=ratio + 100, num_splits=3)


@pytest.mark.parametrize("head_dim,block_size,splits", [(128, 32, None), (128, 16, 5), (80, 32, 2)])
def test_decode_head_dims_and_block_sizes(poison, head_dim, block_size, splits):
    check_decode([70, 0, 31, 32, 33], 2, 4, head_dim, block_size, torch.bfloat16, seed=head_dim + block_size,
                 num_splits=splits)


def check_extend(prefixes: list[int], query_lens: list[int], num_kv_heads: int, ratio: int, head_dim: int,
                 block_size: int, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefixes, query_lens)]
    kv = PagedKV(seq_lens, block_size, num_kv_heads, head_dim, dtype, gen)
    q = _randn(sum(query_lens), num_kv_heads * ratio, head_dim, dtype=dtype, gen=gen)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim ** -0.5
    out = K.paged_extend(q, kv.k_cache, kv.v_cache, kv.block_tables, starts, lens, max(query_lens), scale)
    assert out.shape == q.shape and torch.isfinite(out).all()
    expected = ref.paged_extend(q, kv.k_cache, kv.v_cache, kv.block_tables, starts, lens, max(query_lens), scale)
    assert rel_err(out, expected) <= TOL[dtype]


@pytest.mark.parametrize("dtype,ratio", [(torch.bfloat16, 1), (torch.bfloat16, 3), (torch.bfloat16, 4),
                                         (torch.bfloat16, 8), (torch.float16, 4), (torch.float32, 3)], ids=str)
def test_extend_matches_reference(poison, dtype, ratio):
    check_extend([0, 5, 30, 17], [19, 1, 37, 16], 2 if ratio < 8 else 1, ratio, 64, 16, dtype, seed=ratio)


def test_extend_head_dim_128_block_32(poison):
    check_extend([40, 0], [21, 33], 1, 4, 128, 32, torch.bfloat16, seed=7)


def test_store_kv_skips_padding_slots(poison):
    gen = torch.Generator().manual_seed(3)
    for dtype, heads, dim in [(torch.bfloat16, 2, 64), (torch.float16, 3, 128), (torch.float32, 1, 80)]:
        cache = [_randn(6, 16, heads, dim, dtype=dtype, gen=gen) for _ in range(2)]
        qkv = _randn(10, 4 + 2 * heads, dim, dtype=dtype, gen=gen)
        k, v = qkv[:, 4:4 + heads], qkv[:, 4 + heads:]
        slots = torch.randperm(96, generator=gen)[:10].to(DEVICE)
        slots[[2, 7]] = -1
        expected = [c.clone() for c in cache]
        ref.store_kv(k, v, *expected, slots)
        K.store_kv(k, v, *cache, slots)
        assert torch.equal(cache[0], expected[0]) and torch.equal(cache[1], expected[1])


def test_paged_attention_mixed_batch_through_backend(poison):
    """Decodes then extends in one step, split the way engine.attention.attend_to_cache splits them."""
    gen = torch.Generator().manual_seed(11)
    heads, kv_heads, dim = 8, 2, 64
    old, new = [40, 16, 3, 20], [1, 1, 18, 5]
    kv = PagedKV([o + n for o, n in zip(old, new)], 16, kv_heads, dim, torch.bfloat16, gen)
    slots = torch.cat([kv.slots(s, o, o + n) for s, (o, n) in enumerate(zip(old, new))])
    kv.k_cache.view(-1, kv_heads, dim)[slots] = float("nan")
    kv.v_cache.view(-1, kv_heads, dim)[slots] = float("nan")
    q, k, v = (_randn(sum(new), h, dim, dtype=torch.bfloat16, gen=gen) for h in (heads, kv_heads, kv_heads))
    meta = ref.AttentionMetadata(
        slot_mapping=slots, block_tables=kv.block_tables,
        seq_lens=torch.tensor([o + n for o, n in zip(old, new)], dtype=torch.int32, device=DEVICE),
        query_start_loc=torch.tensor([0, 1, 2, 20, 25], dtype=torch.int32, device=DEVICE),
        num_decodes=2, num_decode_tokens=2, max_query_len=18, max_seq_len=45)
    results = []
    for backend in (ref.TorchAttentionBackend, K.TritonAttentionBackend):
        caches = kv.k_cache.clone(), kv.v_cache.clone()
        backend.store_kv(k, v, *caches, meta.slot_mapping)
        results.append((ref.attend_to_cache(backend, q, *caches, meta, dim ** -0.5), caches))
    (want, want_caches), (out, caches) = results
    assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(caches, want_caches))
    assert torch.isfinite(out).all() and rel_err(out, want) <= 1e-2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_matches_layer(poison, dtype, hidden):
    gen = torch.Generator().manual_seed(hidden)
    layer = RMSNorm(hidden, 1e-6).to(DEVICE)
    layer.weight.data = _randn(hidden, dtype=dtype, gen=gen)
    x, residual = _randn(5, 3, hidden, dtype=dtype, gen=gen), _randn(5, 3, hidden, dtype=dtype, gen=gen)
    out = K.rms_norm(x, layer.weight, 1e-6)
    assert out.shape == x.shape and rel_err(out, layer(x)) <= HELPER_TOL[dtype]
    normed, summed = K.rms_norm(x, layer.weight, 1e-6, residual)
    want_normed, want_summed = layer(x, residual)
    if HAS_CUDA or dtype != torch.bfloat16:
        assert torch.equal(summed, want_summed)
    assert rel_err(summed, want_summed) <= HELPER_TOL[dtype]
    assert rel_err(normed, want_normed) <= HELPER_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_matches_layer(poison, dtype, head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    layer = RotaryEmbedding(head_dim, 512, 1e6).to(DEVICE)
    qkv = _randn(9, 6 + 2 + 2, head_dim, dtype=dtype, gen=gen)
    q, k = qkv[:, :6], qkv[:, 6:8]
    positions = torch.randint(0, 512, (9,), generator=gen).to(DEVICE)
    q_out, k_out = K.rotary(positions, q, k, layer.cos_sin_cache)
    want_q, want_k = layer(positions, q.double(), k.double())
    assert rel_err(q_out, want_q) <= HELPER_TOL[dtype] and rel_err(k_out, want_k) <= HELPER_TOL[dtype]
    assert rel_err(q_out, layer(positions, q, k)[0]) <= TOL[dtype]
    flat_q, flat_k = K.rotary(positions, q.flatten(1), k.flatten(1), layer.cos_sin_cache)
    assert flat_q.shape == (9, 6 * head_dim) and torch.equal(flat_q.view_as(q_out), q_out)
    assert torch.equal(flat_k.view_as(k_out), k_out)


def rotary_then_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         caches: tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> torch.Tensor:
    """The two launches K.rotary_store_kv replaces."""
    q_out, k_out = K.rotary(positions, q, k, cos_sin_cache)
    K.store_kv(k_out, v, *caches, slots)
    return q_out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(28, 4, 128), (16, 8, 64), (9, 3, 64), (4, 4, 80)])
@pytest.mark.parametrize("qk_normed", [False, True], ids=["qkv-views", "qk-contiguous"])
def test_rotary_store_kv_matches_rotary_then_store_kv(poison, dtype, heads, kv_heads, head_dim, qk_normed):
    """Bit for bit: q_out as rotary writes it, both caches as rotary + store_kv leave them, padding slots untouched."""
    gen = torch.Generator().manual_seed(heads * head_dim + qk_normed)
    layer = RotaryEmbedding(head_dim, 4096, 1e6).to(DEVICE)
    tokens = 11
    qkv = _randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, gen=gen)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = (t.view(tokens, -1, head_dim) for t in (q, k, v))  # strided views, as Attention.forward makes them
    if qk_normed:  # Qwen3: q_norm / k_norm hand over new contiguous tensors, v stays a view
        q, k = q.contiguous(), k.contiguous()
    positions = torch.randint(0, 4096, (tokens,), generator=gen).to(DEVICE)
    slots = torch.randperm(5 * 16, generator=gen)[:tokens].to(DEVICE)
    slots[[0, 6, 10]] = -1
    caches = tuple(_randn(5, 16, kv_heads, head_dim, dtype=dtype, gen=gen) for _ in range(2))
    want_caches = tuple(c.clone() for c in caches)
    want_q = rotary_then_store_kv(positions, q, k, v, want_caches, slots, layer.cos_sin_cache)
    q_out = K.rotary_store_kv(positions, q, k, v, *caches, slots, layer.cos_sin_cache)
    assert q_out.shape == q.shape and q_out.dtype == dtype and torch.equal(q_out, want_q)
    assert torch.equal(caches[0], want_caches[0]) and torch.equal(caches[1], want_caches[1])
    empty = K.rotary_store_kv(positions[:0], q[:0], k[:0], v[:0], *caches, slots[:0], layer.cos_sin_cache)
    assert empty.shape == (0, heads, head_dim)


def _qk_norm_case(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, tokens: int = 11):
    """Strided q/k/v views of one qkv tensor, padding slots, random norm weights: a Qwen3 step's kernel inputs."""
    gen = torch.Generator().manual_seed(heads * head_dim + kv_heads)
    layer = RotaryEmbedding(head_dim, 4096, 1e6).to(DEVICE)
    qkv = _randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, gen=gen) * 3
    q, k, v = (t.view(tokens, -1, head_dim) for t in qkv.split([heads * head_dim, kv_heads * head_dim,
                                                                kv_heads * head_dim], dim=-1))
    norms = {"q_norm_weight": _randn(head_dim, dtype=dtype, gen=gen),
             "k_norm_weight": _randn(head_dim, dtype=dtype, gen=gen), "eps": 1e-6}
    positions = torch.randint(0, 4096, (tokens,), generator=gen).to(DEVICE)
    slots = torch.randperm(5 * 16, generator=gen)[:tokens].to(DEVICE)
    slots[[0, 6, 10]] = -1
    caches = tuple(_randn(5, 16, kv_heads, head_dim, dtype=dtype, gen=gen) for _ in range(2))
    return (positions, q, k, v, slots, layer.cos_sin_cache), norms, caches


def qk_norm_then_rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 caches: tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor,
                                 cos_sin_cache: torch.Tensor, q_norm_weight: torch.Tensor,
                                 k_norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The three launches (q norm, k norm, rotary + store) that one K.rotary_store_kv with norm weights replaces."""
    q, k = K.rms_norm(q, q_norm_weight, eps), K.rms_norm(k, k_norm_weight, eps)
    return K.rotary_store_kv(positions, q, k, v, *caches, slots, cos_sin_cache)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 8, 128), (28, 4, 128), (16, 8, 64), (28, 4, 64),
                                                     (4, 4, 80)])
def test_rotary_store_kv_with_qk_norm_matches_rms_norm_then_rotary_store_kv(poison, dtype, heads, kv_heads, head_dim):
    """Bit for bit: each head reduced in rms_norm's order, rounded where rms_norm and rotary round."""
    (positions, q, k, v, slots, cos_sin), norms, caches = _qk_norm_case(dtype, heads, kv_heads, head_dim)
    want_caches = tuple(c.clone() for c in caches)
    want_q = qk_norm_then_rotary_store_kv(positions, q, k, v, want_caches, slots, cos_sin, **norms)
    q_out = K.rotary_store_kv(positions, q, k, v, *caches, slots, cos_sin, **norms)
    assert q_out.shape == q.shape and q_out.dtype == dtype and torch.equal(q_out, want_q)
    assert torch.equal(caches[0], want_caches[0]) and torch.equal(caches[1], want_caches[1])
    assert not torch.equal(q_out, K.rotary_store_kv(positions, q, k, v, *want_caches, slots, cos_sin)), "not normed"
    empty = K.rotary_store_kv(positions[:0], q[:0], k[:0], v[:0], *caches, slots[:0], cos_sin, **norms)
    assert empty.shape == (0, heads, head_dim)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(28, 4, 128), (16, 8, 128), (9, 3, 64)])
@pytest.mark.parametrize("tokens", [1, 3])
def test_rotary_store_kv_spreads_few_tokens_heads_over_programs(poison, heads, kv_heads, head_dim, tokens):
    """A decode step's few tokens take several programs each (4 or 8 heads apiece): still bit for bit, with and
    without the q/k norm, padding slots untouched."""
    from engine.kernels.rotary_kv import heads_per_program

    assert heads_per_program(heads, True, tokens, 4) == 4 and heads_per_program(heads, False, tokens, 4) <= 8
    (positions, q, k, v, slots, cos_sin), norms, caches = _qk_norm_case(torch.bfloat16, heads, kv_heads, head_dim,
                                                                        tokens=11)
    positions, q, k, v, slots = positions[:tokens], q[:tokens], k[:tokens], v[:tokens], slots[:tokens]
    for extra, unfused in ((norms, qk_norm_then_rotary_store_kv), ({}, None)):
        got_caches, want_caches = tuple(c.clone() for c in caches), tuple(c.clone() for c in caches)
        if unfused is None:
            want_q = rotary_then_store_kv(positions, q, k, v, want_caches, slots, cos_sin)
        else:
            want_q = unfused(positions, q, k, v, want_caches, slots, cos_sin, **extra)
        q_out = K.rotary_store_kv(positions, q, k, v, *got_caches, slots, cos_sin, **extra)
        assert torch.equal(q_out, want_q)
        assert torch.equal(got_caches[0], want_caches[0]) and torch.equal(got_caches[1], want_caches[1])


def test_rotary_store_kv_with_norm_weights_of_another_dtype_normalises_as_rms_norm():
    """fp32 weights promote rms_norm's bf16 output to fp32, so the norms run on their own, as before the fusion."""
    (positions, q, k, v, slots, cos_sin), norms, caches = _qk_norm_case(torch.bfloat16, 4, 2, 64)
    norms |= {name: norms[name].float() for name in ("q_norm_weight", "k_norm_weight")}
    want_caches = tuple(c.clone() for c in caches)
    want_q = qk_norm_then_rotary_store_kv(positions, q, k, v, want_caches, slots, cos_sin, **norms)
    q_out = K.rotary_store_kv(positions, q, k, v, *caches, slots, cos_sin, **norms)
    assert q_out.dtype == torch.float32 and torch.equal(q_out, want_q)
    assert torch.equal(caches[0], want_caches[0]) and torch.equal(caches[1], want_caches[1])


def test_rotary_store_kv_names_the_problem():
    cos_sin = RotaryEmbedding(64, 16, 1e4).cos_sin_cache.to(DEVICE)
    q, k = torch.zeros(3, 8, 64, device=DEVICE), torch.zeros(3, 2, 64, device=DEVICE)
    cache = torch.zeros(2, 16, 2, 64, device=DEVICE)
    slots = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    positions = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="k and v alike"):
        K.rotary_store_kv(positions, q, k, k[:, :1], cache, cache, slots, cos_sin)
    with pytest.raises(ValueError, match="must be"):
        K.rotary_store_kv(positions, q.flatten(1), k, k, cache, cache, slots, cos_sin)
    with pytest.raises(ValueError, match="does not match cache"):
        K.rotary_store_kv(positions, q, k, k, cache[:, :, :1].contiguous(), cache[:, :, :1].contiguous(), slots,
                          cos_sin)
    weight = torch.ones(64, device=DEVICE)
    with pytest.raises(ValueError, match="go together"):
        K.rotary_store_kv(positions, q, k, k, cache, cache, slots, cos_sin, q_norm_weight=weight, eps=1e-6)
    with pytest.raises(ValueError, match="go together"):
        K.rotary_store_kv(positions, q, k, k, cache, cache, slots, cos_sin, q_norm_weight=weight,
                          k_norm_weight=weight)
    with pytest.raises(ValueError, match="must be \\[64\\]"):
        K.rotary_store_kv(positions, q, k, k, cache, cache, slots, cos_sin, q_norm_weight=weight,
                          k_norm_weight=weight[:32], eps=1e-6)


def _tiny_model(arch: str, dtype: torch.dtype, num_blocks: int, block_size: int) -> torch.nn.Module:
    from engine.config import ModelConfig
    from engine.loader import build_model, init_random

    config = ModelConfig(architecture=arch, vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1e4,
                         qk_norm=arch == "Qwen3ForCausalLM")
    model = build_model(config, dtype, DEVICE)
    init_random(model, seed=0)
    gen = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith(("q_norm.weight", "k_norm.weight")):  # init_random leaves norm weights at 1
            param.data = 1 + _randn(*param.shape, dtype=dtype, gen=gen) / 2
    for layer in model.modules():
        if hasattr(layer, "k_cache"):
            layer.k_cache = torch.zeros(num_blocks, block_size, 2, 32, dtype=dtype, device=DEVICE)
            layer.v_cache = torch.zeros_like(layer.k_cache)
    return model


def _prefill_then_padded_decode(model: torch.nn.Module, backend: object) -> list[torch.Tensor]:
    """Two sequences (5 and 3 prompt tokens) prefilled, then one decode step padded to 3 rows as a CUDA graph pads it.

    Returns the hidden states of both steps and every layer's caches afterwards."""
    device = DEVICE
    i32 = dict(dtype=torch.int32, device=device)
    tables = torch.tensor([[2, 0], [1, 3], [0, 0]], **i32)
    for layer in model.modules():
        if hasattr(layer, "k_cache"):
            layer.backend = backend
    prefill = ref.AttentionMetadata(
        slot_mapping=torch.tensor([32, 33, 34, 35, 36, 16, 17, 18], device=device), block_tables=tables[:2],
        seq_lens=torch.tensor([5, 3], **i32), query_start_loc=torch.tensor([0, 5, 8], **i32),
        num_decodes=0, num_decode_tokens=0, max_query_len=5, max_seq_len=5)
    decode = ref.AttentionMetadata(
        slot_mapping=torch.tensor([37, 19, -1], device=device), block_tables=tables,
        seq_lens=torch.tensor([6, 4, 0], **i32), query_start_loc=torch.tensor([0, 1, 2, 3], **i32),
        num_decodes=3, num_decode_tokens=3, max_query_len=1, max_seq_len=6)
    ids = torch.tensor([11, 12, 13, 14, 15, 21, 22, 23], device=device)
    with torch.inference_mode():
        hidden = [model(ids, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2], device=device), prefill),
                  model(torch.tensor([16, 24, 0], device=device), torch.tensor([5, 3, 0], device=device), decode)]
    caches = [c.clone() for m in model.modules() if hasattr(m, "k_cache") for c in (m.k_cache, m.v_cache)]
    return hidden + caches


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_model_uses_the_fused_rotary_store_kv_on_the_triton_backend(monkeypatch, arch):
    """The CUDA backend takes one launch per layer for (Qwen3's q/k RMSNorm +) rotary + store; the result equals the
    unfused path's bit for bit."""
    from engine.layers import rotary as rotary_layer

    assert ref.get_backend(torch.device("cuda")).name == "triton"
    assert hasattr(ref.get_backend(torch.device("cuda")), "rotary_store_kv")
    assert not hasattr(ref.get_backend(torch.device("cpu")), "rotary_store_kv"), "the CPU reference path is unfused"
    qwen3 = arch == "Qwen3ForCausalLM"

    class UnfusedBackend:  # the Triton backend as it was before the fusions
        name = "triton-unfused"
        store_kv = staticmethod(K.store_kv)
        paged_decode = staticmethod(K.paged_decode)
        paged_extend = staticmethod(K.paged_extend)

    def rotary_as_on_cuda(self, positions, q, k):
        return K.rotary(positions, q, k, self.cos_sin_cache)

    def norm_as_on_cuda(self, x, residual=None):
        return K.rms_norm(x, self.weight, self.eps, residual)

    monkeypatch.setattr(RMSNorm, "forward", norm_as_on_cuda)
    norm_widths = record_launches(monkeypatch, sys.modules[K.rms_norm.__module__], "_rms_norm_kernel", "N")
    with monkeypatch.context() as patch:
        patch.setattr(rotary_layer.RotaryEmbedding, "forward", rotary_as_on_cuda)
        want = _prefill_then_padded_decode(_tiny_model(arch, torch.bfloat16, 4, 16), UnfusedBackend)
    assert (32 in norm_widths) == qwen3, "the unfused Qwen3 path launches q/k RMSNorm over heads of 32"
    hidden_norms = [n for n in norm_widths if n != 32]

    fused_calls = []

    def counted_rotary_store_kv(*args, **norms):
        fused_calls.append((args[1].shape, sorted(norms)))
        return K.rotary_store_kv(*args, **norms)

    def unexpected(*args, **kwargs):
        raise AssertionError("the fused backend must not run q/k norm, rotary or store_kv separately")

    backend = K.TritonAttentionBackend
    monkeypatch.setattr(backend, "rotary_store_kv", staticmethod(counted_rotary_store_kv))
    monkeypatch.setattr(backend, "store_kv", staticmethod(unexpected))
    monkeypatch.setattr(rotary_layer.RotaryEmbedding, "forward", unexpected)
    norm_widths.clear()
    got = _prefill_then_padded_decode(_tiny_model(arch, torch.bfloat16, 4, 16), backend)
    assert norm_widths == hidden_norms, "no RMSNorm launch over heads: q/k norm runs inside rotary_store_kv"
    norm_args = ["eps", "k_norm_weight", "q_norm_weight"] if qwen3 else []
    assert fused_calls == [((8, 4, 32), norm_args)] * 2 + [((3, 4, 32), norm_args)] * 2, "one call per layer and step"
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert got[1][2].isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_and_mul_matches_layer(poison, dtype):
    gen = torch.Generator().manual_seed(5)
    x = _randn(7, 2 * 1500, dtype=dtype, gen=gen) * 4
    out = K.silu_and_mul(x)
    assert out.shape == (7, 1500) and rel_err(out, SiluAndMul()(x)) <= HELPER_TOL[dtype]


def _kept_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    p = torch.softmax(logits.double() / temperature, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    kept = p[order][:top_k] / p[order][:top_k].sum()
    mass_before = kept.cumsum(0) - kept
    keep[order[:top_k][mass_before < top_p]] = True
    q = torch.where(keep, p, 0.0)
    return q / q.sum()


def test_sampler_greedy_rows_take_the_first_maximum(poison):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5000, generator=gen)
    logits[1, [4100, 4999, 17]] = 50.0
    logits[2, 1234] = float("nan")
    logits = logits.to(DEVICE)
    temps = torch.tensor([0.0, 0.0, 0.0, 0.7], device=DEVICE)
    top_ks = torch.tensor([-1, 3, -1, 1], device=DEVICE)
    top_ps = torch.tensor([1.0, 0.5, 1.0, 1.0], device=DEVICE)
    expected = logits.nan_to_num(float("-inf")).argmax(-1)
    assert expected[1] == 17
    for kwargs in ({}, {"filtered": False, "all_greedy": False}):
        ids = K.sample(logits, temps, top_ks, top_ps, torch.Generator(DEVICE).manual_seed(1), **kwargs)
        assert ids.dtype == torch.int64 and ids[:3].tolist() == expected[:3].tolist()
    assert K.sample(logits, temps, top_ks, top_ps)[3] == expected[3], "top_k=1 is greedy at any temperature"
    assert K.sample(logits[:3], temps[:3], top_ks[:3], top_ps[:3], all_greedy=True).tolist() == expected[:3].tolist()


def assert_drawn_from(ids: torch.Tensor, want: torch.Tensor) -> None:
    """No filtered-out token drawn, and a chi-square test over the kept ones at a 1e-4 false-alarm rate."""
    counts = torch.bincount(ids.cpu(), minlength=want.numel()).double()
    assert (counts[want == 0] == 0).all(), f"a filtered-out token was drawn: {counts.tolist()}"
    kept = want > 0
    expected = want[kept] * ids.numel()
    chi2 = ((counts[kept] - expected) ** 2 / expected).sum().item()
    df = max(1, int(kept.sum()) - 1)
    critical = df * (1 - 2 / (9 * df) + 3.72 * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 <= critical, f"chi2 {chi2:.1f} > {critical:.1f}: drawn {counts.tolist()}, expected {expected.tolist()}"


# The first case alone runs in the interpreter: at 600 draws it still fails if the race ignores the temperature,
# top-p is skipped or top-k keeps one token too many.
SAMPLER_CASES = [(4.0, 2.0, 7, 0.95), (2.0, 0.8, 6, 0.9), (2.0, 1.3, -1, 0.7), (2.0, 0.5, 4, 1.0)]


@pytest.mark.parametrize("spread,temperature,top_k,top_p", SAMPLER_CASES if HAS_CUDA else SAMPLER_CASES[:1])
def test_sampler_draws_from_the_filtered_distribution(spread, temperature, top_k, top_p):
    rows, vocab = (20000 if HAS_CUDA else 600), 12
    logits = torch.linspace(spread, -spread, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(2))]
    batch = logits.expand(rows, vocab).contiguous().to(DEVICE)
    full = lambda v, dtype: torch.full((rows,), v, dtype=dtype, device=DEVICE)  # noqa: E731
    args = (batch, full(temperature, torch.float32), full(top_k, torch.int64), full(top_p, torch.float32))
    ids = K.sample(*args, torch.Generator(DEVICE).manual_seed(3))
    again = K.sample(*(a[:40] for a in args), torch.Generator(DEVICE).manual_seed(3))
    assert torch.equal(ids[:40], again), "the same generator state must give the same draws"
    assert_drawn_from(ids, _kept_distribution(logits, temperature, top_k if top_k > 0 else vocab, top_p))


def test_sampler_torch_fallback_draws_from_the_filtered_distribution():
    from engine.kernels.sampler import _sample_torch, keep_thresholds

    rows, vocab = 4000, 10
    logits = torch.linspace(1.5, -1.5, vocab)
    temps, top_ks, top_ps = torch.full((rows,), 0.9), torch.full((rows,), 5), torch.full((rows,), 0.8)
    batch = logits.expand(rows, vocab).contiguous()
    thresholds = keep_thresholds(batch, temps, top_ks, top_ps)
    ids = _sample_torch(batch, temps, thresholds, torch.Generator().manual_seed(4), all_greedy=False)
    assert_drawn_from(ids, _kept_distribution(logits, 0.9, 5, 0.8))


def test_bad_inputs_name_the_problem():
    q = torch.zeros(2, 6, 64, device=DEVICE)
    cache = torch.zeros(4, 16, 4, 64, device=DEVICE)
    lens = torch.ones(2, dtype=torch.int32, device=DEVICE)
    tables = torch.zeros(2, 1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="6 heads"):
        K.paged_decode(q, cache, cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="int32"):
        K.paged_decode(q[:, :4], cache, cache, tables.long(), lens, 1.0)
    with pytest.raises(ValueError, match="out must be"):
        K.paged_decode(q[:, :4], cache, cache, tables, lens, 1.0, out=torch.empty(3, 4, 64, device=DEVICE))
    with pytest.raises(ValueError, match="even"):
        K.silu_and_mul(torch.zeros(2, 7, device=DEVICE))


@pytest.mark.slow
def test_attention_kernels_compile_for_hopper_without_spills(tmp_path):
    """Compiles for sm_90 with triton's own ptxas, no GPU needed: tensor-core dots, 16-byte loads, no local memory."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("triton's NVIDIA tools are not installed")
    report_path = tmp_path / "sm90.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "benchmarks/kernels_sm90.py", "--only", "qwen2.5-7b", "--json", str(report_path)],
                   cwd=root, check=True, capture_output=True)
    report = json.loads(report_path.read_text())
    assert len(report) == 13
    for name, r in report.items():
        assert r["local"] == 0 and r["stack"] == 0 and not r["ops"].get("LDL"), f"{name} spills to local memory"
        if name.startswith(("decode", "extend")):
            assert r["ops"].get("LDGSTS.E.BYPASS.128"), f"{name} does not stream K/V with 16-byte async copies"
        if name.startswith("row_gemv"):
            assert r["ops"].get("LDG.E.128"), f"{name} does not read its weights 16 bytes at a time"
            assert r["wide_loads_before_wait"], f"{name} waits on the previous kernel before loading weights"
        if name.startswith(("row_gemv", "decode", "merge", "rope", "silu")):
            assert r["ops"].get("ACQBULK") == 1 and r["ops"].get("PREEXIT") == 1, f"{name} is not launched with PDL"
    for name, r in report.items():
        if name.startswith("decode"):
            assert any(op.startswith("HMMA") for op in r["ops"]), f"{name} does not use the tensor cores"
        if name.startswith("extend"):
            assert any(op.startswith("HGMMA") for op in r["ops"]), f"{name} does not use wgmma"


# Full model shapes on the GPU ------------------------------------------------------------------------------------
SHAPES = {"qwen3-0.6b": (16, 8, 128), "qwen2.5-7b": (28, 4, 128), "qwen2.5-32b": (40, 8, 128), "smollm2": (9, 3, 64)}


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch,block_size", [(1, 16), (8, 32), (64, 16)])
def test_gpu_decode_full_size(poison, shape, dtype, batch, block_size):
    heads, kv_heads, dim = SHAPES[shape]
    gen = torch.Generator().manual_seed(batch)
    lens = torch.randint(1, 2049, (batch,), generator=gen).tolist()
    if batch > 1:
        lens[1] = 0
    check_decode(lens, kv_heads, heads // kv_heads, dim, block_size, dtype, seed=batch)


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cached", [0, 2000])
def test_gpu_extend_full_size(poison, shape, cached):
    heads, kv_heads, dim = SHAPES[shape]
    check_extend([cached, 7], [1024, 300], kv_heads, heads // kv_heads, dim, 16, torch.bfloat16, seed=cached)


@gpu
@needs_cuda
def test_gpu_decode_replays_in_a_cuda_graph_without_host_sync():
    heads, kv_heads, dim = SHAPES["qwen2.5-7b"]
    gen = torch.Generator().manual_seed(0)
    kv = PagedKV([2048] * 8, 16, kv_heads, dim, torch.bfloat16, gen)
    q = _randn(8, heads, dim, dtype=torch.bfloat16, gen=gen)
    lens = torch.full((8,), 2048, dtype=torch.int32, device=DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, lens, dim ** -0.5)
    torch.cuda.set_sync_debug_mode("error")
    try:
        K.paged_decode(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = K.paged_decode(*args)
    for new_lens in ([5, 0, 17, 2048, 1, 900, 33, 16], [2048] * 8):
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        q.copy_(_randn(*q.shape, dtype=torch.bfloat16, gen=gen))
        graph.replay()
        live = lens > 0
        expected = ref.paged_decode(q[live], kv.k_cache, kv.v_cache, kv.block_tables[live], lens[live], dim ** -0.5)
        assert rel_err(out[live], expected) <= 1e-2 and (out[~live] == 0).all()


@gpu
@needs_cuda
def test_gpu_fused_helpers_and_sampler_full_size():
    gen = torch.Generator().manual_seed(0)
    x, residual = _randn(64, 5120, dtype=torch.bfloat16, gen=gen), _randn(64, 5120, dtype=torch.bfloat16, gen=gen)
    layer = RMSNorm(5120, 1e-6).to(DEVICE, torch.bfloat16)
    layer.weight.data = _randn(5120, dtype=torch.bfloat16, gen=gen)
    normed, summed = K.rms_norm(x, layer.weight, 1e-6, residual)
    assert torch.equal(summed, x + residual) and rel_err(normed, layer(x, residual)[0]) <= 3e-3
    gate_up = _randn(64, 2 * 27648, dtype=torch.bfloat16, gen=gen)
    assert rel_err(K.silu_and_mul(gate_up), SiluAndMul()(gate_up)) <= 3e-3
    logits = torch.randn(64, 151936, generator=gen).to(DEVICE)
    temps = torch.tensor([0.0, 0.7] * 32, device=DEVICE)
    top_ks = torch.tensor([-1, 50] * 32, device=DEVICE)
    top_ps = torch.full((64,), 0.9, device=DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        ids = K.sample(logits, temps, top_ks, top_ps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(ids[0::2], logits[0::2].argmax(-1))
    top50 = logits[1::2].topk(50, dim=-1).indices
    assert (top50 == ids[1::2, None]).any(-1).all(), "a sampled token fell outside its row's top-k"


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qk_norm", [False, True], ids=["rope", "qk_norm+rope"])
def test_gpu_rotary_store_kv_replays_in_a_cuda_graph_without_host_sync(shape, qk_norm):
    """Compiled at full size, the result still equals the unfused launches' bit for bit (Qwen3: q/k rms_norm first)."""
    heads, kv_heads, dim = SHAPES[shape]
    gen = torch.Generator().manual_seed(1)
    norms = {"q_norm_weight": _randn(dim, dtype=torch.bfloat16, gen=gen),
             "k_norm_weight": _randn(dim, dtype=torch.bfloat16, gen=gen), "eps": 1e-6} if qk_norm else {}
    layer = RotaryEmbedding(dim, 32768, 1e6).to(DEVICE)
    tokens = 64
    qkv = _randn(tokens, heads + 2 * kv_heads, dim, dtype=torch.bfloat16, gen=gen)
    q, k, v = qkv[:, :heads], qkv[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]
    positions = torch.zeros(tokens, dtype=torch.int64, device=DEVICE)
    slots = torch.full((tokens,), -1, dtype=torch.int64, device=DEVICE)
    caches = tuple(_randn(40, 16, kv_heads, dim, dtype=torch.bfloat16, gen=gen) for _ in range(2))
    args = (positions, q, k, v, *caches, slots, layer.cos_sin_cache)
    torch.cuda.set_sync_debug_mode("error")
    try:
        K.rotary_store_kv(*args, **norms)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out = K.rotary_store_kv(*args, **norms)
    for padding in (0, 9):
        positions.copy_(torch.randint(0, 32768, (tokens,), generator=gen))
        new_slots = torch.randperm(40 * 16, generator=gen)[:tokens]
        new_slots[tokens - padding:] = -1
        slots.copy_(new_slots)
        qkv.copy_(_randn(*qkv.shape, dtype=torch.bfloat16, gen=gen))
        want_caches = tuple(c.clone() for c in caches)
        unfused = qk_norm_then_rotary_store_kv if qk_norm else rotary_then_store_kv
        want_q = unfused(positions, q, k, v, want_caches, slots, layer.cos_sin_cache, **norms)
        graph.replay()
        assert torch.equal(q_out, want_q)
        assert torch.equal(caches[0], want_caches[0]) and torch.equal(caches[1], want_caches[1])


def test_a_kernel_compiled_after_start_up_is_logged_with_its_specialization(caplog):
    from triton import knobs

    from engine.kernels.late_compiles import watch_late_compiles

    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    try:
        watch = watch_late_compiles()
        assert watch is not None
        # Called the way triton.runtime.jit calls its hooks around a compile.
        hook_args = dict(key=("k",), repr="_decode_split_kernel[num_warps=4](num_splits: i32)", fn=None, compile={},
                         is_manual_warmup=False, already_compiled=False)
        with caplog.at_level("WARNING", logger="engine"):
            assert knobs.runtime.jit_cache_hook(**hook_args) is None  # None: Triton goes on and compiles
            knobs.runtime.jit_post_compile_hook(**hook_args)
        assert watch.seen == [hook_args["repr"]]
        assert "_decode_split_kernel[num_warps=4](num_splits: i32)" in caplog.text and "after start-up" in caplog.text
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved


def _specialization(fn, *args, **kwargs) -> str:
    """The key triton's JIT binder gives these arguments for sm_90: equal keys share one compiled variant."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if not isinstance(fn, triton.runtime.JITFunction):  # the interpreter's wrapper keeps the decorator's arguments
        fn = triton.runtime.JITFunction(fn.fn, **fn.kwargs)
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
    return str(binder(*args, **kwargs)[1])


def test_attention_kernels_compile_once_whatever_a_steps_make_up():
    """Block-table width, split count and the offsets of a mixed step's halves vary from step to step; a variant
    specialized on them compiles mid-serving (a 1.29 s stall was seen on an H200). One key for all of them."""
    from engine.kernels import decode_attention as dec, extend_attention as ext

    q = torch.empty(64, 28, 128, dtype=torch.bfloat16)
    cache = torch.empty(100, 16, 4, 128, dtype=torch.bfloat16)

    def decode_keys(decodes: int, width: int, splits: int) -> tuple[str, str]:
        tables = torch.zeros(decodes + 3, width, dtype=torch.int32)[:decodes]
        lens = torch.zeros(decodes + 3, dtype=torch.int32)[:decodes]
        parts, lse = torch.empty(decodes, 28, splits, 128), torch.empty(decodes, 28, splits)
        split = _specialization(
            dec._decode_split_kernel, q, cache, cache, tables, lens, q, parts, lse, 0.1, q.stride(0), q.stride(1),
            q.stride(0), q.stride(1), tables.stride(0), splits, NUM_HEADS=28, NUM_KV_HEADS=4, HEAD_DIM=128,
            BLOCK_SIZE=16, BLOCK_G=16, BLOCK_D=128, BLOCK_N=64, DIRECT=False, UPCAST=False, PRECISION="ieee",
            PDL=True, num_warps=4, num_stages=2)
        merge = _specialization(dec._decode_merge_kernel, parts, lse, q, q.stride(0), q.stride(1), splits,
                                NUM_HEADS=28, HEAD_DIM=128, BLOCK_D=128, BLOCK_S=dec.MAX_SPLITS, PDL=True,
                                num_warps=2)
        return split, merge

    def extend_key(decodes: int, width: int) -> str:
        tables = torch.zeros(decodes + 5, width, dtype=torch.int32)[decodes:]
        starts = torch.zeros(decodes + 6, dtype=torch.int32)[decodes:]
        lens = torch.zeros(decodes + 5, dtype=torch.int32)[decodes:]
        return _specialization(
            ext._extend_kernel, q, cache, cache, q, tables, starts, lens, 0.1, q.stride(0), q.stride(1), q.stride(0),
            q.stride(1), tables.stride(0), NUM_HEADS=28, NUM_KV_HEADS=4, HEAD_DIM=128, BLOCK_SIZE=16, BLOCK_D=128,
            BLOCK_M=128, BLOCK_N=64, UPCAST=False, PRECISION="ieee", num_warps=8, num_stages=3)

    steps = [(1, 1, 2), (1, 16, 4), (1, 17, 5), (3, 64, 16), (2, 66, 17), (16, 80, 32)]
    assert len({decode_keys(*s) for s in steps}) == 1
    assert len({extend_key(d, w) for d, w in [s[:2] for s in steps] + [(0, 1), (4, 64), (0, 17)]}) == 1
