"""Builds a model and fills its weights: from a Hugging Face directory, a GGUF file, or at random."""
import glob
import json
import os
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models import model_class

CONFIGS_DIR = os.path.join(os.path.dirname(__file__), "configs")


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> nn.Module:
    with _default_dtype(dtype), torch.device(device):
        return model_class(config.architecture)(config).eval()


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    packed = getattr(model, "packed_modules", {})
    loaded: set[str] = set()
    for name, tensor in weights:
        if "rotary_emb.inv_freq" in name:
            continue
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        shard = None
        for src, (dst, shard_id) in packed.items():
            if f".{src}." in name:
                name, shard = name.replace(f".{src}.", f".{dst}."), shard_id
                break
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
        param = params[name]
        loader = getattr(param, "weight_loader", None)
        tensor = tensor.to(param.dtype)
        if shard is not None:
            loader(param, tensor, shard)
        elif loader is not None:
            loader(param, tensor)
        else:
            param.data.copy_(tensor)
        loaded.add(name)
    missing = {n for n in params if n not in loaded and not (n == "lm_head.weight" and model.config.tie_word_embeddings)}
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")


def read_hf_config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def iter_safetensors(path: str) -> Iterable[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def init_random(model: nn.Module, seed: int) -> None:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        else:
            param.data.normal_(0.0, 0.02, generator=gen)


def bundled_config(name: str) -> dict:
    """A config under engine/configs by name, or any config.json by path (`random:/path/config.json`)."""
    path = name if name.endswith(".json") else os.path.join(CONFIGS_DIR, f"{name}.json")
    if not os.path.exists(path):
        names = sorted(p[:-5] for p in os.listdir(CONFIGS_DIR) if p.endswith(".json"))
        raise ValueError(f"no bundled config {name!r}; bundled: {', '.join(names)}")
    with open(path) as f:
        return json.load(f)
