"""What rank 0 and every tensor-parallel worker settle alike before serving: device, dtype, context, CPU threads,
model runner."""
import os
from collections.abc import Mapping

import torch

from engine.config import EngineConfig, ModelConfig
from engine.cpu_quota import cgroup_cpu_limit, usable_cores
from engine.model_loader import LoadedModel, forget_parsed_files, load_model
from engine.model_runner import ModelRunner

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device (--device) must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} (--device): torch sees no CUDA GPU on this machine (torch "
                             f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} (--device): only {torch.cuda.device_count()} CUDA GPU(s) visible, "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r} (--device): the engine runs on cpu or cuda only")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_native(device) else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype (--dtype) must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    resolved = DTYPES[dtype]
    if resolved is torch.bfloat16 and device.type == "cuda" and not bf16_native(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"dtype {dtype} (--dtype): {torch.cuda.get_device_name(device)} (compute capability "
                         f"{major}.{minor}) has no native bfloat16, which needs 8.0 or later; use --dtype float16")
    return resolved


def bf16_native(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_threads(requested: int | None, world_size: int, env: Mapping[str, str] = os.environ,
                cores: int | None = None) -> int:
    """Intra-op threads for each rank on the CPU: cpu_threads if given, else OMP_NUM_THREADS, else this process's
    cores less one, shared among the ranks, and at least one. Its cores are those it may run on (its CPU
    affinity) capped by its cgroup CPU quota rounded up (`docker run --cpus`, compose's `cpus:`), which the
    affinity does not show: a container with 2 CPUs of a 64-core host gets one thread, not 63.

    The spare core is for the server's event loop and a load generator beside it. On the 2-core VM one thread
    served SmolLM2 1.2 to 1.6 times as fast as two (BENCHMARKS.md, "Engine on the CPU"): with two, each parallel
    op woke a sleeping OpenMP worker (OMP_WAIT_POLICY=PASSIVE, engine/__init__.py), and a spinning one starved
    the event loop."""
    if requested is not None:
        return requested
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    if cores is None:
        cores = usable_cores(len(os.sched_getaffinity(0)), cgroup_cpu_limit())
    return max(1, (cores - 1) // world_size)


def use_cpu_threads(config: EngineConfig, device: torch.device) -> None:
    """Called once the weights are loaded and the KV pool is zeroed, which go faster on every core."""
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(config.cpu_threads, config.tensor_parallel_size))


def max_model_len(config: EngineConfig, model_config: ModelConfig) -> int:
    """The user's max_model_len, refused (never quietly lowered) beyond the context the model was made for."""
    limit = model_config.max_position_embeddings
    if config.max_model_len is None:
        return limit
    if config.max_model_len > limit:
        raise ValueError(f"max_model_len (--max-model-len) {config.max_model_len} is beyond this model's context of "
                         f"{limit} tokens (max_position_embeddings in its config): it was never trained on later "
                         f"positions and its rotary table ends there; pass at most {limit}, or leave the option out "
                         f"to use the whole context")
    return config.max_model_len


def load_runner(config: EngineConfig, model: str, dtype: torch.dtype, device: torch.device, hf_config: dict | None,
                tokenizer: str | None = None) -> tuple[LoadedModel, ModelRunner]:
    """This rank's weights and model runner (its KV pool included); then the CPU threads it serves with."""
    loaded = load_model(model, dtype, device, config.seed, hf_config, tokenizer)
    runner = ModelRunner(config, loaded.config, loaded.model, device, dtype, max_model_len(config, loaded.config))
    use_cpu_threads(config, device)
    forget_parsed_files()
    return loaded, runner


def build_runner(model: str, dtype_name: str, device: torch.device, engine_kwargs: dict,
                 hf_config: dict | None) -> ModelRunner:
    """A tensor-parallel worker's share of the model and its KV pool; the tokenizer stays with rank 0."""
    config = EngineConfig(model=model, dtype=dtype_name, device=device.type, **engine_kwargs)
    return load_runner(config, model, resolve_dtype(dtype_name, device), device, hf_config)[1]
