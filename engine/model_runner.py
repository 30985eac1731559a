"""Owns the model and its KV pool; turns a scheduled batch into one forward pass and sampled tokens."""
import torch

from engine.attention import AttentionMetadata, get_backend
from engine.config import EngineConfig, ModelConfig
from engine.sampler import Sampler
from engine.scheduler import ScheduledBatch

CPU_KV_BUDGET_BYTES = 2 << 30


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype, max_model_len: int) -> None:
        self.config = config
        self.model_config = model_config
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.backend = get_backend(device)
        self.sampler = Sampler(device, config.seed)
        self.attn_layers = [m for m in model.modules() if hasattr(m, "k_cache")]
        kv = self.attn_layers[0]
        self.kv_bytes_per_token = 2 * len(self.attn_layers) * kv.num_kv_heads * kv.head_dim * dtype.itemsize
        self.num_blocks = self._count_blocks(max_model_len)
        shape = (self.num_blocks, self.block_size, kv.num_kv_heads, kv.head_dim)
        for layer in self.attn_layers:
            layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.backend = self.backend
        self.kv_cache_bytes = self.num_blocks * self.block_size * self.kv_bytes_per_token

    def _count_blocks(self, max_model_len: int) -> int:
        if self.config.kv_cache_tokens is not None:
            tokens = self.config.kv_cache_tokens
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            reserve = self._activation_reserve_bytes()
            tokens = int((total * self.config.kv_cache_fraction - used - reserve) // self.kv_bytes_per_token)
        else:
            tokens = max(CPU_KV_BUDGET_BYTES // self.kv_bytes_per_token, max_model_len)
        blocks = tokens // self.block_size
        if blocks < 1:
            raise ValueError(
                f"no room for the KV cache: {tokens} tokens fit in the budget; lower the weights' size, "
                f"raise kv_cache_fraction or set kv_cache_tokens"
            )
        return blocks

    def _activation_reserve_bytes(self) -> int:
        c = self.model_config
        per_token = (4 * c.hidden_size + 2 * c.intermediate_size + 3 * c.num_attention_heads * c.head_dim) * 4
        logits = self.config.max_num_seqs * c.vocab_size * 4 * 3
        return self.config.max_num_batched_tokens * per_token + logits + (1 << 30)

    def prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seq_lens: list[int] = []
        starts = [0]
        sample_rows: list[int] = []
        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            begin = seq.num_computed_tokens
            end = begin + n
            input_ids.extend(seq.token_ids[begin:end])
            positions.extend(range(begin, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(begin, end))
            seq_lens.append(end)
            starts.append(starts[-1] + n)
            tables.append(table + [0] * (max_blocks - len(table)))
            if end == seq.num_tokens:
                sample_rows.append(starts[-1] - 1)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            num_decodes=batch.num_decodes,
            num_decode_tokens=batch.num_decodes,
            max_query_len=max(batch.num_new_tokens),
            max_seq_len=max(seq_lens),
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=dev)
        pos = torch.tensor(positions, dtype=torch.int64, device=dev)
        return ids, pos, meta, sample_rows

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, eos_token_ids: list[int]) -> list[int | None]:
        ids, pos, meta, sample_rows = self.prepare(batch)
        hidden = self.model(ids, pos, meta)
        to_sample = [s for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens]
        if not to_sample:
            return [None] * len(batch.seqs)
        logits = self.model.compute_logits(hidden[sample_rows])
        tokens = iter(self.sampler(logits, to_sample, eos_token_ids))
        return [next(tokens) if s.num_computed_tokens + n == s.num_tokens else None
                for s, n in zip(batch.seqs, batch.num_new_tokens)]
