"""Start-up mistakes end in seconds with a message that says what to do, and leave nothing running."""
import socket
import subprocess
import sys
import time

import httpx

from tests.server_process import running_server, tiny_model_dir


def test_a_port_in_use_fails_before_anything_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "demo", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "--port" in done.stderr
    assert "loading" not in done.stdout
    assert elapsed < 1.5, elapsed  # the interpreter's own start is most of it; torch is never imported


def test_the_claimed_port_is_the_one_served_and_a_second_server_is_refused(tmp_path):
    with running_server(tiny_model_dir(tmp_path / "m"), "--device", "cpu", log_dir=tmp_path) as server:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        port = server.url.rsplit(":", 1)[1]
        done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "demo", "--port", port],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in done.stderr
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
