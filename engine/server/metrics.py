"""Prometheus metrics named like vLLM's (`pagebench:` where vLLM says `vllm:`), read from the engine at scrape time."""
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.outputs import RequestOutput
from engine.server.async_engine import AsyncEngine

PREFIX = "pagebench:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
               20.0, 80.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0)


class EngineCollector(Collector):
    """Gauges and counters from the engine's last stats snapshot, so a scrape never races the engine thread."""

    def __init__(self, engine: AsyncEngine, info: dict[str, str]) -> None:
        self.engine = engine
        self.info = info

    def collect(self) -> Iterator[Metric]:
        s = self.engine.last_stats
        yield from (
            _gauge("num_requests_running", "Requests in the running batch", s.num_running),
            _gauge("num_requests_waiting", "Requests waiting to be scheduled", s.num_waiting),
            _gauge("kv_blocks_used", "KV cache blocks held by requests", s.kv_blocks_used),
            _gauge("kv_blocks_total", "KV cache blocks in the pool", s.kv_blocks_total),
            _gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1)", s.kv_usage),
            _gauge("peak_kv_blocks_used", "Most KV cache blocks held at once", s.peak_kv_blocks_used),
            # Pool occupancy (kv_cache_usage_perc) says how much of the pool is handed out; this says how full the
            # handed-out blocks are, the quantity behind "KV use over 95%" for paged allocation.
            _gauge("kv_block_utilization", "Tokens whose KV is held over the token slots of the allocated blocks (0 to 1)",
                   s.kv_utilization),
            _gauge("kv_block_utilization_at_peak", "kv_block_utilization when the most blocks were held",
                   s.kv_utilization_at_peak),
            _gauge("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache over prompt tokens looked up",
                   s.prefix_cache_hit_rate),
            _counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache", s.prefix_cache_queries),
            _counter("prefix_cache_hits", "Prompt tokens found in the prefix cache", s.prefix_cache_hits),
            _counter("num_preemptions", "Requests preempted (their KV dropped for recompute)", s.num_preemptions),
            _counter("prompt_tokens", "Prompt tokens of requests that produced a token", s.prompt_tokens_total),
            _counter("generation_tokens", "Tokens generated", s.generation_tokens_total),
        )
        info = InfoMetricFamily(PREFIX + "engine", "The engine, its model and its configuration")
        info.add_metric([], self.info)
        yield info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


class ServerMetrics:
    """A registry per server, plus the latency histograms fed from each step's outputs."""

    def __init__(self, engine: AsyncEngine, info: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, info))
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Arrival to first token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between a request's consecutive tokens",
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Arrival to last token",
                             buckets=E2E_BUCKETS, registry=self.registry)
        self.queue = Histogram(PREFIX + "request_queue_time_seconds", "Arrival to first scheduled step",
                               buckets=TTFT_BUCKETS, registry=self.registry)
        self.prefill = Histogram(PREFIX + "request_prefill_time_seconds", "First scheduled step to first token",
                                 buckets=TTFT_BUCKETS, registry=self.registry)
        self.finished = Counter(PREFIX + "request_success", "Finished requests by reason", ["finished_reason"],
                                registry=self.registry)
        self.last_token: dict[str, float] = {}
        engine.on_outputs.append(self.observe)

    def observe(self, outputs: list[RequestOutput], now: float) -> None:
        """One engine step's outputs, on the event loop: n tokens that came in one step are n gaps of 1/n of it."""
        last_token = self.last_token
        for out in outputs:
            if n := len(out.new_token_ids):
                last = last_token.get(out.request_id)
                if last is not None:
                    gap = (now - last) / n
                    for _ in range(n):
                        self.itl.observe(gap)
                elif (m := out.metrics).first_token_time is not None:
                    self.ttft.observe(m.first_token_time - m.arrival_time)
                    if m.first_scheduled_time is not None:
                        self.queue.observe(m.first_scheduled_time - m.arrival_time)
                        self.prefill.observe(m.first_token_time - m.first_scheduled_time)
                last_token[out.request_id] = now
            if out.finished:
                self.last_token.pop(out.request_id, None)
                self.finished.labels(out.finish_reason or "unknown").inc()
                if out.metrics.finish_time is not None and out.finish_reason != "abort":
                    self.e2e.observe(out.metrics.finish_time - out.metrics.arrival_time)


def boot_id() -> str | None:
    """This boot of this host (Linux): two processes that report the same one share one monotonic clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


STAMPS = ("arrival", "queued", "first_scheduled", "first_token", "finished")


class RequestLog:
    """`engine serve --request-log FILE`: one JSON line per finished request with the engine's own timestamps, to line
    up against a client's: arrival (the server received it), queued (the engine did), first scheduled, first token,
    finished. As unix seconds (time.monotonic() mapped to the wall clock once, when the log opens), and as the
    monotonic seconds themselves with the host's boot id, which a client on the same host can compare with its own
    monotonic stamps whatever the wall clock did meanwhile."""

    def __init__(self, engine: AsyncEngine, path: str) -> None:
        self.file: TextIO = open(path, "a", buffering=1)
        self.mono0, self.unix0 = time.monotonic(), time.time()
        self.boot_id = boot_id()
        engine.on_outputs.append(self.observe)

    def observe(self, outputs: list[RequestOutput], now: float) -> None:
        for out in outputs:
            if out.finished:
                m = out.metrics
                mono = dict(zip(STAMPS, (m.arrival_time, m.queued_time, m.first_scheduled_time, m.first_token_time,
                                         m.finish_time)))
                unix = {k: None if t is None else self.unix0 + (t - self.mono0) for k, t in mono.items()}
                self.file.write(json.dumps({
                    "request_id": out.request_id, **unix, "prompt_tokens": out.num_prompt_tokens,
                    "cached_tokens": m.num_cached_tokens, "output_tokens": out.num_output_tokens,
                    "finish_reason": out.finish_reason, "preemptions": m.num_preemptions,
                    "monotonic": mono, "boot_id": self.boot_id}) + "\n")

    def close(self) -> None:
        self.file.close()
