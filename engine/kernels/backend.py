"""The attention backend engine.attention.get_backend hands out on CUDA devices."""
from engine.kernels.decode_attention import paged_decode
from engine.kernels.extend_attention import paged_extend
from engine.kernels.kv_cache import store_kv
from engine.kernels.rotary_kv import rotary_store_kv


class TritonAttentionBackend:
    name = "triton"
    store_kv = staticmethod(store_kv)
    rotary_store_kv = staticmethod(rotary_store_kv)  # engine.models.llama prefers it to rotary + store_kv
    paged_decode = staticmethod(paged_decode)
    paged_extend = staticmethod(paged_extend)
