"""Resolves what the user names as a model (HF directory, GGUF file, `demo`, `random:<config>`) into weights."""
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from engine.config import ModelConfig
from engine.demo import demo_model_path
from engine.gguf_loader import GGUFFile
from engine.loader import build_model, bundled_config, init_random, iter_safetensors, load_weights, read_hf_config
from engine.tokenizer import TextTokenizer, from_gguf, from_hf_dir


@dataclass(slots=True)
class LoadedModel:
    model: torch.nn.Module
    config: ModelConfig
    tokenizer: TextTokenizer | None
    source: str
    quantization: str | None = None


def resolve_model_path(model: str) -> str:
    return demo_model_path() if model == "demo" else model


def open_gguf(path: str) -> GGUFFile:
    """The file parsed once for the config check, the weights and the tokenizer: parsing the demo model's metadata
    (its 49,152-token vocabulary) takes gguf-py seconds."""
    stat = os.stat(path)
    return _open_gguf(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1)
def _open_gguf(path: str, mtime_ns: int, size: int) -> GGUFFile:
    return GGUFFile(path)


def forget_parsed_files() -> None:
    """Once the model is loaded: the parsed metadata holds about 150 MB (the demo model's) of small objects."""
    _open_gguf.cache_clear()


def load_model(model: str, dtype: torch.dtype, device: torch.device, seed: int = 0,
               hf_config: dict | None = None, tokenizer_path: str | None = None) -> LoadedModel:
    if hf_config is not None or model.startswith("random:"):
        cfg_dict = hf_config if hf_config is not None else bundled_config(model.split(":", 1)[1])
        config = ModelConfig.from_hf(cfg_dict)
        net = build_model(config, dtype, device)
        init_random(net, seed)
        tok = _tokenizer_at(tokenizer_path, config) if tokenizer_path else None
        return LoadedModel(net, config, tok, f"random weights, config {model}")
    path = resolve_model_path(model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {model!r}: no such file or directory")
    if os.path.isfile(path):
        gguf = open_gguf(path)
        config = gguf.config()
        net = build_model(config, dtype, device)
        load_weights(net, gguf.weights(config))
        qtype = {t.tensor_type.name for t in gguf.reader.tensors if t.name.endswith("attn_q.weight")}
        return LoadedModel(net, config, from_gguf(gguf), path, ",".join(sorted(qtype)) + " (dequantized)")
    config = ModelConfig.from_hf(read_hf_config(path))
    net = build_model(config, dtype, device)
    if any(f.endswith(".safetensors") for f in os.listdir(path)):
        load_weights(net, iter_safetensors(path))
        source = path
    else:
        init_random(net, seed)
        source = f"random weights, config {path}/config.json"
    tok = _tokenizer_at(tokenizer_path or path, config)
    return LoadedModel(net, config, tok, source)


def _tokenizer_at(path: str, config: ModelConfig) -> TextTokenizer | None:
    if os.path.isfile(path) and path.endswith(".gguf"):
        return from_gguf(open_gguf(path))
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return from_hf_dir(path, config.eos_token_ids)
    return None


def read_model_config(model: str, hf_config: dict | None = None) -> ModelConfig:
    if hf_config is not None:
        return ModelConfig.from_hf(hf_config)
    if model.startswith("random:"):
        return ModelConfig.from_hf(bundled_config(model.split(":", 1)[1]))
    path = resolve_model_path(model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {model!r}: no such file or directory")
    if os.path.isfile(path):
        return open_gguf(path).config()
    return ModelConfig.from_hf(read_hf_config(path))
