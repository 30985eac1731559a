"""The step-wise engine: add requests, step, read incremental outputs, abort. The server drives this."""
import itertools
import time
from collections import deque
from dataclasses import dataclass

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.model_loader import LoadedModel, read_model_config
from engine.model_runner import ModelRunner
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams
from engine.sampler import SampledTokens
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import PENDING, RequestMetrics, Sequence, SequenceStatus
from engine.startup import load_runner, max_model_len, resolve_device, resolve_dtype
from engine.tp_workers import TPGroup, TPLaunch, check_divisible, init_rank

@dataclass(slots=True)
class InFlight:
    """A launched step whose sampled tokens the host has not read yet."""

    batch: ScheduledBatch
    sampled: list[Sequence]
    positions: list[int]
    tokens: SampledTokens | None


class LLMEngine:
    def __init__(self, model: str, dtype: str | torch.dtype = "auto", device: str = "auto", *,
                 hf_config: dict | None = None, tokenizer: str | None = None, **kwargs: object) -> None:
        self.device = resolve_device(device)
        if kwargs.get("async_scheduling") is None:
            # On a GPU the host's share of a step then overlaps the step before; on the CPU nothing would overlap.
            kwargs["async_scheduling"] = self.device.type == "cuda"
        self.config = EngineConfig(model=model, dtype=str(dtype), device=device, **kwargs)
        self.dtype = resolve_dtype(dtype, self.device)
        torch.manual_seed(self.config.seed)
        started = time.perf_counter()
        self.tp_group: TPGroup | None = None
        self.teardown_stuck = False
        launch = TPLaunch(model, str(self.dtype).removeprefix("torch."), self.device.type,
                          self.config.tensor_parallel_size, 0, kwargs, hf_config, tokenizer)
        # From the config alone, so that a bad value is refused before weights load and workers start.
        model_config = read_model_config(model, hf_config)
        max_model_len(self.config, model_config)
        if launch.world_size > 1:
            self._start_workers(launch, model_config)
            self.device, loaded, self.runner = self.tp_group.start(
                lambda store: self._load(launch, hf_config, tokenizer, store))
        else:
            loaded, self.runner = self._load(launch, hf_config, tokenizer)[1:]
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.source = loaded.source
        self.quantization = loaded.quantization
        self.weights_bytes_per_rank = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        self.weights_bytes = self.weights_bytes_per_rank * self.config.tensor_parallel_size
        self.max_model_len = self.runner.max_model_len
        self.block_manager = BlockManager(self.runner.num_blocks, self.config.block_size,
                                          self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        self.eos_token_ids = list(self.tokenizer.eos_token_ids if self.tokenizer else self.model_config.eos_token_ids)
        self.load_seconds = time.perf_counter() - started
        self.seqs: dict[str, Sequence] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.pending: deque[tuple[str, object]] = deque()
        self.finished_outputs: list[RequestOutput] = []
        self.inflight: InFlight | None = None
        self.ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.peak_blocks = 0
        self.utilization_at_peak = 0.0

    def _start_workers(self, launch: TPLaunch, cfg: ModelConfig) -> None:
        check_divisible(cfg.num_attention_heads, cfg.num_key_value_heads, launch.world_size)
        if self.device.type == "cuda" and torch.cuda.device_count() < launch.world_size:
            raise ValueError(f"tensor_parallel_size {launch.world_size} needs as many GPUs; "
                             f"{torch.cuda.device_count()} visible")
        self.tp_group = TPGroup(launch)

    def _load(self, launch: TPLaunch, hf_config: dict | None, tokenizer: str | None,
              store: object | None = None) -> tuple[torch.device, LoadedModel, ModelRunner]:
        """Rank 0's share of the start-up: under TP it waits on the workers, so TPGroup.start watches it."""
        device = init_rank(0, launch, store) if store is not None else self.device
        loaded, runner = load_runner(self.config, launch.model, self.dtype, device, hf_config, tokenizer)
        return device, loaded, runner

    def close(self) -> None:
        if self.tp_group is not None:
            self.runner.release_graphs()
            self.tp_group.shutdown()
            self.teardown_stuck = self.tp_group.teardown_stuck
            self.tp_group = None

    @property
    def kv_capacity_tokens(self) -> int:
        return self.runner.num_blocks * self.config.block_size

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass prompt token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def new_request_id(self) -> str:
        return f"req-{next(self.ids)}"

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        params.validate()
        n = len(prompt_ids)
        if n == 0:
            raise ValueError("prompt must not be empty")
        vocab = self.model_config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if any(not 0 <= t < vocab for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        if n >= self.max_model_len:
            raise ValueError(f"prompt has {n} tokens; the model's context is {self.max_model_len} tokens "
                             f"and must leave room for at least one output token")
        if n + params.max_tokens > self.max_model_len:
            raise ValueError(f"max_tokens ({params.max_tokens}) + prompt ({n} tokens) exceeds the model's context "
                             f"of {self.max_model_len} tokens; lower max_tokens to at most {self.max_model_len - n}")
        if n + params.max_tokens > self.kv_capacity_tokens:
            raise ValueError(f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) can never fit the KV cache "
                             f"of {self.kv_capacity_tokens} tokens")

    def add_request(self, request_id: str | None, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> str:
        """Validates now and raises ValueError naming the field; the request joins at the next step.

        Safe to call from another thread than the one that calls step().
        """
        prompt_ids = self.tokenize(prompt)
        self.validate(prompt_ids, params)
        request_id = request_id or self.new_request_id()
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        now = time.monotonic()
        seq = Sequence(request_id, prompt_ids, params, RequestMetrics(arrival_time or now, queued_time=now))
        self.pending.append(("add", seq))
        return request_id

    def abort_request(self, request_id: str) -> None:
        self.pending.append(("abort", request_id))

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending or self.scheduler.has_unfinished() or self.finished_outputs or self.inflight)

    def _drain_pending(self) -> None:
        while self.pending:
            op, arg = self.pending.popleft()
            if op == "add":
                self.seqs[arg.request_id] = arg
                self.detokenizers[arg.request_id] = IncrementalDetokenizer(self.tokenizer, arg.params.stop) \
                    if self.tokenizer else None
                self.scheduler.add(arg)
            elif (seq := self.seqs.get(arg)) is not None:
                self._finish(seq, "abort")

    def step(self) -> list[RequestOutput]:
        """Schedules and launches a step and reads its sampled tokens.

        With async_scheduling the tokens read are the previous step's, while the GPU runs this one: the next step's
        inputs take the unread tokens on the GPU, and a sequence that turns out to have stopped drops its extra one."""
        self._drain_pending()
        outputs, self.finished_outputs = self.finished_outputs, []
        batch = self.scheduler.schedule()
        previous, self.inflight = self.inflight, None
        try:
            launched = self._launch(batch, previous) if batch else None
        finally:
            if previous is not None:
                outputs.extend(self._complete(previous))
        if launched is not None and not self.config.async_scheduling:
            outputs.extend(self._complete(launched))
        else:
            self.inflight = launched
        self._track_peak()
        return outputs

    def _launch(self, batch: ScheduledBatch, previous: InFlight | None) -> InFlight:
        now = time.monotonic()
        for seq in batch.seqs:
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
        if self.tp_group is not None:
            self.tp_group.check()
        pending = {id(s): row for row, s in enumerate(previous.sampled)} if previous else {}
        tokens, sampled = self.runner.launch(batch, self.eos_token_ids, pending)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            # Named now, not when the step's tokens are read: the next step, scheduled before that under async
            # scheduling, then shares them (it runs after this one on the same stream, so their KV is written).
            self.block_manager.cache_full_blocks(seq, known_tokens=seq.num_tokens - (seq.token_ids[-1] == PENDING))
        positions = []
        for seq in sampled:
            positions.append(len(seq.token_ids))
            seq.token_ids.append(PENDING)
            seq.last_token_pending = (seq.num_output_tokens >= seq.params.max_tokens
                                      or seq.num_tokens >= self.max_model_len)
        return InFlight(batch, sampled, positions, tokens)

    def _complete(self, step: InFlight) -> list[RequestOutput]:
        values = step.tokens.read() if step.tokens is not None else []
        now = time.monotonic()
        live = [(seq, pos, token) for seq, pos, token in zip(step.sampled, step.positions, values)
                if seq.status is not SequenceStatus.FINISHED]
        for seq, pos, token in live:
            seq.token_ids[pos] = token
        for seq in step.batch.seqs:
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.cache_full_blocks(seq)
        outputs: list[RequestOutput] = []
        for seq, pos, token in live:
            seq.last_token_pending = False
            num_output = pos + 1 - seq.num_prompt_tokens
            if num_output == 1:
                seq.metrics.first_token_time = now
                self.prompt_tokens_total += seq.num_prompt_tokens
            self.generation_tokens_total += 1
            reason = self._check_stop(seq, token, num_output)
            detok = self.detokenizers[seq.request_id]
            if reason is None:
                outputs.append(self._output(seq, [token], detok.take(False) if detok else "", num_output))
            else:
                self._finish(seq, reason)
                outputs.extend(self.finished_outputs)
                self.finished_outputs = []
        return outputs

    def _check_stop(self, seq: Sequence, token: int, num_output: int) -> str | None:
        p = seq.params
        detok = self.detokenizers[seq.request_id]
        past_min = num_output >= p.min_tokens
        stop_str = detok.add(token, check_stop=past_min) if detok else None
        if past_min:
            if not p.ignore_eos and token in self.eos_token_ids:
                return "stop"
            if token in p.stop_token_ids:
                seq.stop_reason = token
                return "stop"
            if stop_str is not None:
                seq.stop_reason = stop_str
                return "stop"
        if num_output >= p.max_tokens or seq.num_prompt_tokens + num_output >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.drop_pending()
        self.scheduler.finish(seq, reason)
        self.runner.sampler.release(seq.request_id)
        seq.metrics.finish_time = time.monotonic()
        detok = self.detokenizers.pop(seq.request_id)
        del self.seqs[seq.request_id]
        new_tokens = seq.output_token_ids[-1:] if reason != "abort" else []
        out = self._output(seq, new_tokens, detok.take(True) if detok else "", seq.num_output_tokens)
        out.token_ids = seq.output_token_ids
        out.text = detok.text if detok else ""
        self.finished_outputs.append(out)

    def _output(self, seq: Sequence, new_tokens: list[int], new_text: str, num_output: int) -> RequestOutput:
        return RequestOutput(seq.request_id, seq.prompt_token_ids, new_tokens, new_text, num_output,
                             seq.is_finished, seq.finish_reason, seq.metrics, seq.stop_reason)

    def _track_peak(self) -> None:
        used = self.block_manager.num_used_blocks
        if used > self.peak_blocks:
            self.peak_blocks = used
            self.utilization_at_peak = self.kv_utilization()

    def kv_utilization(self) -> float:
        """Tokens whose KV is held, over the slots of the blocks allocated to hold them.

        Full blocks are full, and only a sequence's own trailing block (never shared) has empty slots.
        """
        used = self.block_manager.num_used_blocks
        if not used:
            return 0.0
        bs = self.config.block_size
        empty = sum(len(s.block_table) * bs - s.num_computed_tokens for s in self.scheduler.running)
        return 1.0 - empty / (used * bs)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting) + sum(1 for op, _ in list(self.pending) if op == "add"),
            kv_blocks_total=bm.num_blocks, kv_blocks_used=bm.num_used_blocks, block_size=bm.block_size,
            prefix_cache_queries=bm.prefix_queries, prefix_cache_hits=bm.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions, prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total, peak_kv_blocks_used=self.peak_blocks,
            kv_utilization_at_peak=self.utilization_at_peak, kv_utilization=self.kv_utilization(),
        )

