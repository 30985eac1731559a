"""One request's timings, taken on the monotonic clock and turned into a results row afterwards."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def boot_id() -> str | None:
    """This boot of this host (Linux): processes that report the same one share one monotonic clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class Clock:
    """perf_counter for measuring, mapped to unix time once so rows carry wall-clock stamps."""

    __slots__ = ("unix0", "perf0")

    def __init__(self) -> None:
        self.perf0 = time.perf_counter()
        self.unix0 = time.time()

    def anchor(self) -> dict[str, Any]:
        """For run.json: how to take a row's stamps back to the monotonic clock, where perf_counter is that clock
        (Linux), so they compare with another process's monotonic stamps on the same boot (`engine serve
        --request-log`) even if the wall clock stepped during the run."""
        monotonic = time.get_clock_info("perf_counter").implementation == time.get_clock_info("monotonic").implementation
        return {"unix0": self.unix0, "monotonic0": self.perf0 if monotonic else None, "boot_id": boot_id()}

    def unix(self, perf: float) -> float:
        return self.unix0 + (perf - self.perf0)

    def now_unix(self) -> float:
        return self.unix(time.perf_counter())


@dataclass(slots=True)
class RequestRecord:
    backend: str
    level: str
    phase: str
    index: int
    requested_output_tokens: int
    intended: float
    concurrency: int | None = None
    rate: float | None = None
    user: int | None = None
    sent: float = 0.0
    first_token: float | None = None
    finished: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    # Prompt tokens the server took from its cache, where it says (usage.prompt_tokens_details, llama.cpp's timings).
    cached_tokens: int | None = None
    # The messages' tokens by the workload's tokenizer: the server's prompt_tokens beyond them is its chat template.
    message_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    connect_failed: bool = False
    server: dict[str, Any] = field(default_factory=dict)

    def token(self, now: float, n: int = 1) -> None:
        if self.first_token is None:
            self.first_token = now
        self.chunk_times.append(now)
        self.chunk_tokens.append(n)

    def fail(self, message: str, status_code: int | None = None) -> None:
        if self.error is None:
            self.error = " ".join(message.split())[:300]
            self.status_code = status_code

    def template_tokens(self) -> int | None:
        """The server's prompt tokens that are not the messages' own: its chat template's fixed part, which every
        request of a run shares and a prefix cache may hold."""
        if self.prompt_tokens is None or self.message_tokens is None:
            return None
        return max(0, self.prompt_tokens - self.message_tokens)

    def to_row(self, clock: Clock) -> dict[str, Any]:
        if self.output_tokens is None and self.error is None and self.chunk_tokens:
            self.output_tokens = sum(self.chunk_tokens)
            self.server["output_tokens_source"] = "chunks"
        times = self.chunk_times
        out = self.output_tokens
        ttft = self.first_token - self.intended if self.first_token is not None else None
        e2e = self.finished - self.intended
        tpot = decode = None
        if ttft is not None and out and out > 1 and self.finished > self.first_token:
            tpot = (self.finished - self.first_token) / (out - 1)
            decode = (out - 1) / (self.finished - self.first_token)
        return {
            "backend": self.backend, "level": self.level, "concurrency": self.concurrency, "rate": self.rate,
            "phase": self.phase, "index": self.index, "user": self.user,
            "intended_send": clock.unix(self.intended), "sent": clock.unix(self.sent),
            "first_token": clock.unix(self.first_token) if self.first_token is not None else None,
            "finished": clock.unix(self.finished), "ttft_s": ttft, "e2e_s": e2e,
            "itl_s": [b - a for a, b in zip(times, times[1:])],
            "chunk_times": [clock.unix(t) for t in times], "chunk_tokens": self.chunk_tokens,
            "tpot_s": tpot, "decode_tps": decode,
            "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
            "template_tokens": self.template_tokens(), "output_tokens": out,
            "requested_output_tokens": self.requested_output_tokens, "finish_reason": self.finish_reason,
            "error": self.error, "status_code": self.status_code, "server": self.server,
        }
