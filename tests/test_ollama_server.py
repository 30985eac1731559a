"""The real Ollama (built by scripts/setup_ollama.sh) serving the demo model through scripts/ollama_serve.py."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "scripts" / "ollama_serve.py"
_spec = importlib.util.spec_from_file_location("ollama_serve", SERVE)
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)
MODEL = serve.DEMO_MODEL


def _missing() -> str | None:
    try:
        serve.find_binary()
        serve.demo_gguf()
    except serve.SetupError as e:
        return str(e)
    return None


requires_ollama = pytest.mark.skipif(_missing() is not None, reason=f"no real Ollama here: {_missing()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(slots=True)
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    children: list[psutil.Process] = field(default_factory=list)

    def stop(self) -> int:
        """SIGTERM to the launched process only: Ollama must take its runners down by itself."""
        if self.proc.poll() is None:
            self.children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start_server(log: Path, **env: str) -> Server:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SERVE), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ollama_serve.py exited with {proc.returncode}: {log.read_text()[-1500:]}")
        try:
            if httpx.get(f"{url}/api/version", timeout=1).status_code == 200:
                return Server(proc, url, log)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"Ollama did not answer on {url} within 120s: {log.read_text()[-1500:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("ollama") / "serve.log", OLLAMA_NUM_PARALLEL="2",
                     OLLAMA_CONTEXT_LENGTH="1024", OLLAMA_KEEP_ALIVE="10m")
    yield s
    s.stop()


def expected_prompt_tokens(messages: list[dict]) -> int:
    """Tokens of the prompt the GGUF's own chat template renders: what the engine feeds the same model."""
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    tok = from_gguf(GGUFFile(str(serve.demo_gguf())))
    return len(tok.encode(tok.apply_chat_template(messages)))


@dataclass(slots=True)
class Streamed:
    token_times: list[float]
    text: str
    final: Any


async def stream(url: str, content: str, num_predict: int, api: str = "chat", model: str = MODEL) -> Streamed:
    client = ollama.AsyncClient(host=url)
    options = {"temperature": 0, "num_predict": num_predict, "seed": 1}
    if api == "chat":
        parts = await client.chat(model=model, messages=[{"role": "user", "content": content}], stream=True, options=options)
    else:
        parts = await client.generate(model=model, prompt=content, stream=True, options=options)
    times: list[float] = []
    pieces: list[str] = []
    final = None
    async for part in parts:
        piece = part.message.content if api == "chat" else part.response
        if piece:
            times.append(time.monotonic())
            pieces.append(piece)
        if part.done:
            final = part
    return Streamed(times, "".join(pieces), final)


def check_timings(final: Any, num_predict: int) -> None:
    assert final is not None and final.done
    assert final.done_reason in ("stop", "length")
    assert 0 < final.eval_count <= num_predict
    assert final.eval_duration > 0 and final.prompt_eval_duration > 0
    assert final.prompt_eval_count > 0
    assert final.load_duration is not None and final.load_duration >= 0
    assert final.total_duration >= final.eval_duration + final.prompt_eval_duration


@pytest.mark.ollama
@requires_ollama
def test_import_carries_the_gguf_chat_template(server: Server) -> None:
    show = ollama.Client(host=server.url).show(MODEL)
    assert f'TEMPLATE """{show.template}"""' in (ROOT / "scripts" / "Modelfile.smollm2").read_text()
    assert show.details.quantization_level == "Q4_1" and show.details.family == "llama"
    assert show.parameters.split() == ["stop", '"<|im_end|>"']


@pytest.mark.ollama
@requires_ollama
def test_chat_streams_a_sensible_answer_with_timings(server: Server) -> None:
    question = "What is the capital of France?"
    got = asyncio.run(stream(server.url, question, 24))
    check_timings(got.final, 24)
    assert "paris" in got.text.lower(), got.text
    assert len(got.token_times) == got.final.eval_count
    assert got.final.prompt_eval_count == expected_prompt_tokens([{"role": "user", "content": question}])


@pytest.mark.ollama
@requires_ollama
def test_generate_streams_with_timings(server: Server) -> None:
    prompt = "Name one color of the rainbow."
    got = asyncio.run(stream(server.url, prompt, 8, api="generate"))
    check_timings(got.final, 8)
    assert got.text.strip()
    assert got.final.prompt_eval_count == expected_prompt_tokens([{"role": "user", "content": prompt}])


@pytest.mark.ollama
@requires_ollama
def test_num_parallel_two_serves_two_streams_at_once(server: Server) -> None:
    async def both() -> list[Streamed]:
        return await asyncio.gather(stream(server.url, "Count from one to twenty.", 16),
                                    stream(server.url, "Say something about rivers.", 16))

    a, b = asyncio.run(both())
    for s in (a, b):
        check_timings(s.final, 16)
    # Interleaved streams: each one's first token arrives before the other's last.
    assert a.token_times[0] < b.token_times[-1] and b.token_times[0] < a.token_times[-1]


@pytest.mark.ollama
@requires_ollama
def test_missing_model_is_a_404(server: Server) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        asyncio.run(stream(server.url, "hello", 4, model="no-such-model:1b"))
    assert e.value.status_code == 404
    assert "not found" in e.value.error


@pytest.mark.ollama
@requires_ollama
def test_full_queue_one_at_a_time_then_sigterm_leaves_nothing(tmp_path: Path) -> None:
    s = start_server(tmp_path / "serve.log", OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1",
                     OLLAMA_CONTEXT_LENGTH="1024")
    try:
        async def burst() -> list[Streamed | BaseException]:
            return await asyncio.gather(*(stream(s.url, f"Say the number {i}.", 4) for i in range(6)),
                                        return_exceptions=True)

        # While the first request loads the model the scheduler takes nothing more; a queue of one then overflows.
        results = asyncio.run(burst())
        busy = [r for r in results if isinstance(r, ollama.ResponseError)]
        assert busy and all(r.status_code == 503 and "server busy" in r.error for r in busy), results
        assert any(isinstance(r, Streamed) for r in results)

        async def both() -> list[Streamed]:
            return await asyncio.gather(stream(s.url, "Count from one to twenty.", 12),
                                        stream(s.url, "Say something about rivers.", 12))

        a, b = asyncio.run(both())
        first, second = sorted((a, b), key=lambda x: x.token_times[0])
        assert second.token_times[0] > first.token_times[-1], "one slot: the second stream waits for the first"
    finally:
        code = s.stop()
    assert code == 0, s.log.read_text()[-1500:]
    assert s.children, "the loaded model's runner should have been a child of ollama serve"
    assert not [p for p in s.children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(ConnectionError):
        ollama.Client(host=s.url).list()
    # The client maps refused connections to ConnectionError only outside streams; a stream raises httpx's error.
    with pytest.raises(httpx.ConnectError):
        asyncio.run(stream(s.url, "hello", 4))


@pytest.mark.ollama
@requires_ollama
def test_import_runs_once_and_again_when_the_modelfile_changes(tmp_path: Path) -> None:
    env = {**os.environ, "OLLAMA_MODELS": str(tmp_path / "models")}
    run = lambda *extra: subprocess.run([sys.executable, str(SERVE), "--import-only", *extra], env=env,
                                        capture_output=True, text=True, timeout=300)
    first = run()
    assert first.returncode == 0 and "imported smollm2-135m-instruct:q4_1" in first.stderr, first.stderr
    assert serve.manifest_path(tmp_path / "models", MODEL).is_file()
    again = run()
    assert again.returncode == 0 and "imported" not in again.stderr
    changed = tmp_path / "Modelfile"
    changed.write_text(serve.DEMO_MODELFILE.read_text() + "PARAMETER num_ctx 512\n")
    third = run("--modelfile", str(changed))
    assert third.returncode == 0 and "imported" in third.stderr, third.stderr


def test_serve_script_names_the_missing_binary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PAGEBENCH_OLLAMA"} | {"PAGEBENCH_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SERVE), "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"Ollama {serve.VERSION} is not built" in done.stderr and "scripts/setup_ollama.sh" in done.stderr

    env["PAGEBENCH_OLLAMA"] = str(tmp_path / "nothing-here")
    done = subprocess.run([sys.executable, str(SERVE), "--no-import"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "PAGEBENCH_OLLAMA" in done.stderr and "not an executable" in done.stderr


def test_manifest_path_follows_ollama_naming(tmp_path: Path) -> None:
    lib = tmp_path / "manifests" / "registry.ollama.ai"
    assert serve.manifest_path(tmp_path, "smollm2-135m-instruct:q4_1") == lib / "library" / "smollm2-135m-instruct" / "q4_1"
    assert serve.manifest_path(tmp_path, "deepseek-r1") == lib / "library" / "deepseek-r1" / "latest"
    assert serve.manifest_path(tmp_path, "me/tiny:v2") == lib / "me" / "tiny" / "v2"
