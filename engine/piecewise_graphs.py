"""Prefill and mixed steps replayed from CUDA graphs, one graph per stretch of the model between two attention calls,
captured at a ladder of token counts (vLLM v1's piecewise graphs, by hand). Attention runs eagerly between the
replays, so any mix of decodes and prompt chunks fits: the host launches one replay and one attention call a layer
instead of about ten kernels, each of which costs 15 to 40 us of Python on a GPU host.

The pieces talk through buffers of their own (queries, residual stream, attention output, final hidden states);
whatever else a piece allocates lives in one graph pool that every piece and size shares, since each piece's
temporaries are dead by the time it returns."""
import torch

from engine.attention import AttentionMetadata
from engine.cuda_graphs import stage_tokens
from engine.host_copy import PinnedStaging


def capture_sizes(max_tokens: int) -> list[int]:
    """Powers of two from 16 to 512, then steps of 256 to 2,048 and of 512 beyond, ending at the step budget: a step
    is padded by at most 512 tokens (12% at 4,096), and there are 24 sizes for an 8,192-token budget."""
    ladder = [16, 32, 64, 128, 256, 512, *range(768, 2049, 256), *range(2560, max(max_tokens, 2560) + 1, 512)]
    return [s for s in ladder if s < max_tokens] + [max_tokens]


class PiecewiseGraphs:
    def __init__(self, model: torch.nn.Module, max_tokens: int, device: torch.device,
                 staging: PinnedStaging | None) -> None:
        self.model = model
        self.layers = model.model.layers
        self.staging = staging
        self.sizes = capture_sizes(max_tokens)
        top = max(self.sizes)
        attn = self.layers[0].self_attn
        hidden_size = model.config.hidden_size
        dtype = next(model.parameters()).dtype
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        # ids, positions and slots share one buffer so that a step's token inputs cross in one copy.
        self.packed = torch.zeros(3, top, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.packed
        self.slot_mapping.fill_(-1)
        self.query = torch.zeros(top, self.num_heads * self.head_dim, dtype=dtype, device=device)
        self.attn_out = torch.zeros_like(self.query)
        self.residual = torch.zeros(top, hidden_size, dtype=dtype, device=device)
        self.hidden = torch.zeros_like(self.residual)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}

    def _piece(self, index: int, size: int) -> None:
        """Piece i: layer i-1 from its attention output on (o_proj, MLP), then layer i up to its attention (norm,
        QKV, rotary, K/V store). Piece 0 starts at the embedding, the last one ends with the final norm."""
        if index == 0:
            hidden, residual = self.model.model.embed_tokens(self.input_ids[:size]), None
        else:
            hidden, residual = self.layers[index - 1].after_attention(self.attn_out[:size], self.residual[:size])
        if index == len(self.layers):
            self.hidden[:size].copy_(self.model.model.norm(hidden, residual)[0])
            return
        q, residual = self.layers[index].before_attention(self.positions[:size], hidden, residual,
                                                          self.slot_mapping[:size])
        self.query[:size].copy_(q.flatten(1))
        self.residual[:size].copy_(residual)

    def _replay(self, index: int, size: int) -> None:
        if size in self.graphs:
            self.graphs[size][index].replay()
        else:  # not captured (a CPU check of the pieces): the same ops, eagerly
            self._piece(index, size)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):
            graphs = []
            for index in range(len(self.layers) + 1):
                self._piece(index, size)  # compiles and tunes outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool):
                    self._piece(index, size)
                pool = graph.pool()
                graphs.append(graph)
            self.graphs[size] = graphs
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up runs' blocks: every step up to the top size now runs in the pool

    def size_for(self, num_tokens: int) -> int | None:
        return next((s for s in self.sizes if s >= num_tokens), None)

    def stage(self, size: int, ids: list[int], positions: list[int], slots: list[int]) -> torch.Tensor:
        """Copies a step's token inputs into the graphs' buffers; returns the token-id buffer for last-moment fills."""
        stage_tokens(self.packed, self.staging, size, ids, positions, slots)
        return self.input_ids

    def run(self, size: int, n: int, meta: AttentionMetadata) -> torch.Tensor:
        """The final hidden states of the step's n tokens, staged before."""
        query = self.query[:n].view(n, self.num_heads, self.head_dim)
        out = self.attn_out[:n].view(n, self.num_heads, self.head_dim)
        for index, layer in enumerate(self.layers):
            self._replay(index, size)
            layer.self_attn.attend_to_cache(query, meta, out)
        self._replay(len(self.layers), size)
        return self.hidden[:n]
