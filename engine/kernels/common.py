"""What every kernel module needs: interpreter detection, device facts, the Triton-or-torch choice."""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

INTERPRET: bool = bool(triton.knobs.runtime.interpret)


def use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or INTERPRET


@functools.cache
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    # The interpreter multiplies bf16 dot operands as raw uint16 bits (triton 3.x create_dot), so it gets fp32 operands.
    upcast = INTERPRET
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return upcast, precision


def check_out(out: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    if out.shape != like.shape or out.dtype != like.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(like.shape)} {like.dtype} with a contiguous last dim, "
                         f"got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int, head_dim: int,
                block_tables: torch.Tensor | None = None) -> None:
    """Caches are [num_blocks, block_size, num_kv_heads, head_dim], contiguous; num_heads must group over KV heads."""
    contiguous = k_cache.is_contiguous() and v_cache.is_contiguous()
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or not contiguous:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must be equal-shaped "
                         "contiguous [num_blocks, block_size, num_kv_heads, head_dim] tensors")
    if k_cache.size(3) != head_dim or num_heads % k_cache.size(2):
        raise ValueError(f"{num_heads} heads of dim {head_dim} do not fit a cache of {k_cache.size(2)} KV heads "
                         f"of dim {k_cache.size(3)}")
    if block_tables is not None and (block_tables.dtype != torch.int32 or block_tables.stride(-1) != 1):
        raise ValueError(f"block_tables must be int32 with contiguous rows, got {block_tables.dtype} "
                         f"strides {block_tables.stride()}")


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One tile of flash attention: rescale the running max, sum and output by the new scores s, add p @ v."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(v.dtype)
    if UPCAST:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
    return acc, m_new, l_i


def env_switch(name: str) -> bool | None:
    """An on/off/auto switch from the environment: True for 1, False for 0, None for unset or auto."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0, 1 or auto, got {value!r}")
    return value == "1"


# Programmatic dependent launch (Hopper and later): a decode step is some two hundred short kernels in a row, and each
# one's launch, ramp-up and first loads otherwise wait for the one before it to drain. PAGEBENCH_PDL=0 turns it off.
PDL_SWITCH: bool | None = env_switch("PAGEBENCH_PDL")


@functools.cache
def pdl_enabled(device: torch.device) -> bool:
    if PDL_SWITCH is False or device.type != "cuda" or INTERPRET or torch.version.hip is not None:
        return False  # ROCm reports its GPUs as "cuda" devices, with capabilities that are not NVIDIA's
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_args(device: torch.device) -> dict:
    """The PDL constexpr and, where it is on, the launch attribute, for a kernel that calls pdl_wait."""
    return {"PDL": True, "launch_pdl": True} if pdl_enabled(device) else {"PDL": False}


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Lets the next kernel launch (it waits in turn), then waits until the previous kernel has finished and its
    writes are visible. Everything before this call may read only what no kernel of the step writes (weights);
    everything that reads a previous kernel's output, or writes anything, comes after it."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
