"""`paged` and `openai` backends: streamed /v1/chat/completions or /v1/completions over httpx."""
from __future__ import annotations

import json
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.backends.base import Backend, BackendError, ClientPool, PullProgress, StatusError
from harness.record import RequestRecord
from harness.workload import WorkItem

_GAUGES = {
    "kv_blocks_used": ("kv_blocks_used", "num_gpu_blocks_used", "kv_cache_blocks_used"),
    "kv_blocks_total": ("kv_blocks_total", "num_gpu_blocks", "kv_cache_blocks_total"),
    "kv_usage": ("kv_cache_usage_perc", "gpu_cache_usage_perc", "kv_usage", "kv_cache_usage"),
    "kv_utilization": ("kv_block_utilization",),
    "running": ("num_requests_running", "requests_running"),
    "waiting": ("num_requests_waiting", "requests_waiting"),
    "prefix_cache_hit_rate": ("prefix_cache_hit_rate",),
    "num_preemptions": ("num_preemptions", "num_preemptions_total"),
}
_INFO_KEYS = ("block_size", "kv_blocks_total", "dtype", "weights_bytes", "kv_cache_bytes", "max_num_seqs", "max_model_len")

_WANTED = tuple({n for names in _GAUGES.values() for n in names} | set(_INFO_KEYS) | {"_info"})


def _error_text(body: bytes) -> str:
    try:
        err = json.loads(body)
        err = err.get("error", err) if isinstance(err, dict) else err
        if isinstance(err, dict):
            err = err.get("message") or err.get("detail") or err
        return str(err)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def parse_metrics(text: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Engine gauges by their vLLM-style names, whatever the namespace (`vllm:`, `pagebench:`, `x_`); info labels kept."""
    gauges: dict[str, float] = {}
    info: dict[str, Any] = {}

    def named(short: str, name: str) -> bool:
        return short == name or short.endswith("_" + name) and not short.startswith("peak")

    # Parsing a whole exposition (histograms included) takes ~2 ms of the load generator's loop; the few
    # series wanted are picked out first, which keeps a scrape near 0.1 ms.
    keep = []
    for line in text.splitlines():
        if line and line[0] != "#":
            short = line.split("{", 1)[0].split(" ", 1)[0].split(":")[-1]
            if short.endswith(_WANTED):
                keep.append(line)
    for fam in text_string_to_metric_families("\n".join(keep) + "\n"):
        short = fam.name.split(":")[-1]
        for sample in fam.samples:
            if fam.type == "info" or sample.name.endswith("_info"):
                info.update(sample.labels)
                continue
            for key, names in _GAUGES.items():
                if key not in gauges and any(named(short, n) for n in names):
                    gauges[key] = sample.value
            for key in _INFO_KEYS:
                if key not in info and named(short, key):
                    info[key] = sample.value
    if "kv_usage" not in gauges and gauges.get("kv_blocks_total"):
        gauges["kv_usage"] = gauges.get("kv_blocks_used", 0.0) / gauges["kv_blocks_total"]
    elif gauges.get("kv_usage", 0) > 1.0:
        gauges["kv_usage"] /= 100.0
    return gauges, info


class OpenAIHttpBackend(Backend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        headers = {"Accept": "text/event-stream"}
        api_key = getattr(self.cfg, "api_key", None)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.control.headers.update({k: v for k, v in headers.items() if k == "Authorization"})
        self.pool = ClientPool(lambda ctx: httpx.AsyncClient(base_url=self.url, headers=headers, limits=self.limits,
                                                             timeout=httpx.Timeout(None, connect=30.0), verify=ctx,
                                                             trust_env=False))
        self.chat = self.workload.api == "chat"
        self.path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self.fixed_length = self.cfg.kind == "paged" or getattr(self.cfg, "supports_ignore_eos", False)
        self.has_metrics = True

    def body(self, item: WorkItem) -> dict[str, Any]:
        w = self.workload
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": item.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, "temperature": w.temperature, "seed": item.seed}
        if self.chat:
            body["messages"] = item.messages
        else:
            body["prompt"] = item.prompt
        if w.top_p is not None:
            body["top_p"] = w.top_p
        if self.fixed_length:
            body["ignore_eos"] = True
            body["min_tokens"] = item.max_tokens
        body.update(self.cfg.extra_body)
        return body

    async def prepare(self, on_pull: PullProgress | None = None) -> tuple[str | None, dict[str, Any]]:
        r = await self.control.get("/v1/models")
        if r.status_code != 200:
            raise BackendError(f"GET {self.url}/v1/models answered {r.status_code}: {_error_text(r.content)[:200]}")
        served = [m.get("id") for m in r.json().get("data", []) if isinstance(m, dict)]
        if self.cfg.kind == "paged" and served and self.cfg.model not in served:
            raise BackendError(f"model {self.cfg.model!r} is not served at {self.url} (it serves: {', '.join(map(str, served))})")
        version = r.headers.get("server")
        info: dict[str, Any] = {"served_models": served}
        for path in ("/version", "/info", "/props"):
            try:
                resp = await self.control.get(path)
                if resp.status_code == 200 and isinstance(data := resp.json(), dict):
                    if path == "/version":
                        version = str(data.get("version", data))
                    elif path == "/props":
                        version = f"llama.cpp {data['build_info']}" if data.get("build_info") else version
                        info.update({k: data[k] for k in ("total_slots", "model_path") if k in data})
                    else:
                        info.update(data)
            except (httpx.HTTPError, ValueError):
                pass
        try:
            m = await self.control.get("/metrics")
            if m.status_code == 200:
                _, metric_info = parse_metrics(m.text)
                info = {**metric_info, **info}
            else:
                self.has_metrics = False
        except (httpx.HTTPError, ValueError):
            self.has_metrics = False
        info["fixed_output_length"] = self.fixed_length
        return version, info

    async def poll(self) -> dict[str, Any]:
        if not self.has_metrics:
            return {}
        r = await self.control.get("/metrics")
        if r.status_code != 200:
            return {}
        return parse_metrics(r.text)[0]

    async def stream(self, item: WorkItem, rec: RequestRecord) -> None:
        http = self.pool.acquire()
        try:
            try:
                await self._stream(http, item, rec)
            except httpx.RemoteProtocolError as e:
                # A pooled keep-alive connection that the server had already closed (llama-server does) fails
                # before any answer; as urllib3 does, such a request goes once more, on a new connection.
                # A request that got any answer is never sent again.
                if rec.first_token or "without sending a response" not in str(e):
                    raise
                rec.server["resent_after_stale_connection"] = True
                await self._stream(http, item, rec)
        finally:
            self.pool.release(http)

    async def _stream(self, http: httpx.AsyncClient, item: WorkItem, rec: RequestRecord) -> None:
        clock = time.perf_counter
        loads = json.loads
        chat = self.chat
        rec.sent = clock()
        async with http.stream("POST", self.path, json=self.body(item)) as resp:
            if resp.status_code != 200:
                body = await resp.aread()
                rec.finished = clock()
                raise StatusError(resp.status_code, _error_text(body))
            buf = b""
            done = False
            async for raw in resp.aiter_bytes():
                now = clock()
                buf += raw
                if b"\n" not in raw:
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        rec.finished = now
                        continue
                    chunk = loads(payload)
                    if "error" in chunk:
                        raise BackendError(f"server error mid-stream: {_error_text(payload)[:200]}")
                    choices = chunk.get("choices")
                    if choices:
                        c = choices[0]
                        if chat:
                            delta = c.get("delta") or {}
                            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
                        else:
                            text = c.get("text")
                        if text:
                            rec.token(now)
                        if c.get("finish_reason"):
                            rec.finish_reason = c["finish_reason"]
                    usage = chunk.get("usage")
                    if usage:
                        # The response's id, once: a server's own request log (engine serve --request-log) keys on it.
                        rec.server["response_id"] = chunk.get("id")
                        rec.prompt_tokens = usage.get("prompt_tokens")
                        rec.output_tokens = usage.get("completion_tokens")
                        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                        if cached is not None:
                            rec.cached_tokens = int(cached)
                    timings = chunk.get("timings")
                    if timings:  # llama.cpp: cache_n prompt tokens reused, prompt_n computed
                        rec.server["cache_n"], rec.server["prompt_n"] = timings.get("cache_n"), timings.get("prompt_n")
                        if rec.cached_tokens is None and timings.get("cache_n") is not None:
                            rec.cached_tokens = int(timings["cache_n"])
            if not done and rec.finish_reason is None:
                raise BackendError("stream ended before a finish_reason or [DONE]")
            if not rec.finished:
                rec.finished = clock()

    async def close(self) -> None:
        for client in self.pool.made:
            await client.aclose()
        await super().close()

