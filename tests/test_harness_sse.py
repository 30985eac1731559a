"""The SSE reader on byte streams real servers produce: split events, CRLF, comments, errors mid-stream."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from harness.backends.openai_http import OpenAIHttpBackend
from harness.record import Clock, RequestRecord
from harness.scenario import Scenario
from harness.workload import WorkItem


def chunk(text: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"choices": [] if text is None and finish is None else [{"delta": {"content": text or ""}, "finish_reason": finish}]}
    if usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def read(parts: list[bytes], status: int = 200) -> RequestRecord:
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/event-stream")]})
        for p in parts:
            await send({"type": "http.response.body", "body": p, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> RequestRecord:
        sc = Scenario.model_validate({"name": "s", "backends": [{"name": "b", "kind": "openai", "model": "m", "url": "http://t"}],
                                      "workload": {"tokenizer": None}, "load": {"requests": 1}})
        backend = OpenAIHttpBackend(sc.backends[0], "http://t", sc.workload)
        backend.pool.factory = lambda ctx: httpx.AsyncClient(base_url="http://t", transport=httpx.ASGITransport(app))
        rec = RequestRecord("b", "c=1", "measure", 0, 3, time.perf_counter())
        await backend.generate(WorkItem(0, "x", None, [{"role": "user", "content": "x"}], "x", 1, 3, 0), rec, 5.0)
        await backend.close()
        return rec

    return asyncio.run(go())


USAGE = {"prompt_tokens": 4, "completion_tokens": 3}


def test_events_split_across_reads_and_crlf():
    body = chunk("a") + chunk("b") + chunk("c", "length") + chunk(usage=USAGE) + b"data: [DONE]\n\n"
    body = body.replace(b"\n", b"\r\n")
    rec = read([body[:7], body[7:50], body[50:51], body[51:]])
    assert rec.error is None and len(rec.chunk_times) == 3 and rec.output_tokens == 3 and rec.prompt_tokens == 4
    assert rec.finish_reason == "length"


def test_role_only_and_comment_lines_are_not_tokens():
    role = b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    rec = read([b": keep-alive\n\n", role, chunk("a"), b"event: ping\n\n", chunk("b", "stop"), b"data: [DONE]\n\n"])
    assert rec.error is None and len(rec.chunk_times) == 2 and rec.output_tokens is None
    row = rec.to_row(Clock())
    assert row["output_tokens"] == 2 and row["server"] == {"output_tokens_source": "chunks"}


def test_finish_without_done_is_accepted_but_a_cut_stream_is_not():
    assert read([chunk("a", "stop")]).error is None
    rec = read([chunk("a"), chunk("b")])
    assert rec.error == "stream ended before a finish_reason or [DONE]" and len(rec.chunk_times) == 2


@pytest.mark.parametrize("parts, needle", [
    ([chunk("a"), b'data: {"error": {"message": "engine overloaded"}}\n\n'], "server error mid-stream: engine overloaded"),
    ([b"data: {broken\n\n"], "malformed response"),
    ([b"data: 123\n\n"], "malformed response: unexpected shape"),
])
def test_bad_streams_become_request_errors(parts, needle):
    assert needle in read(parts).error


def test_http_error_status_and_openai_error_body():
    rec = read([b'{"error": {"message": "max_tokens is too large", "param": "max_tokens"}}'], status=400)
    assert rec.status_code == 400 and rec.error == "HTTP 400: max_tokens is too large"
