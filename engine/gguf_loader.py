"""Reads a GGUF file: its config, its tensors dequantized, and the tokenizer and chat template it carries."""
import functools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch

from engine.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@functools.cache
def _reader_class() -> type:
    """gguf-py's reader, slicing a plain ndarray view of its memory map instead of the np.memmap itself.

    Every slice of an np.memmap runs memmap.__array_finalize__ in Python: walking SmolLM2's 49,152-token vocabulary
    and merges took 2.0 s of a 6.7 s start, 0.65 s this way (this VM, gguf 0.19). The file stays mapped, not read:
    the views keep the map alive. tests/test_gguf_reader.py checks every field and tensor against the stock reader."""
    from gguf import GGUFReader

    class PlainViewReader(GGUFReader):
        def _get(self, offset: int, dtype: npt.DTypeLike, count: int = 1,
                 override_order: str | None = None) -> np.ndarray:
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewReader


def open_reader(path: str) -> object:
    """A gguf.GGUFReader over path (the faster subclass above)."""
    return _reader_class()(path)


class GGUFFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reader = open_reader(path)
        self.arch = self.field("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"{path}: GGUF architecture {self.arch!r} is not supported ({', '.join(ARCHITECTURES)})")

    def field(self, key: str, default: object = None) -> object:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def config(self) -> ModelConfig:
        a = self.arch
        heads = self.field(f"{a}.attention.head_count")
        hidden = self.field(f"{a}.embedding_length")
        names = {t.name for t in self.reader.tensors}
        eos = self.field("tokenizer.ggml.eos_token_id")
        return ModelConfig(
            architecture=ARCHITECTURES[a],
            vocab_size=self.field(f"{a}.vocab_size") or len(self.field("tokenizer.ggml.tokens")),
            hidden_size=hidden,
            intermediate_size=self.field(f"{a}.feed_forward_length"),
            num_hidden_layers=self.field(f"{a}.block_count"),
            num_attention_heads=heads,
            num_key_value_heads=self.field(f"{a}.attention.head_count_kv", heads),
            head_dim=self.field(f"{a}.attention.key_length", hidden // heads),
            max_position_embeddings=self.field(f"{a}.context_length"),
            rms_norm_eps=float(self.field(f"{a}.attention.layer_norm_rms_epsilon")),
            rope_theta=float(self.field(f"{a}.rope.freq_base", 10000.0)),
            tie_word_embeddings="output.weight" not in names,
            attention_bias="blk.0.attn_q.bias" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
            bos_token_id=self.field("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[] if eos is None else [eos],
        )

    def weights(self, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        from gguf.quants import dequantize

        for t in self.reader.tensors:
            array = dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(d) for d in t.shape])))
            tensor = torch.from_numpy(np.array(array, dtype=np.float32))
            name = self._hf_name(t.name)
            if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
                tensor = _unpermute_rope(tensor, heads)
            yield name, tensor

    @staticmethod
    def _hf_name(name: str) -> str:
        if name == "token_embd.weight":
            return "model.embed_tokens.weight"
        if name == "output_norm.weight":
            return "model.norm.weight"
        if name == "output.weight":
            return "lm_head.weight"
        _, layer, kind, suffix = name.split(".")
        if kind not in TENSOR_NAMES:
            raise ValueError(f"GGUF tensor {name!r} is not understood")
        return f"model.layers.{layer}.{TENSOR_NAMES[kind]}.{suffix}"


def _unpermute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    # llama.cpp stores Llama's q/k rows interleaved per rotary pair; Hugging Face keeps halves.
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
