"""The FastAPI app: OpenAI routes under /v1, plus /health, /version, /info and /metrics."""
import asyncio
import functools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.llm_engine import LLMEngine
from engine.server.async_engine import AsyncEngine
from engine.server.errors import error_response, install_error_handlers
from engine.server.metrics import RequestLog, ServerMetrics
from engine.server.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                    CompletionResponse, ErrorResponse, ModelCard, ModelList)
from engine.server.serving import OpenAIServing

ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "invalid request (the error names the field), unknown model, "
                                                   "missing or wrong API key"},
    503: {"model": ErrorResponse, "description": "too many requests waiting; retry after Retry-After seconds"},
    500: {"model": ErrorResponse, "description": "the engine failed while serving this request"},
}
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"},
    "data": {"type": "string", "description": "a JSON chunk, an error body, or [DONE] at the end"}}}
STREAMED = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                  "description": "a JSON body, or server-sent events when stream is true"}}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@functools.cache
def engine_version() -> str:
    try:
        return metadata.version("pagebench")
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed (a copy on a GPU host): the version it declares.
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.exists() else None
        return f"{match.group(1)}+source" if match else "0+unknown"


def engine_info(core: LLMEngine, served_model_names: list[str]) -> dict[str, Any]:
    cfg = core.config
    return {
        "engine": "pagebench", "version": engine_version(), "model": served_model_names[0], "source": core.source,
        "quantization": core.quantization, "dtype": str(core.dtype).removeprefix("torch."),
        "device": str(core.device), "block_size": cfg.block_size, "max_model_len": core.max_model_len,
        "max_num_seqs": cfg.max_num_seqs, "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "prefix_caching": cfg.enable_prefix_caching, "async_scheduling": cfg.async_scheduling,
        "cpu_threads": torch.get_num_threads() if core.device.type == "cpu" else None,
        "kv_blocks_total": core.runner.num_blocks,
        "kv_cache_bytes": core.runner.kv_cache_bytes, "weights_bytes": core.weights_bytes,
        "load_seconds": round(core.load_seconds, 3), "torch": torch.__version__,
        "tensor_parallel_size": cfg.tensor_parallel_size, "all_reduce": core.runner.all_reduce,
    }


class StampArrival:
    """Notes when a request reached the server, before its body is read and parsed: a request's queue time and
    TTFT count from there, as vLLM's do, so a burst's parsing and templating show in them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrival"] = time.monotonic()
        await self.app(scope, receive, send)


def arrival_of(request: Request) -> float | None:
    return getattr(request.state, "arrival", None)


class APIKeyMiddleware:
    """Bearer-token check for /v1/*, before any body is read."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):
                response = error_response(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Runs work, cancelling it (and so aborting its engine request) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return Response(status_code=499)
    return task.result()


def build_app(core: LLMEngine, served_model_names: list[str], *, api_key: str | None = None,
              max_waiting: int = 1024, request_log: str | None = None) -> FastAPI:
    """The app owns the engine's loop from startup to shutdown, and closes the engine (its TP workers) at the end."""
    engine = AsyncEngine(core)
    started = int(time.time())
    info = engine_info(core, served_model_names)
    serving = OpenAIServing(engine, served_model_names, max_waiting)
    metrics = ServerMetrics(engine, {k: str(v) for k, v in info.items()})
    log = RequestLog(engine, request_log) if request_log else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()
        core.close()
        if log is not None:
            log.close()

    app = FastAPI(title="pagebench engine", version=info["version"], lifespan=lifespan,
                  description="An OpenAI-compatible server over the pagebench paged-attention engine.")
    app.state.engine = engine
    install_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(StampArrival)

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = engine.thread is not None and engine.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine loop stopped"}, status_code=200 if alive else 503)

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return info

    @app.get("/info")
    async def engine_config() -> dict[str, Any]:
        return info

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=started, root=core.source, max_model_len=core.max_model_len)
                               for name in served_model_names])

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAMED})
    async def completions(req: CompletionRequest, request: Request) -> Any:
        admitted = await serving.admit_completion(req, arrival_of(request))
        if req.stream:
            return StreamingResponse(serving.stream_completion(admitted, req.include_usage),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        return await unless_disconnected(request, serving.completion(admitted))

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**ERRORS, **STREAMED})
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        admitted = await serving.admit_chat(req, arrival_of(request))
        if req.stream:
            return StreamingResponse(serving.stream_chat(admitted, req.include_usage),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        return await unless_disconnected(request, serving.chat(admitted))

    return app
