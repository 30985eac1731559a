"""Continuous batching with chunked prefill under a per-step token budget, and preemption by recompute."""
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_decodes: int = 0

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        chosen: list[tuple[Sequence, int]] = []
        # Blocks this step will fill: a waiting request that would recompute one waits a step and shares it instead.
        inflight: set[bytes] = set()
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.last_token_pending:
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                chosen.append((seq, n))
                budget -= n
                i += 1
                if bm.enable_prefix_caching and n > 1:
                    inflight.update(bm.full_block_hashes(seq, seq.num_computed_tokens + n)[seq.num_computed_tokens // bm.block_size:])
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            hits = bm.find_cached_prefix(seq)
            num_cached = len(hits) * bm.block_size
            if inflight and len(hits) < len(seq.block_hashes) and seq.block_hashes[len(hits)] in inflight:
                break
            n = min(seq.num_tokens - num_cached, budget)
            if not self.block_manager.allocate(seq, n, hits):
                break
            if seq.metrics.first_scheduled_time is None:
                self.block_manager.record_prefix_query(seq.num_prompt_tokens, num_cached)
                seq.metrics.num_cached_tokens = num_cached
            seq.num_computed_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            chosen.append((seq, n))
            budget -= n
            if bm.enable_prefix_caching:
                inflight.update(bm.full_block_hashes(seq, num_cached + n)[len(hits):])
        chosen.sort(key=lambda c: c[1] != 1)
        batch = ScheduledBatch([s for s, _ in chosen], [n for _, n in chosen])
        batch.num_decodes = sum(1 for n in batch.num_new_tokens if n == 1)
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_sequence(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
