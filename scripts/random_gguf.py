"""Writes a GGUF of a real model shape with random weights and a given vocabulary, tensor by tensor.

For the 4-bit side of a GPU comparison where no weights can be downloaded (issue 9): the engine loads the same
shape with `random:<config>`. The default F16 file is what llama.cpp's `llama-quantize` or
`ollama create --quantize q4_K_M` turns into Q4_K_M. `--type q4_k_m` writes random Q4_K/Q6_K blocks straight
away, laid out tensor by tensor as llama-quantize's Q4_K_M would: for shapes whose F16 file does not fit the
disk (the 32B shape is 65 GB in F16). The vocabulary (tokens, merges, token types, special ids, chat template)
is copied from a vocab-only GGUF such as llama.cpp's `models/ggml-vocab-qwen2.gguf`.

    python scripts/random_gguf.py --config qwen2.5-7b --vocab ggml-vocab-qwen2.gguf --out qwen2.5-7b-f16.gguf
    python scripts/random_gguf.py --config qwen2.5-32b --vocab ggml-vocab-qwen2.gguf --type q4_k_m --out q32.gguf
"""
import argparse
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "configs"
COPIED = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
          "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
          "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) in llama.cpp's qwen2 naming; numpy shape is [out, in] for matrices."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // heads
    shapes = [("token_embd.weight", (vocab, h))]
    for i in range(cfg["num_hidden_layers"]):
        b = f"blk.{i}."
        shapes += [(b + "attn_norm.weight", (h,)), (b + "attn_q.weight", (heads * d, h)), (b + "attn_q.bias", (heads * d,)),
                   (b + "attn_k.weight", (kv * d, h)), (b + "attn_k.bias", (kv * d,)), (b + "attn_v.weight", (kv * d, h)),
                   (b + "attn_v.bias", (kv * d,)), (b + "attn_output.weight", (h, heads * d)), (b + "ffn_norm.weight", (h,)),
                   (b + "ffn_gate.weight", (inter, h)), (b + "ffn_up.weight", (inter, h)), (b + "ffn_down.weight", (h, inter))]
    shapes.append(("output_norm.weight", (h,)))
    if not cfg.get("tie_word_embeddings"):
        shapes.append(("output.weight", (vocab, h)))
    return shapes


UNUSED = 5  # llama.cpp's token type for the padding rows that round a vocabulary up to the embedding size


def copy_vocab(writer: GGUFWriter, vocab_path: str, vocab_size: int) -> int:
    """Copies the tokenizer; pads tokens and types to vocab_size as Hugging Face-to-GGUF conversion does."""
    reader = GGUFReader(vocab_path)
    size = len(reader.fields["tokenizer.ggml.tokens"].contents())
    for key in COPIED:
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                value = value + [f"[PAD{i}]" for i in range(size, vocab_size)]
            elif key == "tokenizer.ggml.token_type":
                value = value + [UNUSED] * (vocab_size - size)
            writer.add_array(key, value)
        elif kind == GGUFValueType.STRING:
            writer.add_string(key, value)
        elif kind == GGUFValueType.BOOL:
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, int(value))
    return size


def q4_k_m_type(name: str, n_layer: int) -> Q:
    """llama-quantize's choice for Q4_K_M on a Qwen2 model (src/llama-quant.cpp): Q6_K for the output head and
    for attn_v and ffn_down in the first and last eighth of the layers and every third layer between."""
    if name == "output.weight":
        return Q.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")):
        i = int(name.split(".")[1])
        if i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2:
            return Q.Q6_K
    return Q.Q4_K


BLOCK_BYTES = {Q.Q4_K: 144, Q.Q6_K: 210}  # per 256 weights


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random quant codes and scales with small fixed super-block scales, so every weight is finite and within
    about ±0.05, like the F16 file's N(0, 0.02); speed does not depend on the values."""
    blocks = rows * cols // 256
    raw = rng.integers(0, 256, size=(blocks, BLOCK_BYTES[qtype]), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit codes
        raw[:, 0:4] = np.array([5e-5, 3.75e-4], dtype=np.float16).view(np.uint8)  # dmin = 7.5 d centres them
    else:  # 128 + 64 bytes of 6-bit codes, 16 int8 scales, d (f16)
        raw[:, 208:210] = np.array([1e-5], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, cols // 256 * BLOCK_BYTES[qtype])


def write(cfg: dict, vocab_path: str, out: str, seed: int = 0, qtype: str = "f16") -> None:
    if cfg.get("model_type", "qwen2") != "qwen2":
        raise SystemExit(f"only the qwen2 architecture is written, not {cfg.get('model_type')!r}")
    writer = GGUFWriter(out, "qwen2")
    writer.add_name(f"random-{cfg.get('name', 'qwen2')}")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(float(cfg["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    quantized = qtype == "q4_k_m"
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_K_M if quantized else LlamaFileType.MOSTLY_F16)
    tokens = len(GGUFReader(vocab_path).fields["tokenizer.ggml.tokens"].contents())
    if tokens > cfg["vocab_size"]:
        raise SystemExit(f"the vocabulary has {tokens} tokens, more than the config's vocab_size {cfg['vocab_size']}")
    copy_vocab(writer, vocab_path, cfg["vocab_size"])
    shapes = tensor_shapes(cfg)
    n_layer = cfg["num_hidden_layers"]
    for name, shape in shapes:
        if quantized and len(shape) == 2:
            kind = q4_k_m_type(name, n_layer)
            if shape[1] % 256:
                raise SystemExit(f"{name}: rows of {shape[1]} weights do not split into 256-weight blocks")
            byte_shape = (shape[0], shape[1] // 256 * BLOCK_BYTES[kind])
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=kind)
            continue
        dtype = np.float32 if len(shape) == 1 else np.float16
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape in shapes:
        if name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        elif quantized and len(shape) == 2:
            data = random_blocks(q4_k_m_type(name, n_layer), shape[0], shape[1], rng)
        elif len(shape) == 1:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        else:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        writer.write_tensor_data(data)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a bundled config name (engine/configs) or a config.json path")
    ap.add_argument("--vocab", required=True, help="a vocab-only GGUF, e.g. llama.cpp's models/ggml-vocab-qwen2.gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--type", choices=("f16", "q4_k_m"), default="f16",
                    help="f16 (to quantize with llama-quantize) or q4_k_m (random 4-bit blocks written directly)")
    args = ap.parse_args()
    path = Path(args.config) if args.config.endswith(".json") else CONFIGS / f"{args.config}.json"
    write(json.loads(path.read_text()), args.vocab, args.out, args.seed, args.type)
    print(args.out)


if __name__ == "__main__":
    main()
