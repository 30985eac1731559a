"""The whole engine on a GPU (Triton kernels, CUDA graphs) against Hugging Face generate()."""
import random

import pytest
import torch

from engine import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

SMALL = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
             initializer_range=0.15, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("arch, extra", [("Qwen2", {}), ("Qwen3", {"head_dim": 128}), ("Llama", {})])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_greedy_matches_hf_on_gpu(tmp_path, arch, extra, dtype):
    import transformers

    config = getattr(transformers, f"{arch}Config")(**SMALL, **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, f"{arch}ForCausalLM")(config).to("cuda", dtype).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (5, 16, 47, 130, 300)]
    llm = LLM(str(tmp_path), dtype=str(dtype).removeprefix("torch."), device="cuda", kv_cache_tokens=8192,
              max_num_batched_tokens=256)
    assert llm.engine.runner.graphs, "decode should run under CUDA graphs"
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32, min_tokens=32))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=32, min_new_tokens=32,
                              do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == ref
