"""The hand-rendered SSE chunks against the pydantic models they replace, and the streaming path that sends them.

The reference is the event logic the server ran before, one pydantic chunk per event, model_dump_json'd; the
renderers must give the same bytes for every output a stream can see.
"""
import asyncio
import itertools
import json
import re
import sys

import pytest


from engine.outputs import RequestOutput
from engine.sequence import RequestMetrics
from engine.server.async_engine import AsyncEngine, EngineDeadError
from engine.server.metrics import ServerMetrics
from engine.server.protocol import (ChatCompletionChunk, ChatStreamChoice, CompletionChoice, CompletionChunk,
                                    DeltaMessage, PromptTokensDetails, Usage)
from engine.server.serving import Admitted, OpenAIServing
from engine.server.sse import ChatChunks, CompletionChunks

TEXTS = ["", "Hello", " world", 'say "hi"', "back\\slash", "line\nbreak\r\n\ttab", "\x00\x01\x1f\x7f", "é ü ß",
         "日本語", "🙂👍🏽", "\u2028\u2029", "</script>", "a/b", "{\"json\": [1, 2]}"]
FINISHES = [("length", None), ("stop", None), ("stop", "</s>"), ("stop", 'quote " and \\'), ("stop", "🙂"),
            ("stop", 0), ("stop", 151643)]


def output(text: str, n: int, finished: bool = False, finish_reason: str | None = None,
           stop_reason: str | int | None = None, cached: int = 0) -> RequestOutput:
    return RequestOutput("req", [1, 2, 3], [7], text, n, finished, finish_reason if finished else None,
                         RequestMetrics(arrival_time=0.0, num_cached_tokens=cached), stop_reason)


def usage_of(out: RequestOutput) -> Usage:
    p, c = out.num_prompt_tokens, out.num_output_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=out.metrics.num_cached_tokens))


def pydantic_chat(outputs: list[RequestOutput], rid: str, created: int, model: str, include_usage: bool) -> str:
    def chunk(choices: list[ChatStreamChoice], usage: Usage | None = None) -> str:
        c = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {c.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"

    events = [chunk([ChatStreamChoice(delta=DeltaMessage(role="assistant", content=""))])]
    for out in outputs:
        if out.new_text:
            events.append(chunk([ChatStreamChoice(delta=DeltaMessage(content=out.new_text))]))
        if out.finished:
            events.append(chunk([ChatStreamChoice(delta=DeltaMessage(), finish_reason=out.finish_reason,
                                                  stop_reason=out.stop_reason)]))
            if include_usage:
                events.append(chunk([], usage_of(out)))
    return "".join(events)


def pydantic_completion(outputs: list[RequestOutput], rid: str, created: int, model: str, include_usage: bool) -> str:
    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        c = CompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {c.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"

    events = []
    for out in outputs:
        if out.new_text or out.finished:
            reason = out.finish_reason if out.finished else None
            events.append(chunk([CompletionChoice(text=out.new_text, finish_reason=reason,
                                                  stop_reason=out.stop_reason)]))
        if out.finished and include_usage:
            events.append(chunk([], usage_of(out)))
    return "".join(events)


def stream_of(texts: list[str], finish_reason: str, stop_reason: str | int | None,
              cached: int = 0) -> list[RequestOutput]:
    outs = [output(t, i + 1) for i, t in enumerate(texts[:-1])]
    return outs + [output(texts[-1], len(texts), True, finish_reason, stop_reason, cached)]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("finish_reason,stop_reason", FINISHES)
def test_chunks_equal_the_pydantic_rendering(include_usage, finish_reason, stop_reason):
    for last in ("", "the end", "é\n"):
        outs = stream_of(TEXTS + [last], finish_reason, stop_reason, cached=16)
        for rid, model in (("chatcmpl-0f3a", "tiny"), ("cmpl-x", 'Qwen/Qwen2.5-7B "instruct" é')):
            chat = ChatChunks(rid, 1767225600, model, include_usage)
            assert chat.role() + "".join(chat.render(o) for o in outs) == \
                pydantic_chat(outs, rid, 1767225600, model, include_usage)
            completion = CompletionChunks(rid, 1767225600, model, include_usage)
            assert "".join(completion.render(o) for o in outs) == \
                pydantic_completion(outs, rid, 1767225600, model, include_usage)


def test_every_code_point_is_escaped_as_pydantic_escapes_it():
    text = "".join(map(chr, itertools.chain(range(0xD800), range(0xE000, sys.maxunicode + 1))))
    chat = ChatChunks("chatcmpl-1", 0, "m", False)
    assert chat.content(text) == pydantic_chat([output(text, 1)], "chatcmpl-1", 0, "m", False).split("\n\n", 1)[1]


def test_a_stop_reason_on_an_unfinished_output_is_kept():
    out = output("x", 1, stop_reason="never")
    for include_usage in (True, False):
        assert CompletionChunks("c", 0, "m", include_usage).render(out) == \
            pydantic_completion([out], "c", 0, "m", include_usage)


class FakeCore:
    """What AsyncEngine asks of LLMEngine when no step runs: the outputs come from the test through _dispatch."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def stats(self) -> None:
        return None

    def add_request(self, request_id: str, prompt: object, params: object, arrival_time: float) -> None:
        pass

    def abort_request(self, request_id: str) -> None:
        self.aborted.append(request_id)


def admitted(engine: AsyncEngine, request_id: str) -> Admitted:
    return Admitted(request_id, "tiny", engine.add(request_id, [1, 2, 3], None))


def streaming(kind: str, include_usage: bool = True):
    """An AsyncEngine over a fake core, one admitted request, and its SSE body iterator."""
    engine = AsyncEngine(FakeCore())
    p = admitted(engine, "req")
    serving = OpenAIServing(engine, ["tiny"], 8)
    body = serving.stream_chat(p, include_usage) if kind == "chat" else serving.stream_completion(p, include_usage)
    return engine, p, body


def events_in(data: bytes) -> list[str]:
    return [e for e in data.decode().split("\n\n") if e]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_outputs_waiting_together_leave_in_one_send_and_none_waits_for_another(kind):
    async def run() -> list[bytes]:
        engine, p, body = streaming(kind)
        sends = []
        if kind == "chat":
            sends.append(await anext(body))
        engine._dispatch([output("a", 1)], 0.0)
        sends.append(await asyncio.wait_for(anext(body), 1))
        engine._dispatch([output("b", 2)], 0.0)
        engine._dispatch([output("c", 3)], 0.0)
        engine._dispatch([output("d", 4, True, "length")], 0.0)
        sends.append(await asyncio.wait_for(anext(body), 1))
        with pytest.raises(StopAsyncIteration):
            await anext(body)
        assert engine.engine.aborted == [] and "req" not in engine.queues
        return sends

    sends = asyncio.run(run())
    assert len(sends) == (3 if kind == "chat" else 2)
    first, rest = sends[-2], sends[-1]
    assert len(events_in(first)) == 1 and '"a"' in first.decode()
    texts = [json.loads(e.removeprefix("data: ")) for e in events_in(rest)[:-1]]
    assert events_in(rest)[-1] == "data: [DONE]"
    if kind == "chat":
        assert [c["choices"][0]["delta"].get("content") for c in texts[:3]] == ["b", "c", "d"]
        assert texts[3]["choices"][0]["finish_reason"] == "length"
    else:
        assert [c["choices"][0]["text"] for c in texts[:3]] == ["b", "c", "d"]
        assert texts[2]["choices"][0]["finish_reason"] == "length"
    assert texts[-1]["choices"] == [] and texts[-1]["usage"]["completion_tokens"] == 4


def test_chat_opens_with_the_role_before_any_output():
    async def run() -> bytes:
        _, _, body = streaming("chat", include_usage=False)
        return await asyncio.wait_for(anext(body), 1)

    events = events_in(asyncio.run(run()))
    assert len(events) == 1
    chunk = json.loads(events[0].removeprefix("data: "))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": ""} and "usage" not in chunk


def test_the_whole_stream_equals_the_pydantic_rendering():
    async def run(kind: str, include_usage: bool) -> tuple[str, int]:
        engine, p, body = streaming(kind, include_usage)
        outs = stream_of(TEXTS, "stop", "</s>")
        received = []

        async def read() -> None:
            async for data in body:
                received.append(data)

        reader = asyncio.ensure_future(read())
        for out in outs:
            await asyncio.sleep(0)
            engine._dispatch([out], 0.0)
        await asyncio.wait_for(reader, 1)
        text = b"".join(received).decode()
        created = int(re.search(r'"created":(\d+)', text).group(1))
        expected = (pydantic_chat if kind == "chat" else pydantic_completion)(outs, "req", created, "tiny",
                                                                                include_usage)
        return text, expected + "data: [DONE]\n\n"

    for kind, include_usage in itertools.product(("chat", "completion"), (True, False)):
        got, expected = asyncio.run(run(kind, include_usage))
        assert got == expected, (kind, include_usage)


def test_engine_failure_after_outputs_sends_them_then_the_error_and_no_done():
    async def run() -> list[str]:
        engine, p, body = streaming("completion")
        engine._dispatch([output("a", 1), output("b", 2)], 0.0)
        engine._fail(["req"], EngineDeadError("engine step failed: boom"))
        return [d.decode() async for d in body]

    sends = asyncio.run(run())
    assert len(sends) == 2 and sends[0].count("data: ") == 2
    error = json.loads(sends[1].removeprefix("data: "))
    assert error["error"]["type"] == "internal_error" and "boom" in error["error"]["message"]


def test_a_stream_closed_before_its_end_aborts_the_request():
    async def run() -> FakeCore:
        engine, p, body = streaming("chat")
        await anext(body)
        engine._dispatch([output("a", 1)], 0.0)
        await anext(body)
        await body.aclose()
        return engine.engine

    assert asyncio.run(run()).aborted == ["req"]


def test_several_tokens_in_one_output_are_that_many_gaps():
    metrics = ServerMetrics(AsyncEngine(FakeCore()), {"engine": "test"})
    first = output("a", 1)
    first.metrics.first_token_time = 0.5
    metrics.observe([first], 1.0)
    burst = output("bcd", 4)
    burst.new_token_ids = [7, 8, 9]
    metrics.observe([burst], 1.06)
    def sample(histogram, suffix: str, le: str | None = None) -> float:
        return next(x.value for x in histogram.collect()[0].samples
                    if x.name.endswith(suffix) and x.labels.get("le") == le)

    ttft, itl = metrics.ttft, metrics.itl
    assert sample(ttft, "_bucket", "0.5") - sample(ttft, "_bucket", "0.25") == 1
    assert sample(itl, "_count") == 3
    assert sample(itl, "_bucket", "0.025") - sample(itl, "_bucket", "0.01") == 3
    assert sample(itl, "_sum") == pytest.approx(0.06)
    assert "req" in metrics.last_token
