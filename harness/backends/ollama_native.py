"""`ollama` backend: Ollama's native /api/chat and /api/generate through the official `ollama` client."""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlparse

import httpx
import ollama
from ollama import ChatResponse, GenerateResponse

from harness.backends.base import Backend, BackendError, ClientPool, PullProgress, StatusError
from harness.record import RequestRecord
from harness.scenario import OllamaBackend
from harness.workload import WorkItem

_TIMING_FIELDS = ("eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration", "load_duration", "total_duration")


def processor(size: int | None, size_vram: int | None) -> str | None:
    """The PROCESSOR column of `ollama ps`: where the loaded model sits."""
    if not size:
        return None
    gpu = round(100 * (size_vram or 0) / size)
    if gpu >= 100:
        return "100% GPU"
    if gpu <= 0:
        return "100% CPU"
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


class OllamaNativeBackend(Backend):
    cfg: OllamaBackend

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = ClientPool(lambda ctx: ollama.AsyncClient(host=self.url, timeout=httpx.Timeout(None, connect=30.0),
                                                              limits=self.limits, verify=ctx, trust_env=False))
        self.client = self.pool.acquire()
        self.chat = self.workload.api == "chat"
        self.entry: dict[str, Any] = {}

    def options(self, item: WorkItem | None) -> dict[str, Any]:
        w = self.workload
        opts: dict[str, Any] = {"temperature": w.temperature}
        if self.cfg.num_ctx:
            opts["num_ctx"] = self.cfg.num_ctx
        if w.top_p is not None:
            opts["top_p"] = w.top_p
        if item is not None:
            opts["num_predict"] = item.max_tokens
            opts["seed"] = item.seed
        opts.update(self.cfg.options)
        return opts

    def body(self, item: WorkItem) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "stream": True, "options": self.options(item),
                                "keep_alive": self.cfg.keep_alive, "truncate": self.cfg.truncate}
        if self.chat:
            body["messages"] = item.messages
        else:
            body["prompt"] = item.user
            if item.system:
                body["system"] = item.system
        return body

    def pull_command(self) -> str:
        host = urlparse(self.url).netloc
        prefix = "" if host in ("127.0.0.1:11434", "localhost:11434") else f"OLLAMA_HOST={host} "
        return f"{prefix}ollama pull {self.cfg.model}"

    async def _ensure_model(self, on_pull: PullProgress | None) -> None:
        try:
            await self.client.show(self.cfg.model)
            return
        except ollama.ResponseError as e:
            if e.status_code != 404:
                raise BackendError(f"Ollama at {self.url} could not show {self.cfg.model}: {e.error}") from None
        if not self.cfg.pull:
            raise BackendError(f"model {self.cfg.model!r} is not on the Ollama server at {self.url}; "
                               f"run `{self.pull_command()}` or set pull: true")
        try:
            async for p in await self.client.pull(self.cfg.model, stream=True):
                if on_pull:
                    on_pull(p.status or "", p.completed, p.total)
        except ollama.ResponseError as e:
            raise BackendError(f"pulling {self.cfg.model!r} into Ollama at {self.url} failed: {e.error}") from None

    async def prepare(self, on_pull: PullProgress | None = None) -> tuple[str | None, dict[str, Any]]:
        r = await self.control.get("/api/version")
        if r.status_code != 200:
            raise BackendError(f"GET {self.url}/api/version answered {r.status_code}; is this an Ollama server?")
        version = r.json().get("version")
        await self._ensure_model(on_pull)
        # Load with the request options so the first measured request finds the same runner (num_ctx decides reloads).
        try:
            await self.client.generate(model=self.cfg.model, prompt="", options=self.options(None), keep_alive=self.cfg.keep_alive)
        except ollama.ResponseError as e:
            raise BackendError(f"Ollama could not load {self.cfg.model!r}: {e.error}") from None
        show = await self.client.show(self.cfg.model)
        info: dict[str, Any] = {"num_ctx": self.cfg.num_ctx, "num_parallel": self.cfg.num_parallel, "keep_alive": self.cfg.keep_alive}
        if show.details:
            info.update(quantization=show.details.quantization_level, parameter_size=show.details.parameter_size,
                        family=show.details.family, format=show.details.format)
        await self.poll()
        info.update({k: self.entry.get(k) for k in ("size", "size_vram", "digest", "context_length")})
        info["processor"] = processor(self.entry.get("size"), self.entry.get("size_vram"))
        if not self.entry:
            raise BackendError(f"Ollama reports {self.cfg.model!r} as not loaded after preloading it (see /api/ps)")
        return version, info

    async def poll(self) -> dict[str, Any]:
        ps = await self.client.ps()
        want = self.cfg.model if ":" in self.cfg.model else f"{self.cfg.model}:latest"
        for m in ps.models:
            if m.model in (self.cfg.model, want) or m.name in (self.cfg.model, want):
                self.entry = {"size": m.size, "size_vram": m.size_vram, "digest": m.digest, "context_length": m.context_length}
                return {"ollama_size": m.size, "ollama_size_vram": m.size_vram}
        self.entry = {}
        return {"ollama_size": None, "ollama_size_vram": None}

    async def stream(self, item: WorkItem, rec: RequestRecord) -> None:
        clock = time.perf_counter
        chat = self.chat
        # The public chat()/generate() signatures lack `truncate`, so the body goes through the client's own request path.
        cls, path = (ChatResponse, "/api/chat") if chat else (GenerateResponse, "/api/generate")
        client = self.pool.acquire()
        rec.sent = clock()
        try:
            parts = await client._request(cls, "POST", path, json=self.body(item), stream=True)
            async for part in parts:
                now = clock()
                if chat:
                    msg = part.message
                    text = msg.content or msg.thinking if msg else None
                else:
                    text = part.response or part.thinking
                if text:
                    rec.token(now)
                if part.done:
                    rec.finished = now
                    rec.finish_reason = part.done_reason
                    rec.prompt_tokens = part.prompt_eval_count
                    rec.output_tokens = part.eval_count
                    rec.server = {k: getattr(part, k) for k in _TIMING_FIELDS}
        except ollama.ResponseError as e:
            raise StatusError(e.status_code, e.error) if e.status_code > 0 else BackendError(f"Ollama error: {e.error}") from None
        finally:
            self.pool.release(client)
        if rec.finish_reason is None:
            raise BackendError("stream ended before Ollama's final message (done: true)")

    async def close(self) -> None:
        for client in self.pool.made:
            await client._client.aclose()
        await super().close()
