"""Decode steps, LM head included, replayed from CUDA graphs captured at a ladder of batch sizes (prefill and mixed
steps: engine.piecewise_graphs)."""
import torch

from engine.attention import AttentionMetadata
from engine.host_copy import PinnedStaging

MAX_GRAPH_BATCH = 256


def stage_tokens(packed: torch.Tensor, staging: PinnedStaging | None, size: int, ids: list[int],
                 positions: list[int], slots: list[int]) -> None:
    """A step's token ids, positions and slots into a graph's [3, capacity] buffer in one copy, padded to size
    (token 0 at position 0, no slot: nothing reaches the KV cache)."""
    n = len(ids)
    host = staging.host((3, size), torch.int64) if staging is not None else torch.empty(3, size, dtype=torch.int64)
    rows = host.numpy()
    rows[:, n:] = 0
    rows[2, n:] = -1
    rows[0, :n], rows[1, :n], rows[2, :n] = ids, positions, slots
    packed[:, :size].copy_(host, non_blocking=True)


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, max_batch: int, max_blocks: int, max_seq_len: int,
                 device: torch.device, staging: PinnedStaging) -> None:
        self.model = model
        self.staging = staging
        self.max_seq_len = max_seq_len
        self.sizes = [b for b in (1, 2, 4, 8, *range(16, max_batch + 1, 16)) if b <= max_batch]
        # ids, positions and slots share one buffer so that a step's inputs cross to the GPU in three copies.
        self.packed = torch.zeros(3, max_batch, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.packed
        self.slot_mapping.fill_(-1)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:batch], self.block_tables[:batch], self.seq_lens[:batch],
                                 self.query_start_loc[: batch + 1], batch, batch, 1, self.max_seq_len)

    def _logits(self, batch: int) -> torch.Tensor:
        """Every row of a decode step is sampled, so the LM head (and its all-gather under TP) joins the graph."""
        hidden = self.model(self.input_ids[:batch], self.positions[:batch], self._meta(batch))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):
            self._logits(size)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                out = self._logits(size)
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()

    def size_for(self, num_tokens: int, num_decodes: int) -> int | None:
        if num_decodes != num_tokens:
            return None
        return next((b for b in self.sizes if b >= num_tokens), None)

    def stage(self, size: int, ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
              block_tables: list[list[int]]) -> torch.Tensor:
        """Copies a step's inputs into the graph's buffers; returns the token-id buffer for last-moment fills."""
        n = len(ids)
        stage_tokens(self.packed, self.staging, size, ids, positions, slots)
        lens = self.staging.host((size,), torch.int32)
        lens.numpy()[:n] = seq_lens
        lens.numpy()[n:] = 0
        self.seq_lens[:size].copy_(lens, non_blocking=True)
        tables = self.staging.stage(block_tables, torch.int32)
        self.block_tables[:n, : tables.size(1)].copy_(tables, non_blocking=True)
        return self.input_ids

    def replay(self, size: int, n: int) -> torch.Tensor:
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]

