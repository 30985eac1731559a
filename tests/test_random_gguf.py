"""scripts/random_gguf.py writes a Qwen2 GGUF that the engine and Hugging Face both read as the same model."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from tests.conftest import llamacpp_bin, requires_demo

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "random_gguf.py"
QUANTIZE = llamacpp_bin("llama-quantize")
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


TINY_K = {**TINY, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8}


@requires_demo
def test_q4_k_m_blocks_follow_llama_quantize_layout_and_load(tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from engine.demo import demo_model_path

    script = load_script()
    out = tmp_path / "tiny-q4_k_m.gguf"
    script.write(TINY_K, demo_model_path(), str(out), seed=1, qtype="q4_k_m")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    more_bits = [i for i in range(8) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more_bits == [0, 3, 6, 7], "first and last eighth, and every third layer between"
    assert [i for i in range(8) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more_bits
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_q.bias"] == "F32"
    for t in GGUFReader(str(out)).tensors:
        w = dequantize(t.data, t.tensor_type)
        assert np.isfinite(w).all() and (np.abs(w).max() < 0.1 or t.name.endswith("norm.weight")), t.name
        if t.tensor_type.name in ("Q4_K", "Q6_K"):
            assert abs(float(w.mean())) < 0.01 and 0.005 < float(w.std()) < 0.03, (t.name, w.mean(), w.std())
    llm = LLM(str(out), dtype="float32", device="cpu", kv_cache_tokens=256)
    outs = llm.generate([[1, 2, 3, 4]], SamplingParams(temperature=0.0, max_tokens=6, min_tokens=6))
    assert len(outs[0].token_ids) == 6


@pytest.mark.skipif(not QUANTIZE, reason="llama-quantize not built (scripts/build_llamacpp.sh)")
@requires_demo
def test_q4_k_m_layout_matches_llama_quantize(tmp_path):
    """The direct writer picks the same type per tensor as llama-quantize does from the F16 file."""
    import subprocess

    from gguf import GGUFReader

    from engine.demo import demo_model_path

    script = load_script()
    f16, ours, theirs = tmp_path / "f16.gguf", tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    script.write(TINY_K, demo_model_path(), str(f16))
    script.write(TINY_K, demo_model_path(), str(ours), qtype="q4_k_m")
    subprocess.run([QUANTIZE, str(f16), str(theirs), "Q4_K_M"], check=True, capture_output=True)

    def layout(path):
        return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in GGUFReader(str(path)).tensors}

    assert layout(ours) == layout(theirs)


@requires_demo
def test_an_engine_start_parses_the_gguf_once_and_keeps_no_parse(tmp_path, monkeypatch):
    """The config check, the weights and the tokenizer share one parse (seconds for a 49k vocabulary), let go after."""
    import engine.model_loader as loader
    from engine.demo import demo_model_path

    out = tmp_path / "tiny-qwen2-f16.gguf"
    load_script().write(TINY, demo_model_path(), str(out), seed=3)
    parsed: list[str] = []
    real = loader.GGUFFile

    def counting(path: str) -> object:
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(loader, "GGUFFile", counting)
    llm = LLM(str(out), dtype="float32", device="cpu", kv_cache_tokens=256)
    assert parsed == [str(out)] and llm.tokenizer is not None
    assert loader._open_gguf.cache_info().currsize == 0
