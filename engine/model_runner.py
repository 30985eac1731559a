"""Owns the model and its KV pool; turns a scheduled batch into one forward pass and sampled tokens."""
import torch

from engine.attention import AttentionMetadata, get_backend
from engine.config import EngineConfig, ModelConfig
from engine.sampler import Sampler
from engine.scheduler import ScheduledBatch

CPU_KV_BUDGET_BYTES = 2 << 30
MAX_GRAPH_BATCH = 256


class GraphBuffers:
    """Static inputs that captured decode graphs read; each step copies its batch in."""

    def __init__(self, max_batch: int, max_blocks: int, device: torch.device) -> None:
        self.max_batch = max_batch
        self.sizes = [b for b in (1, 2, 4, 8, *range(16, max_batch + 1, 16)) if b <= max_batch]
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)

    def meta(self, batch: int, max_seq_len: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:batch], self.block_tables[:batch], self.seq_lens[:batch],
                                 self.query_start_loc[: batch + 1], batch, batch, 1, max_seq_len)

    def padded(self, batch: int) -> int | None:
        return next((b for b in self.sizes if b >= batch), None)


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
        self.max_model_len = max_model_len
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if device.type == "cuda" and not config.enforce_eager:
            self.graph_buffers = GraphBuffers(min(config.max_num_seqs, MAX_GRAPH_BATCH), -(-max_model_len // self.block_size), device)
            self.capture_graphs()

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
            slot_mapping=_to(slots, torch.int64, dev),
            block_tables=_to(tables, torch.int32, dev),
            seq_lens=_to(seq_lens, torch.int32, dev),
            query_start_loc=_to(starts, torch.int32, dev),
            num_decodes=batch.num_decodes,
            num_decode_tokens=batch.num_decodes,
            max_query_len=max(batch.num_new_tokens),
            max_seq_len=max(seq_lens),
        )
        ids = _to(input_ids, torch.int64, dev)
        pos = _to(positions, torch.int64, dev)
        return ids, pos, meta, sample_rows

    @torch.inference_mode()
    def capture_graphs(self) -> None:
        buf = self.graph_buffers
        pool = None
        for size in reversed(buf.sizes):
            meta = buf.meta(size, self.max_model_len)
            self.model(buf.input_ids[:size], buf.positions[:size], meta)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                out = self.model(buf.input_ids[:size], buf.positions[:size], meta)
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()

    def _run_graph(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        n = ids.size(0)
        size = self.graph_buffers.padded(n) if meta.num_decode_tokens == n else None
        if size is None:
            return None
        buf = self.graph_buffers
        buf.input_ids[:n].copy_(ids)
        buf.positions[:n].copy_(pos)
        buf.slot_mapping[:n].copy_(meta.slot_mapping)
        buf.slot_mapping[n:size].fill_(-1)
        buf.seq_lens[:n].copy_(meta.seq_lens)
        buf.seq_lens[n:size].zero_()
        buf.block_tables[:n, : meta.block_tables.size(1)].copy_(meta.block_tables)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, eos_token_ids: list[int]) -> list[int | None]:
        ids, pos, meta, sample_rows = self.prepare(batch)
        hidden = self._run_graph(ids, pos, meta) if self.graphs else None
        if hidden is None:
            hidden = self.model(ids, pos, meta)
        to_sample = [s for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens]
        if not to_sample:
            return [None] * len(batch.seqs)
        logits = self.model.compute_logits(hidden[sample_rows])
        tokens = iter(self.sampler(logits, to_sample, eos_token_ids))
        return [next(tokens) if s.num_computed_tokens + n == s.num_tokens else None
                for s, n in zip(batch.seqs, batch.num_new_tokens)]


def _to(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.tensor(values, dtype=dtype)
    return t if device.type == "cpu" else t.pin_memory().to(device, non_blocking=True)
