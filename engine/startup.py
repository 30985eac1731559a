"""What rank 0 and every tensor-parallel worker settle alike before serving: device, dtype, context, model runner."""
import torch

from engine.config import EngineConfig, ModelConfig
from engine.model_loader import load_model
from engine.model_runner import ModelRunner

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def max_model_len(config: EngineConfig, model_config: ModelConfig) -> int:
    limit = config.max_model_len or model_config.max_position_embeddings
    return min(limit, model_config.max_position_embeddings)


def build_runner(model: str, dtype_name: str, device: torch.device, engine_kwargs: dict,
                 hf_config: dict | None) -> ModelRunner:
    """A tensor-parallel worker's share of the model and its KV pool; the tokenizer stays with rank 0."""
    config = EngineConfig(model=model, dtype=dtype_name, device=device.type, **engine_kwargs)
    dtype = resolve_dtype(dtype_name, device)
    loaded = load_model(model, dtype, device, config.seed, hf_config)
    return ModelRunner(config, loaded.config, loaded.model, device, dtype, max_model_len(config, loaded.config))
