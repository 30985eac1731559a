"""Greedy output of the engine is token-identical to Hugging Face generate()."""
import random

import pytest
import torch

from engine import LLM, SamplingParams
from tests.conftest import requires_demo
from tests.tiny_models import hf_greedy, make_tiny_checkpoint

NEW_TOKENS = 24
LENGTHS = (1, 15, 16, 17, 33, 50)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_tiny_checkpoint(request.param, str(path))
    rng = random.Random(len(request.param))
    prompts = [[rng.randrange(3, 512) for _ in range(n)] for n in LENGTHS]
    shared = prompts[-1][:40]
    prompts += [shared + [rng.randrange(3, 512) for _ in range(k)] for k in (3, 9)]
    refs = [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    return str(path), prompts, refs


# min_tokens masks EOS as HF's min_new_tokens does, so both run the full length.
FIXED = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_mixed_batch_matches_hf(tiny, prefix_caching):
    path, prompts, refs = tiny
    llm = LLM(path, dtype="float32", device="cpu", block_size=16, enable_prefix_caching=prefix_caching)
    outs = llm.generate(prompts, FIXED)
    assert [o.token_ids for o in outs] == refs
    assert all(o.finish_reason == "length" for o in outs)
    stats = llm.engine.stats()
    assert stats.kv_blocks_used == 0
    if prefix_caching:
        again = llm.generate(prompts[-2:], FIXED)
        assert [o.token_ids for o in again] == refs[-2:]
        assert all(o.metrics.num_cached_tokens >= 32 for o in again)
    else:
        assert llm.engine.stats().prefix_cache_hits == 0


def test_preemption_with_tiny_pool_matches_hf(tiny):
    path, prompts, refs = tiny
    llm = LLM(path, dtype="float32", device="cpu", block_size=16, kv_cache_tokens=96, max_num_batched_tokens=40)
    outs = llm.generate(prompts, FIXED)
    assert [o.token_ids for o in outs] == refs
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0
    assert stats.kv_blocks_used == 0


def test_chunked_prefill_matches_hf(tiny):
    path, prompts, refs = tiny
    llm = LLM(path, dtype="float32", device="cpu", block_size=16, max_num_batched_tokens=7)
    outs = llm.generate(prompts, FIXED)
    assert [o.token_ids for o in outs] == refs


@requires_demo
def test_smollm2_gguf_matches_hf():
    import os

    from transformers import AutoModelForCausalLM

    from engine.demo import demo_model_path

    path = demo_model_path()
    llm = LLM("demo", dtype="float32", device="cpu")
    tok = llm.tokenizer
    chats = ["What is the capital of France?", "Write a haiku about the sea."]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": c}])) for c in chats]
    prompts.append(tok.encode("The history of the printing press begins"))
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32))
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=2)
        assert out.token_ids == ref[0, len(prompt):].tolist()
    assert "Paris" in outs[0].text
