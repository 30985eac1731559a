"""Owns the model and its KV pool; turns a scheduled batch into one forward pass and sampled tokens."""
import gc
import itertools

import torch
import torch.distributed as dist

from engine import step_inputs
from engine.attention import AttentionMetadata, get_backend
from engine.config import EngineConfig, ModelConfig
from engine.cuda_graphs import MAX_GRAPH_BATCH, DecodeGraphs
from engine.custom_all_reduce import try_custom_all_reduce
from engine.host_copy import PinnedStaging, to_device
from engine.kernels.late_compiles import watch_late_compiles
from engine.kv_sizing import count_kv_blocks
from engine.parallel import set_custom_all_reduce, tp_size
from engine.piecewise_graphs import PiecewiseGraphs
from engine.sampler import Sampler, SampledTokens
from engine.scheduler import ScheduledBatch
from engine.sequence import PENDING, Sequence
from engine.step_inputs import StepInputs


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype, max_model_len: int) -> None:
        self.config = config
        self.model_config = model_config
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self.backend = get_backend(device)
        self.staging = PinnedStaging(self._staging_bytes()) if device.type == "cuda" else None
        self.sampler = Sampler(device, config.seed, self.staging)
        self.attn_layers = [m for m in model.modules() if hasattr(m, "k_cache")]
        kv = self.attn_layers[0]
        self.kv_bytes_per_token = 2 * len(self.attn_layers) * kv.num_kv_heads * kv.head_dim * dtype.itemsize
        self.all_reduce = self._init_all_reduce()
        self.num_blocks = count_kv_blocks(config, model_config, device, self.kv_bytes_per_token, max_model_len)
        shape = (self.num_blocks, self.block_size, kv.num_kv_heads, kv.head_dim)
        for layer in self.attn_layers:
            layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.backend = self.backend
        self.kv_cache_bytes = self.num_blocks * self.block_size * self.kv_bytes_per_token
        self.graphs: DecodeGraphs | None = None
        self.pieces: PiecewiseGraphs | None = None
        self.last_sampled: torch.Tensor | None = None
        if device.type == "cuda":
            self.warmup()
        if device.type == "cuda" and not config.enforce_eager:
            self.graphs = DecodeGraphs(model, min(config.max_num_seqs, MAX_GRAPH_BATCH),
                                       -(-max_model_len // self.block_size), max_model_len, device, self.staging)
            self.graphs.capture()
            if tp_size() == 1:  # under TP the pieces' all-reduces are not captured yet: those steps stay eager
                self.pieces = PiecewiseGraphs(model, config.max_num_batched_tokens, device, self.staging)
                self.pieces.capture()
        self.late_compiles = watch_late_compiles() if device.type == "cuda" else None

    def _staging_bytes(self) -> int:
        """A step's host inputs at most: token ids, positions and slots, the block tables, per-sequence lengths and
        rows, the sampler's per-sequence values (stop-token masks beyond 16 ids a sequence fall back to allocating)."""
        tokens, seqs = self.config.max_num_batched_tokens, self.config.max_num_seqs
        width = -(-max(self.max_model_len, tokens) // self.block_size)
        return 3 * 8 * (tokens + seqs) + 4 * seqs * width + 64 * seqs + 2 * 8 * 16 * seqs + (1 << 16)

    def _init_all_reduce(self) -> str:
        if tp_size() == 1:
            return "none"
        if self.device.type != "cuda":
            return "gloo"
        if self.config.disable_custom_all_reduce:
            return "nccl (custom all-reduce disabled)"
        comm, why = try_custom_all_reduce(self.device, self.dtype)
        set_custom_all_reduce(comm)
        if comm is None:
            return f"nccl ({why})"
        return f"one-shot over symmetric memory up to {comm.max_bytes >> 20} MiB, then nccl"

    def release_graphs(self) -> None:
        """Frees the decode graphs; under TP they hold captured all-reduces that NCCL's teardown waits on."""
        set_custom_all_reduce(None)
        if self.graphs is not None:
            self.graphs = self.pieces = None
            gc.collect()
            torch.cuda.synchronize()

    @torch.inference_mode()
    def warmup(self) -> None:
        """Compiles the kernel variants that prefill and mixed steps pick, so no request waits on the JIT.

        Triton specializes on block-table width (1, a multiple of 16, other) and on query length (<= 64 or not).
        Slots are -1: nothing is written to the cache.
        """
        for q_len, width in ((8, 1), (8, 16), (8, 17), (100, 16), (100, 17)):
            for decodes in (0, 1):
                lens = [1] * decodes + [q_len]
                tokens = sum(lens)
                self.staging.next_step()
                self._eager(StepInputs(
                    input_ids=[0] * tokens, positions=list(range(tokens)), slot_mapping=[-1] * tokens,
                    block_tables=[[0] * width for _ in lens], seq_lens=lens,
                    query_start_loc=[0, *itertools.accumulate(lens)], num_decodes=decodes, max_query_len=q_len,
                    sample_rows=[]))
        self._warm_row_gathers()
        torch.cuda.synchronize()

    def _warm_row_gathers(self) -> None:
        """index_select and index_copy_ pick a kernel by how many rows they move (up to 16, or more), and a kernel's
        first launch loads it and waits for the GPU (CUDA's lazy loading): 13 ms of the first decode step after a
        fresh engine's first burst on an H200 host. The sampled rows and the pending tokens, each kind once."""
        hidden = torch.zeros(32, self.model_config.hidden_size, dtype=self.dtype, device=self.device)
        tokens = torch.zeros(32, dtype=torch.int64, device=self.device)
        for n in (1, 32):
            rows = torch.arange(n, device=self.device)
            hidden.index_select(0, rows)
            tokens.index_copy_(0, rows, tokens.index_select(0, rows))

    def prepare(self, batch: ScheduledBatch, pending: dict[int, int]) -> StepInputs:
        """pending: for each sequence (by id()) whose last token the previous step sampled and the host has not
        read, that token's row in the previous step's sampled tensor."""
        bs = self.block_size
        step = StepInputs([], [], [], [], [], [0], batch.num_decodes, max(batch.num_new_tokens), [])
        width = max(len(s.block_table) for s in batch.seqs)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            begin, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            table = seq.block_table
            if seq.token_ids[end - 1] == PENDING:
                step.pending_rows.append(len(step.input_ids) + n - 1)
                step.pending_from.append(pending[id(seq)])
            step.input_ids.extend(seq.token_ids[begin:end])
            step.positions.extend(range(begin, end))
            for b in range(begin // bs, (end - 1) // bs + 1):  # a range of slots per block, not a value per token
                shift = (table[b] - b) * bs
                step.slot_mapping.extend(range(shift + max(begin, b * bs), shift + min(end, (b + 1) * bs)))
            step.seq_lens.append(end)
            step.query_start_loc.append(step.query_start_loc[-1] + n)
            step.block_tables.append(table + [0] * (width - len(table)))
            if end == seq.num_tokens:
                step.sample_rows.append(step.query_start_loc[-1] - 1)
        return step

    def forward(self, step: StepInputs) -> torch.Tensor | None:
        if self.staging is not None:
            self.staging.next_step()
        size = self.graphs.size_for(len(step.input_ids), step.num_decodes) if self.graphs else None
        if size is not None:
            ids = self.graphs.stage(size, step.input_ids, step.positions, step.slot_mapping, step.seq_lens,
                                    step.block_tables)
            self._fill_pending(ids, step)
            return self.graphs.replay(size, len(step.input_ids))
        pieces = self.pieces.size_for(len(step.input_ids)) if self.pieces else None
        hidden = self._piecewise(step, pieces) if pieces is not None else self._eager(step)
        if not step.sample_rows:
            return None
        if len(step.sample_rows) != hidden.size(0):
            # Not hidden[list]: that copies the rows' indices from pageable memory, which waits for the GPU to
            # finish everything queued, the previous step included: a prefill step would then launch after it.
            hidden = hidden.index_select(0, self._to_device(step.sample_rows, torch.int64))
        return self.model.compute_logits(hidden)

    def _eager(self, step: StepInputs) -> torch.Tensor:
        meta = self._meta(step, self._to_device(step.slot_mapping, torch.int64))
        ids = self._to_device(step.input_ids, torch.int64)
        self._fill_pending(ids, step)
        return self.model(ids, self._to_device(step.positions, torch.int64), meta)

    def _piecewise(self, step: StepInputs, size: int) -> torch.Tensor:
        ids = self.pieces.stage(size, step.input_ids, step.positions, step.slot_mapping)
        self._fill_pending(ids, step)
        n = len(step.input_ids)
        return self.pieces.run(size, n, self._meta(step, self.pieces.slot_mapping[:n]))

    def _meta(self, step: StepInputs, slot_mapping: torch.Tensor) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=slot_mapping,
            block_tables=self._to_device(step.block_tables, torch.int32),
            seq_lens=self._to_device(step.seq_lens, torch.int32),
            query_start_loc=self._to_device(step.query_start_loc, torch.int32),
            num_decodes=step.num_decodes,
            num_decode_tokens=step.num_decodes,
            max_query_len=step.max_query_len,
            max_seq_len=max(step.seq_lens),
        )

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return to_device(values, dtype, self.device, self.staging)

    def _fill_pending(self, ids: torch.Tensor, step: StepInputs) -> None:
        if step.pending_rows:
            rows = self._to_device(step.pending_rows, torch.int64)
            ids.index_copy_(0, rows, self.last_sampled.index_select(0, self._to_device(step.pending_from, torch.int64)))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, eos_token_ids: list[int],
               pending: dict[int, int]) -> tuple[SampledTokens | None, list[Sequence]]:
        """Queues the step on the GPU and returns its sampled tokens unread, with the sequences they belong to."""
        step = self.prepare(batch, pending)
        if tp_size() > 1:
            step_inputs.send(step)
        logits = self.forward(step)
        if logits is None:
            return None, []
        sampled = [s for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens]
        tokens = self.sampler(logits, sampled, eos_token_ids)
        self.share_sampled(tokens)
        return SampledTokens.start_copy(tokens, self.staging), sampled

    def share_sampled(self, tokens: torch.Tensor) -> None:
        """Every rank keeps the step's sampled tokens on its GPU, where the next step's inputs may take them."""
        if tp_size() > 1 and self.config.async_scheduling:
            dist.broadcast(tokens, src=0)
        self.last_sampled = tokens

