from dataclasses import dataclass, field

from engine.sequence import RequestMetrics


@dataclass(slots=True)
class RequestOutput:
    """One step's news for a request: the new tokens and text, and on finish the whole output."""

    request_id: str
    prompt_token_ids: list[int]
    new_token_ids: list[int]
    new_text: str
    num_output_tokens: int
    finished: bool
    finish_reason: str | None
    metrics: RequestMetrics
    stop_reason: str | int | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    peak_kv_blocks_used: int
    kv_utilization_at_peak: float
    kv_utilization: float = 0.0  # now: tokens held over the slots of the blocks allocated (LLMEngine.kv_utilization)

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
