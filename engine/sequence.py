from dataclasses import dataclass, field
from enum import Enum, auto

from engine.sampling_params import SamplingParams

# A sampled token still on the GPU: the next step may already read it there (asynchronous scheduling).
PENDING = -1


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(slots=True)
class RequestMetrics:
    # arrival: the server received the request; queued: the engine did (after the chat template and tokenizing).
    arrival_time: float
    queued_time: float | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_named_blocks: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    last_token_pending: bool = False
    prompt_bytes: bytes | None = None  # the block manager's: the prompt's ids as int64 bytes, made once

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    def drop_pending(self) -> None:
        while self.token_ids and self.token_ids[-1] == PENDING:
            self.token_ids.pop()

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
