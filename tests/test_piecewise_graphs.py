"""Prefill and mixed steps as pieces between attention calls (engine.piecewise_graphs): on the CPU the pieces run
eagerly, and must give the model's own forward pass bit for bit; graph capture itself is checked on a GPU."""
import random

import pytest
import torch

from engine import LLM, SamplingParams
from engine.piecewise_graphs import PiecewiseGraphs, capture_sizes

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
ARCHES = [("qwen2", "Qwen2ForCausalLM", {}), ("qwen3", "Qwen3ForCausalLM", {"head_dim": 32}),
          ("llama", "LlamaForCausalLM", {})]


@pytest.mark.parametrize("max_tokens", [1, 8, 16, 100, 512, 2048, 4096, 8192, 12000])
def test_every_step_size_has_a_graph_padding_it_by_at_most_512_tokens(max_tokens):
    sizes = capture_sizes(max_tokens)
    assert sizes == sorted(set(sizes)) and sizes[0] == min(16, max_tokens) and sizes[-1] == max_tokens
    for n in range(1, max_tokens + 1):
        size = next(s for s in sizes if s >= n)
        assert size - n <= max(512, n // 8) and (n <= 512 or size - n < 512), (n, size)
    assert len(sizes) <= 40


def generate(arch: tuple, pieces: bool, prompts: list[list[int]], params: SamplingParams) -> tuple[list, int]:
    model_type, architecture, extra = arch
    llm = LLM.from_config({"model_type": model_type, "architectures": [architecture], **TINY, **extra},
                          dtype="float32", device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=48,
                          max_num_seqs=4)
    runner = llm.engine.runner
    used = []
    if pieces:
        runner.pieces = PiecewiseGraphs(runner.model, runner.config.max_num_batched_tokens, runner.device, None)
        run = runner.pieces.run
        runner.pieces.run = lambda size, n, meta: used.append((size, n)) or run(size, n, meta)
    outs = llm.generate(prompts, params)
    assert all(size >= n for size, n in used)
    return [o.token_ids for o in outs], len(used)


@pytest.mark.parametrize("arch", ARCHES, ids=[a[0] for a in ARCHES])
def test_pieces_give_the_forward_pass_bit_for_bit(arch):
    """Chunked prompts, mixed steps (decodes beside a prompt chunk), a shared prefix and padding to the next size:
    greedy tokens are the eager engine's exactly (the same float32 ops on the CPU, padding rows aside)."""
    rng = random.Random(3)
    shared = [rng.randrange(3, 512) for _ in range(40)]
    prompts = [[rng.randrange(3, 512) for _ in range(n)] for n in (5, 70, 17)] + [shared + [7, 9], shared + [11]]
    params = SamplingParams(temperature=0.0, max_tokens=6, min_tokens=6)
    eager, _ = generate(arch, False, prompts, params)
    pieces, steps = generate(arch, True, prompts, params)
    assert pieces == eager
    assert steps >= 4, "prompt and mixed steps should have gone through the pieces"


def test_a_step_larger_than_every_size_runs_eagerly():
    llm = LLM.from_config({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **TINY}, dtype="float32",
                          device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=64)
    runner = llm.engine.runner
    runner.pieces = PiecewiseGraphs(runner.model, 32, runner.device, None)
    assert runner.pieces.size_for(32) == 32 and runner.pieces.size_for(33) is None
    out = llm.generate([[5] * 60], SamplingParams(temperature=0.0, max_tokens=2))[0]
    assert len(out.token_ids) == 2
