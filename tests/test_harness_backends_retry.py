"""A request that a stale keep-alive connection drops before any answer is sent once more; nothing else is."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.backends import make_backend
from harness.record import RequestRecord
from harness.scenario import Scenario
from harness.workload import build_workload


def backend_and_item():
    sc = Scenario.model_validate({"name": "t", "backends": [{"name": "b", "kind": "openai", "model": "m",
                                                              "url": "http://127.0.0.1:9"}],
                                  "workload": {"tokenizer": None, "output_tokens": 4, "input_tokens": 8},
                                  "load": {"requests": 1}})
    from pathlib import Path

    return make_backend(sc.backends[0], "http://127.0.0.1:9", sc.workload), build_workload(sc, Path("."))[0]


@pytest.mark.parametrize("message, sends, error", [
    ("Server disconnected without sending a response.", 2, None),
    ("peer closed connection without sending complete message body", 1, "stream broken"),
])
def test_stale_connection_is_retried_once(monkeypatch, message, sends, error):
    backend, item = backend_and_item()
    calls = []

    async def fake_stream(http, item, rec):
        calls.append(rec.sent)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError(message)
        rec.token(1.0)
        rec.finish_reason, rec.finished = "length", 2.0

    monkeypatch.setattr(backend, "_stream", fake_stream)
    rec = RequestRecord("b", "c=1", "measure", 0, 4, 0.0)
    asyncio.run(backend.generate(item, rec, 5.0))
    assert len(calls) == sends
    assert (rec.error or "").startswith(error) if error else rec.error is None
    assert rec.server.get("resent_after_stale_connection", False) is (sends == 2)


def test_a_stream_that_started_is_never_resent(monkeypatch):
    backend, item = backend_and_item()
    calls = []

    async def fake_stream(http, item, rec):
        calls.append(1)
        rec.token(1.0)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    monkeypatch.setattr(backend, "_stream", fake_stream)
    rec = RequestRecord("b", "c=1", "measure", 0, 4, 0.0)
    asyncio.run(backend.generate(item, rec, 5.0))
    assert len(calls) == 1 and rec.error.startswith("stream broken")
