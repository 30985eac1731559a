"""Llama-family decoder: Llama, Qwen2 (QKV bias) and Qwen3 (per-head q/k RMSNorm)."""
import torch
from torch import nn

from engine.attention import AttentionMetadata, attend_to_cache
from engine.config import ModelConfig
from engine.layers.activation import SiluAndMul
from engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.norm import RMSNorm
from engine.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, bias=config.attention_bias)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(config.num_attention_heads * config.head_dim, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                          config.rope_scaling)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.scale = config.head_dim ** -0.5
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.backend: object = None

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.attend(positions, self.qkv_proj(hidden), meta)

    def attend(self, positions: torch.Tensor, qkv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Everything after the QKV projection, o_proj included (DecoderLayer fuses the norm into qkv_proj)."""
        q = self.query(positions, qkv, meta.slot_mapping)
        return self.o_proj(self.attend_to_cache(q, meta).flatten(1))

    def query(self, positions: torch.Tensor, qkv: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
        """The rotated queries [tokens, heads, head_dim]; this step's keys and values go into the cache."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        return self._rotate_and_store_kv(positions, q, k, v, slot_mapping)

    def attend_to_cache(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor | None = None) -> torch.Tensor:
        return attend_to_cache(self.backend, q, self.k_cache, self.v_cache, meta, self.scale, out)

    def _rotate_and_store_kv(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             slot_mapping: torch.Tensor) -> torch.Tensor:
        """Normalises q and k per head (Qwen3), rotates them, writes k and v into this layer's cache, returns the
        rotated q: in one launch where the backend fuses them (Triton, CUDA), else q/k norm, rotary then store_kv
        (the torch reference on the CPU)."""
        fused = getattr(self.backend, "rotary_store_kv", None)
        if fused is not None:
            norms = {} if self.q_norm is None else dict(q_norm_weight=self.q_norm.weight,
                                                        k_norm_weight=self.k_norm.weight, eps=self.q_norm.eps)
            return fused(positions, q, k, v, self.k_cache, self.v_cache, slot_mapping, self.rotary_emb.cos_sin_cache,
                         **norms)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        self.backend.store_kv(k, v, self.k_cache, self.v_cache, slot_mapping)
        return q


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up_proj(x))

    def down(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate) * up): one launch at small batch on one GPU (engine.kernels.gemv), else two."""
        if self.down_proj.bias is None and self.down_proj.fused_gemv(gate_up, "silu_mul"):
            from engine.kernels.gemv import silu_mul_gemv

            return silu_mul_gemv(gate_up, self.down_proj.weight)
        return self.down_proj(self.act_fn(gate_up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # Each norm runs inside the projection after it where the small-batch kernels apply (RMSNorm.project).
        qkv, residual = self.input_layernorm.project(hidden, residual, self.self_attn.qkv_proj)
        hidden = self.self_attn.attend(positions, qkv, meta)
        return self.mlp_block(hidden, residual)

    def before_attention(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                         slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotated queries, residual): what attention needs, with this step's K/V stored (piecewise graphs)."""
        qkv, residual = self.input_layernorm.project(hidden, residual, self.self_attn.qkv_proj)
        return self.self_attn.query(positions, qkv, slot_mapping), residual

    def after_attention(self, attn_out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """attn_out [tokens, heads * head_dim] through o_proj and the MLP block: the layer's (hidden, residual)."""
        return self.mlp_block(self.self_attn.o_proj(attn_out), residual)

    def mlp_block(self, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate_up, residual = self.post_attention_layernorm.project(hidden, residual, self.mlp.gate_up_proj)
        return self.mlp.down(gate_up), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
