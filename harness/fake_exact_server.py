"""fake_exact_server: a FAKE model server for tests and timing benchmarks, not a model.

It emits tokens at exact, configured intervals over an OpenAI-compatible SSE API and Ollama-style NDJSON,
stamps every chunk with the monotonic time it was sent (`x_mono`, comparable across processes on one host),
and injects faults on demand: slow start, 503 health, HTTP 500s, disconnects mid-stream, malformed chunks,
and a process that dies mid-run. Run: python -m harness.fake_exact_server --port 8000 --itl-ms 20
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

Send = Callable[[dict[str, Any]], Awaitable[None]]
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda")


@dataclass(slots=True)
class FakeConfig:
    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    eos_after: int | None = None
    fail_every: int = 0
    disconnect_every: int = 0
    malformed_every: int = 0
    die_after: int = 0
    unhealthy_for_s: float = 0.0
    models: list[str] = field(default_factory=lambda: ["fake"])
    pullable: bool = True
    size_vram: int = 0
    model_size: int = 100_000_000
    stamp_log: str | None = None


class FakeExactServer:
    def __init__(self, cfg: FakeConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.requests = 0
        self.running = 0
        self.loaded: set[str] = set()

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        route = getattr(self, f"r_{method.lower()}_{path.strip('/').replace('/', '_')}", None)
        if route is None:
            return await self.json(send, 404, {"error": f"no route {method} {path}"})
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            return await self.json(send, 400, {"error": "body is not JSON"})
        await route(req, send)

    async def json(self, send: Send, status: int, obj: Any, ctype: bytes = b"application/json") -> None:
        data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype), (b"server", b"fake_exact_server")]})
        await send({"type": "http.response.body", "body": data})

    async def r_get_health(self, req: dict, send: Send) -> None:
        healthy = time.monotonic() - self.started >= self.cfg.unhealthy_for_s
        await self.json(send, 200 if healthy else 503, {"status": "ok" if healthy else "loading"})

    async def r_get_version(self, req: dict, send: Send) -> None:
        await self.json(send, 200, {"version": "fake_exact_server-1"})

    async def r_get_info(self, req: dict, send: Send) -> None:
        await self.json(send, 200, {"block_size": 16, "kv_blocks_total": 1000, "dtype": "fake"})

    async def r_get_v1_models(self, req: dict, send: Send) -> None:
        await self.json(send, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.cfg.models]})

    async def r_get_metrics(self, req: dict, send: Send) -> None:
        text = (f"# TYPE fake:num_requests_running gauge\nfake:num_requests_running {self.running}\n"
                f"# TYPE fake:num_requests_waiting gauge\nfake:num_requests_waiting 0\n"
                f"# TYPE fake_kv_blocks_used gauge\nfake_kv_blocks_used {4 * self.running}\n"
                f"# TYPE fake_kv_blocks_total gauge\nfake_kv_blocks_total 1000\n")
        await self.json(send, 200, text.encode(), b"text/plain; version=0.0.4")

    async def r_get_api_version(self, req: dict, send: Send) -> None:
        await self.json(send, 200, {"version": "0.0.0-fake_exact_server"})

    async def r_get_api_tags(self, req: dict, send: Send) -> None:
        await self.json(send, 200, {"models": [{"name": m, "model": m} for m in self.cfg.models]})

    async def r_get_api_ps(self, req: dict, send: Send) -> None:
        models = [{"name": m, "model": m, "size": self.cfg.model_size, "size_vram": self.cfg.size_vram, "digest": "fake",
                   "details": {"quantization_level": "FAKE", "parameter_size": "0"}, "context_length": 4096} for m in sorted(self.loaded)]
        await self.json(send, 200, {"models": models})

    async def r_post_api_show(self, req: dict, send: Send) -> None:
        if req.get("model") not in self.cfg.models:
            return await self.json(send, 404, {"error": f"model '{req.get('model')}' not found"})
        await self.json(send, 200, {"details": {"format": "gguf", "family": "fake", "parameter_size": "0", "quantization_level": "FAKE"}, "model_info": {}})

    async def r_post_api_pull(self, req: dict, send: Send) -> None:
        if not self.cfg.pullable:
            return await self.json(send, 500, {"error": "pull model manifest: file does not exist"})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
        for done in (0, 50, 100):
            await send({"type": "http.response.body", "body": json.dumps({"status": "pulling fake", "total": 100, "completed": done}).encode() + b"\n", "more_body": True})
            await asyncio.sleep(0.01)
        self.cfg.models.append(req["model"])
        await send({"type": "http.response.body", "body": b'{"status":"success"}\n'})

    async def r_post_v1_chat_completions(self, req: dict, send: Send) -> None:
        await self.generate(req, send, "sse", chat=True)

    async def r_post_v1_completions(self, req: dict, send: Send) -> None:
        await self.generate(req, send, "sse", chat=False)

    async def r_post_api_chat(self, req: dict, send: Send) -> None:
        await self.generate(req, send, "ndjson", chat=True)

    async def r_post_api_generate(self, req: dict, send: Send) -> None:
        await self.generate(req, send, "ndjson", chat=False)

    async def generate(self, req: dict, send: Send, style: str, chat: bool) -> None:
        cfg, model = self.cfg, req.get("model")
        if style == "ndjson" and model not in cfg.models:
            return await self.json(send, 404, {"error": f"model '{model}' not found, try pulling it first"})
        opts = req.get("options") or {}
        n = int(opts.get("num_predict") or req.get("max_tokens") or 16)
        prompt = req.get("prompt") or " ".join(str(m.get("content", "")) for m in req.get("messages") or [])
        if style == "ndjson" and not chat and not prompt:
            self.loaded.add(model)
            return await self.json(send, 200, {"model": model, "response": "", "done": True, "done_reason": "load"})
        if cfg.eos_after and not (style == "sse" and req.get("ignore_eos")):
            n = min(n, cfg.eos_after)
        self.requests += 1
        k = self.requests
        if cfg.fail_every and k % cfg.fail_every == 0:
            why = f"injected failure on request {k}"
            return await self.json(send, 500, {"error": {"message": why, "type": "fake"} if style == "sse" else why})
        self.loaded.add(model)
        self.running += 1
        try:
            await self.emit(req, send, style, chat, n, k, len(prompt.split()))
        finally:
            self.running -= 1

    async def emit(self, req: dict, send: Send, style: str, chat: bool, n: int, k: int, prompt_tokens: int) -> None:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        t0 = loop.time()
        ctype = b"text/event-stream" if style == "sse" else b"application/x-ndjson"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        base = {"id": f"fake-{k}", "model": req.get("model"), "object": "chat.completion.chunk" if chat else "text_completion"}

        stamps: list[float] = []

        async def write(obj: dict) -> None:
            obj["x_mono"] = time.perf_counter()
            if has_token(obj):
                stamps.append(obj["x_mono"])
            line = json.dumps(obj)
            data = f"data: {line}\n\n" if style == "sse" else line + "\n"
            await send({"type": "http.response.body", "body": data.encode(), "more_body": True})

        if style == "sse" and chat:
            await write({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        first = last = None
        for i in range(n):
            delay = t0 + (cfg.ttft_ms + i * cfg.itl_ms) / 1000.0 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == n // 2 and i > 0:
                if cfg.die_after and k >= cfg.die_after:
                    os._exit(3)
                if cfg.disconnect_every and k % cfg.disconnect_every == 0:
                    raise ConnectionAbortedError(f"fake_exact_server: injected disconnect on request {k}")
                if cfg.malformed_every and k % cfg.malformed_every == 0:
                    await send({"type": "http.response.body", "body": b'data: {"id": "broken", "choices": [\n\n' if style == "sse" else b'{"model": "broken\n', "more_body": True})
            word = " " + WORDS[i % len(WORDS)]
            last = time.perf_counter()
            first = first or last
            if style == "sse":
                choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
                choice["finish_reason"] = ("length" if i == n - 1 else None)
                await write({**base, "choices": [choice]})
            else:
                piece = {"message": {"role": "assistant", "content": word}} if chat else {"response": word}
                await write({"model": req.get("model"), **piece, "done": False})
        if cfg.stamp_log:
            seed = req.get("seed", (req.get("options") or {}).get("seed"))
            with open(cfg.stamp_log, "a") as f:
                f.write(json.dumps({"seed": seed, "sent": stamps}) + "\n")
        if style == "sse":
            if (req.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
                await write({**base, "choices": [], "usage": usage})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        ns = int(((last or t0) - (first or t0)) * 1e9)
        final = {"model": req.get("model"), "done": True, "done_reason": "length" if n else "stop", "eval_count": n,
                 "eval_duration": ns, "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1000, "load_duration": 2000,
                 "total_duration": int((loop.time() - t0) * 1e9)}
        final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        line = json.dumps(final) + "\n"
        await send({"type": "http.response.body", "body": line.encode()})


@contextlib.contextmanager
def running(*args: str, cpu: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Starts the fake server in a subprocess on a free port and yields its URL; for tests and benchmarks."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen([sys.executable, "-m", "harness.fake_exact_server", "--port", str(port), *args], preexec_fn=pin)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "/version", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake_exact_server did not start (exit code {proc.poll()})") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def has_token(obj: dict) -> bool:
    if obj.get("response") or (obj.get("message") or {}).get("content"):
        return True
    choices = obj.get("choices") or [{}]
    return bool(choices[0].get("text") or (choices[0].get("delta") or {}).get("content"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.fake_exact_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--eos-after", type=int, help="stop after this many tokens unless the request asks for ignore_eos")
    p.add_argument("--fail-every", type=int, default=0, help="answer HTTP 500 to every Nth generation request")
    p.add_argument("--disconnect-every", type=int, default=0, help="drop the connection halfway through every Nth stream")
    p.add_argument("--malformed-every", type=int, default=0, help="send a broken chunk halfway through every Nth stream")
    p.add_argument("--die-after", type=int, default=0, help="exit the process halfway through the Nth stream")
    p.add_argument("--slow-start", type=float, default=0.0, help="seconds to wait before listening")
    p.add_argument("--unhealthy-for", type=float, default=0.0, help="seconds /health answers 503 after listening")
    p.add_argument("--models", default="fake", help="comma-separated model names the server knows")
    p.add_argument("--no-pull", action="store_true", help="make /api/pull fail")
    p.add_argument("--size-vram", type=int, default=0, help="bytes reported as size_vram by /api/ps")
    p.add_argument("--stamp-log", help="append each stream's token send times (monotonic clock) to this JSONL file")
    a = p.parse_args(argv)
    if a.slow_start:
        time.sleep(a.slow_start)
    cfg = FakeConfig(a.ttft_ms, a.itl_ms, a.eos_after, a.fail_every, a.disconnect_every, a.malformed_every, a.die_after,
                     a.unhealthy_for, a.models.split(","), not a.no_pull, a.size_vram, stamp_log=a.stamp_log)
    import uvicorn

    uvicorn.run(FakeExactServer(cfg), host=a.host, port=a.port, log_level="critical", access_log=False,
                loop="asyncio", http="h11", lifespan="off", backlog=4096, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
