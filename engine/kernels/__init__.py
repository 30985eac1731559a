"""Triton kernels for the CUDA path; the fused helpers fall back to torch ops on CPU tensors."""
from engine.kernels.activation import silu_and_mul
from engine.kernels.backend import TritonAttentionBackend
from engine.kernels.decode_attention import paged_decode
from engine.kernels.extend_attention import paged_extend
# The plain gemv stays out: as a package attribute it would hide the module engine.kernels.gemv.
from engine.kernels.gemv import fused_gemv_enabled, norm_gemv, silu_mul_gemv
from engine.kernels.norm import rms_norm
from engine.kernels.rotary_embedding import rotary
from engine.kernels.rotary_kv import rotary_store_kv
from engine.kernels.sampler import sample
from engine.kernels.kv_cache import store_kv

__all__ = ["TritonAttentionBackend", "fused_gemv_enabled", "norm_gemv", "paged_decode", "paged_extend",
           "rms_norm", "rotary", "rotary_store_kv", "sample", "silu_and_mul", "silu_mul_gemv", "store_kv"]
