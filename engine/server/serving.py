"""Turns OpenAI requests into engine requests, and engine outputs into OpenAI responses and SSE chunks."""
import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from jinja2 import TemplateError

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.async_engine import AsyncEngine, RequestStream
from engine.server.errors import APIError, error_body, param_of
from engine.server.protocol import (ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatResponseMessage,
                                    CompletionChoice, CompletionRequest, CompletionResponse, PromptTokensDetails,
                                    SamplingFields, Usage)
from engine.server.sse import DONE, ChatChunks, CompletionChunks, sse


@dataclass(slots=True)
class Admitted:
    request_id: str
    model: str
    stream: RequestStream


def usage_of(out: RequestOutput) -> Usage:
    p, c = out.num_prompt_tokens, out.num_output_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=out.metrics.num_cached_tokens))


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, served_model_names: list[str], max_waiting: int) -> None:
        self.engine = engine
        self.names = served_model_names
        self.max_waiting = max_waiting
        # Prompts are tokenized off the event loop, without the GIL (TextTokenizer.encode): a burst of long prompts
        # then neither holds back the streams already running nor the engine thread's next step.
        self.tokenize_pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="tokenize")

    async def tokenize(self, prompt: str | list[int]) -> list[int]:
        core = self.engine.engine
        if not isinstance(prompt, str) or core.tokenizer is None:
            return core.tokenize(prompt)
        return await asyncio.get_running_loop().run_in_executor(self.tokenize_pool, core.tokenize, prompt)

    async def admit(self, req: SamplingFields, prompt: str | list[int], prefix: str, prompt_field: str,
                    max_tokens_field: str, max_tokens: int | None, arrival: float | None = None) -> Admitted:
        """Validates, refuses when too many wait, and queues the request: failures are a 4xx/503, never mid-stream."""
        model = self.resolve_model(req.model)
        core = self.engine.engine
        try:
            ids = await self.tokenize(prompt)
        except ValueError as e:
            raise APIError(400, str(e), prompt_field) from None
        vocab = core.model_config.vocab_size
        if any(not 0 <= t < vocab for t in req.stop_token_ids or []):
            raise APIError(400, f"stop_token_ids must be in [0, {vocab})", "stop_token_ids")
        if max_tokens is None:
            max_tokens = max(1, min(core.max_model_len, core.kv_capacity_tokens) - len(ids))
        try:
            params = SamplingParams(
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k, max_tokens=max_tokens,
                min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, stop=req.stop_list,
                stop_token_ids=req.stop_token_ids or [], seed=req.seed)
            core.validate(ids, params)
        except ValueError as e:
            raise APIError(400, str(e), param_of(str(e), prompt_field, max_tokens_field)) from None
        waiting = self.engine.num_waiting
        if waiting >= self.max_waiting:
            raise APIError(503, f"server overloaded: {waiting} requests are already waiting (limit "
                                f"{self.max_waiting}); retry later", None, "overloaded_error", "server_overloaded",
                           {"Retry-After": "1"})
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        try:
            return Admitted(request_id, model, self.engine.add(request_id, ids, params, arrival))
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def resolve_model(self, name: str | None) -> str:
        if name is None:
            return self.names[0]
        if name not in self.names:
            raise APIError(404, f"model {name!r} is not served here; served: {', '.join(self.names)}", "model",
                           "invalid_request_error", "model_not_found")
        return name

    async def admit_completion(self, req: CompletionRequest, arrival: float | None = None) -> Admitted:
        return await self.admit(req, req.prompt, "cmpl", "prompt", "max_tokens", req.max_tokens, arrival)

    async def admit_chat(self, req: ChatCompletionRequest, arrival: float | None = None) -> Admitted:
        tok = self.engine.engine.tokenizer
        if tok is None:
            raise APIError(400, "this model has no tokenizer, so no chat template; use /v1/completions with "
                                "token ids", "messages")
        try:
            text = tok.apply_chat_template([m.as_template_input() for m in req.messages],
                                           add_generation_prompt=req.add_generation_prompt)
        except (TemplateError, ValueError, TypeError) as e:
            raise APIError(400, f"the chat template rejected these messages: {e}", "messages") from None
        field, max_tokens = req.max_output
        return await self.admit(req, text, "chatcmpl", "messages", field, max_tokens, arrival)

    async def complete(self, p: Admitted) -> RequestOutput:
        final = None
        try:
            async for out in p.stream:
                final = out
        except RuntimeError as e:
            raise APIError(500, str(e), kind="internal_error") from None
        finally:
            p.stream.close()
        return final

    async def completion(self, p: Admitted) -> CompletionResponse:
        out = await self.complete(p)
        choice = CompletionChoice(text=out.text, finish_reason=out.finish_reason, stop_reason=out.stop_reason)
        return CompletionResponse(id=p.request_id, model=p.model, choices=[choice], usage=usage_of(out))

    async def chat(self, p: Admitted) -> ChatCompletionResponse:
        out = await self.complete(p)
        choice = ChatChoice(message=ChatResponseMessage(content=out.text), finish_reason=out.finish_reason,
                            stop_reason=out.stop_reason)
        return ChatCompletionResponse(id=p.request_id, model=p.model, choices=[choice], usage=usage_of(out))

    def stream_completion(self, p: Admitted, include_usage: bool) -> AsyncIterator[bytes]:
        return framed(p, CompletionChunks(p.request_id, int(time.time()), p.model, include_usage).render)

    def stream_chat(self, p: Admitted, include_usage: bool) -> AsyncIterator[bytes]:
        chunks = ChatChunks(p.request_id, int(time.time()), p.model, include_usage)
        return framed(p, chunks.render, opening=chunks.role())


async def framed(p: Admitted, render: Callable[[RequestOutput], str], opening: str = "") -> AsyncIterator[bytes]:
    """The SSE envelope both endpoints share: the opening event at once, then the events of each output, [DONE], an
    error event if the engine failed, and the request's stream closed whatever happens (a client gone mid-stream
    aborts the request). Outputs that were already waiting leave in one send: one write instead of one each."""
    try:
        if opening:
            yield opening.encode()
        while not p.stream.finished:
            try:
                outputs = await p.stream.take()
            except RuntimeError as e:
                yield error_event(e).encode()
                return
            events = "".join([render(out) for out in outputs])
            if p.stream.finished:
                events += DONE
            if events:
                yield events.encode()
    finally:
        p.stream.close()


def error_event(e: Exception) -> str:
    """Once headers are sent an error can no longer be a status code: it becomes one SSE event."""
    return sse(error_body(str(e), "internal_error", None, 500).model_dump_json())
