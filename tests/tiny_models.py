"""Tiny random Hugging Face checkpoints of each supported architecture, saved as real safetensors directories."""
import torch

BASE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
            initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

ARCHES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
}


def make_tiny_checkpoint(arch: str, path: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, extra = ARCHES[arch]
    config = getattr(transformers, config_cls)(**BASE, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                             min_new_tokens=max_new_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()
