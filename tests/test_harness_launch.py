"""Launching servers: environment for Ollama, readiness, stopping the whole process group; report hooks."""
from __future__ import annotations

import asyncio
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from harness.backends import BackendError
from harness.cli import app
from harness.fake_exact_server import running
from harness.launch import start, wait_ready
from harness.scenario import OllamaBackend


def test_launched_ollama_gets_its_host_parallelism_and_context(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11434")
    code = "import os; print(*(os.environ.get(k) for k in ('OLLAMA_HOST', 'OLLAMA_NUM_PARALLEL', 'OLLAMA_CONTEXT_LENGTH', 'EXTRA')))"
    cfg = OllamaBackend(name="o", kind="ollama", model="m", launch=["{python}", "-c", code], num_parallel=3, num_ctx=2048,
                        env={"EXTRA": "yes"})
    launched = start(cfg, tmp_path / "o.log")
    assert launched.proc.wait(10) == 0
    host = launched.url.removeprefix("http://")
    assert (tmp_path / "o.log").read_text().splitlines()[-1] == f"{host} 3 2048 yes"
    assert launched.argv[0] == sys.executable


def test_stop_takes_the_children_too(tmp_path):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    cfg = OllamaBackend(name="o", kind="ollama", model="m", launch=["{python}", "-c", code])
    launched = start(cfg, tmp_path / "o.log")
    deadline = time.monotonic() + 10
    while not psutil.Process(launched.proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(launched.proc.pid).children()[0]
    asyncio.run(launched.stop(5))
    child.wait(5)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_url_backend_is_waited_for_while_loading_but_refused_fails_fast():
    import httpx

    with running("--unhealthy-for", "3") as url:
        assert httpx.get(url + "/health").status_code == 503
        t0 = time.monotonic()
        asyncio.run(wait_ready(url, "paged", 20))
        assert httpx.get(url + "/health").status_code == 200 and time.monotonic() - t0 > 0.1
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach http://127.0.0.1:9"):
        asyncio.run(wait_ready("http://127.0.0.1:9", "paged", 20))
    assert time.monotonic() - t0 < 5


def test_report_commands_explain_missing_module_and_bad_folders(tmp_path, monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a run folder" in bad.output
    assert runner.invoke(app, ["compare", str(tmp_path), str(tmp_path)]).exit_code == 2
    (tmp_path / "run.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "harness.report", None)
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "the report module is not available" in res.output
