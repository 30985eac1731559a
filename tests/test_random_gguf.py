"""scripts/random_gguf.py writes a Qwen2 GGUF that the engine and Hugging Face both read as the same model."""
import importlib.util
from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams
from tests.conftest import requires_demo

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "random_gguf.py"
TINY = dict(model_type="qwen2", vocab_size=49160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=False)


def load_script():
    spec = importlib.util.spec_from_file_location("random_gguf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_demo
def test_random_qwen2_gguf_loads_the_same_in_engine_and_hf(tmp_path):
    from engine.demo import demo_model_path

    out = tmp_path / "tiny-qwen2-f16.gguf"
    load_script().write(TINY, demo_model_path(), str(out), seed=3)
    llm = LLM(str(out), dtype="float32", device="cpu", kv_cache_tokens=1024)
    cfg = llm.engine.model_config
    assert (cfg.architecture, cfg.num_hidden_layers, cfg.num_key_value_heads) == ("Qwen2ForCausalLM", 2, 2)
    assert cfg.attention_bias and not cfg.tie_word_embeddings
    assert cfg.vocab_size == 49160, "the vocabulary is padded to the embedding rows, as HF-to-GGUF conversion does"
    tok = llm.tokenizer
    assert tok.decode(tok.encode("The tea ceremony, 1906.")) == "The tea ceremony, 1906."
    prompts = [tok.encode("Hello there"), tok.encode("A longer prompt that crosses a sixteen-token block, surely.")]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12, min_tokens=12))

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    for prompt, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                              pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert o.token_ids == ref[0, len(prompt):].tolist()


@requires_demo
def test_vocabulary_larger_than_the_config_is_refused(tmp_path):
    from engine.demo import demo_model_path

    with pytest.raises(SystemExit, match="vocab_size"):
        load_script().write({**TINY, "vocab_size": 1000}, demo_model_path(), str(tmp_path / "x.gguf"))
