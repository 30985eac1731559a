"""How many KV blocks fit: the user's kv_cache_tokens checked against memory, or what kv_cache_fraction of the GPU
leaves after weights and activations, or a fixed budget on the CPU; under TP every rank takes the smallest."""
import logging
import os

import torch
import torch.distributed as dist

from engine.config import EngineConfig, ModelConfig
from engine.parallel import tp_size

CPU_KV_BUDGET_BYTES = 2 << 30
logger = logging.getLogger("engine")


def count_kv_blocks(config: EngineConfig, model_config: ModelConfig, device: torch.device,
                    kv_bytes_per_token: int, max_model_len: int) -> int:
    if config.kv_cache_tokens is not None:
        tokens = checked_kv_cache_tokens(config, device, kv_bytes_per_token, max_model_len)
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserve = activation_reserve_bytes(config, model_config)
        tokens = int((total * config.kv_cache_fraction - (total - free) - reserve) // kv_bytes_per_token)
    else:
        tokens = max(CPU_KV_BUDGET_BYTES // kv_bytes_per_token, max_model_len)
    blocks = tokens // config.block_size
    if tp_size() > 1:
        agreed = torch.tensor([blocks], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        blocks = int(agreed.item())
    if blocks < 1:
        raise ValueError(f"no room for the KV cache ({tokens} tokens fit); raise kv_cache_fraction, "
                         f"set kv_cache_tokens, or use a smaller model or more GPUs")
    return blocks


def checked_kv_cache_tokens(config: EngineConfig, device: torch.device, kv_bytes_per_token: int,
                            max_model_len: int) -> int:
    """The user's kv_cache_tokens: refused beyond the memory there is, warned about where it is rounded or shorter
    than the context."""
    tokens, bs = config.kv_cache_tokens, config.block_size
    if device.type == "cuda":
        room, where = torch.cuda.mem_get_info(device)[0], f"{device} has free"
    else:
        room, where = available_host_memory() // tp_size(), "this host has available"
        if tp_size() > 1:
            where = f"each of the {tp_size()} ranks on this host has"
    fit = room // kv_bytes_per_token
    if tokens > fit:
        need = tokens * kv_bytes_per_token / 2**30
        raise ValueError(f"kv_cache_tokens (--kv-cache-tokens) {tokens} needs {need:.1f} GiB of KV cache, but "
                         f"{where} {room / 2**30:.1f} GiB: at most {fit} tokens fit; lower it, or leave it out "
                         f"to size the cache by kv_cache_fraction")
    if tokens % bs:
        logger.warning("kv_cache_tokens %d is not a multiple of block_size %d: the KV cache holds %d tokens",
                       tokens, bs, tokens // bs * bs)
    if tokens // bs * bs < max_model_len:
        logger.warning("kv_cache_tokens %d is below the context of %d tokens: a request longer than the KV cache "
                       "is refused", tokens // bs * bs, max_model_len)
    return tokens


def activation_reserve_bytes(config: EngineConfig, model_config: ModelConfig) -> int:
    """A step's activations at the token budget (the piecewise graphs' pool needs less), the logits of a
    full batch, and 1 GiB for the rest."""
    c = model_config
    per_token = (4 * c.hidden_size + 2 * c.intermediate_size + 3 * c.num_attention_heads * c.head_dim) * 4
    logits = config.max_num_seqs * c.vocab_size * 4 * 3
    return config.max_num_batched_tokens * per_token + logits + (1 << 30)


def available_host_memory() -> int:
    """MemAvailable (what can be allocated without swapping), or all physical memory where /proc is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
