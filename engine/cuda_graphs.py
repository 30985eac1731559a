"""Decode steps replayed from CUDA graphs captured at a ladder of batch sizes; prefill stays eager."""
import torch

from engine.attention import AttentionMetadata

MAX_GRAPH_BATCH = 256


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, max_batch: int, max_blocks: int, max_seq_len: int,
                 device: torch.device) -> None:
        self.model = model
        self.max_seq_len = max_seq_len
        self.sizes = [b for b in (1, 2, 4, 8, *range(16, max_batch + 1, 16)) if b <= max_batch]
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:batch], self.block_tables[:batch], self.seq_lens[:batch],
                                 self.query_start_loc[: batch + 1], batch, batch, 1, self.max_seq_len)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):
            meta = self._meta(size)
            self.model(self.input_ids[:size], self.positions[:size], meta)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                out = self.model(self.input_ids[:size], self.positions[:size], meta)
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()

    def run(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        n = ids.size(0)
        if meta.num_decode_tokens != n:
            return None
        size = next((b for b in self.sizes if b >= n), None)
        if size is None:
            return None
        self.input_ids[:n].copy_(ids)
        self.positions[:n].copy_(pos)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:size].zero_()
        self.block_tables[:n, : meta.block_tables.size(1)].copy_(meta.block_tables)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]
