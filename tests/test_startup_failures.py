"""Start-up mistakes end in seconds with a message that says what to do, and leave nothing running."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import torch

from engine import LLM, SamplingParams
from tests.server_process import running_server, still_running_after, tiny_model_dir
from tests.tiny_models import make_tiny_checkpoint


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


# The way most first scripts are written: everything at module level, no `if __name__ == "__main__":` guard.
UNGUARDED_TP_SCRIPT = """
import sys
from engine import LLM, SamplingParams

llm = LLM(sys.argv[1], dtype="float32", device="cpu", kv_cache_tokens=2048, tensor_parallel_size=2)
out = llm.generate([[5, 6, 7, 8, 9]], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8))
print("TOKENS", out[0].token_ids)
"""


@pytest.fixture(scope="module")
def tp_script(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp-startup")
    make_tiny_checkpoint("llama", str(folder / "model"))
    script = folder / "first_script.py"
    script.write_text(UNGUARDED_TP_SCRIPT)
    return script, str(folder / "model")


@pytest.fixture(scope="module")
def guarded_tp_script(tp_script):
    script, model = tp_script
    guarded = script.with_name("guarded_script.py")
    guarded.write_text('if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in UNGUARDED_TP_SCRIPT.splitlines()))
    return guarded, model


def run_script(script, model: str, timeout_s: float, env: dict | None = None,
               meanwhile=None) -> tuple[subprocess.CompletedProcess, float]:
    """Runs the script in its own session (so nothing it starts can escape the test) and kills what is left."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), model], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        if meanwhile:
            meanwhile(proc)
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout_s:g}s (a hang); stderr ends:\n{err[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - started


def test_a_script_without_the_main_guard_runs_tensor_parallel(tp_script):
    script, model = tp_script
    done, _ = run_script(script, model, timeout_s=120)
    assert done.returncode == 0, done.stderr[-3000:]
    single = LLM(model, dtype="float32", device="cpu", kv_cache_tokens=2048).generate(
        [[5, 6, 7, 8, 9]], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8))
    assert f"TOKENS {single[0].token_ids}" in done.stdout


def test_a_worker_that_fails_while_starting_ends_the_engine_with_its_own_error(tp_script):
    """PAGEBENCH_HANG_DUMP_S is read by the workers alone: a bad value kills them while rank 0 waits for them."""
    script, model = tp_script
    done, elapsed = run_script(script, model, timeout_s=60, env={"PAGEBENCH_HANG_DUMP_S": "soon"})
    assert done.returncode != 0
    said = "tensor-parallel worker tp-rank-1 exited with code 1 while starting; its last lines:"
    assert said in done.stderr, done.stderr[-3000:]
    assert "ValueError: could not convert string to float: 'soon'" in done.stderr.split(said)[1], done.stderr[-3000:]
    print(f"worker start-up failure reported after {elapsed:.1f}s")


def test_a_worker_killed_while_starting_ends_the_engine_in_seconds(tp_script):
    script, model = tp_script
    killed_at = []

    def kill_first_worker(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                workers = [c for c in psutil.Process(proc.pid).children() if "worker_process" in " ".join(c.cmdline())
                           or "spawn_main" in " ".join(c.cmdline())]
                if workers:
                    workers[0].kill()
                    killed_at.append(time.monotonic())
                    return
            time.sleep(0.02)

    done, _ = run_script(script, model, timeout_s=60, meanwhile=kill_first_worker)
    assert killed_at, "no worker process appeared"
    assert done.returncode != 0
    assert "tensor-parallel worker tp-rank-1 exited (killed by SIGKILL" in done.stderr, done.stderr[-3000:]
    assert "while starting" in done.stderr
    assert time.monotonic() - killed_at[0] < 15


def test_a_request_log_that_cannot_be_written_is_refused_before_loading(tmp_path):
    path = tmp_path / "missing-dir" / "requests.jsonl"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "demo", "--port", "0", "--request-log",
                           str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"--request-log {path}: No such file or directory" in done.stderr and "loading" not in done.stdout


def test_a_context_beyond_the_model_is_refused_before_loading(tmp_path):
    model = tiny_model_dir(tmp_path / "m")  # max_position_embeddings 2048
    with pytest.raises(ValueError, match=r"max_model_len \(--max-model-len\) 100000000 is beyond this model's "
                                         r"context of 2048 tokens.*pass at most 2048"):
        LLM(model, device="cpu", max_model_len=100_000_000)
    assert LLM(model, device="cpu", max_model_len=2048).engine.max_model_len == 2048
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", model, "--port", "0", "--device", "cpu",
                           "--max-model-len", "100000000"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "beyond this model's context of 2048 tokens" in done.stderr, done.stderr
    assert "loaded" not in done.stdout and time.monotonic() - started < 60


def test_a_kv_cache_larger_than_memory_is_refused_with_the_limit(tmp_path):
    with pytest.raises(ValueError, match=r"kv_cache_tokens \(--kv-cache-tokens\) 1000000000000 needs .* GiB of KV "
                                         r"cache, but this host has available .* GiB: at most \d+ tokens fit"):
        LLM(tiny_model_dir(tmp_path / "m"), device="cpu", kv_cache_tokens=10**12)


def test_a_kv_cache_size_that_is_rounded_or_short_is_warned_about(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="engine"):
        llm = LLM(tiny_model_dir(tmp_path / "m"), device="cpu", kv_cache_tokens=1000, block_size=16)
    assert llm.engine.kv_capacity_tokens == 992
    assert "kv_cache_tokens 1000 is not a multiple of block_size 16: the KV cache holds 992 tokens" in caplog.text
    assert "kv_cache_tokens 992 is below the context of 2048 tokens" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_a_gpu_device_without_a_gpu_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"device 'cuda' \(--device\): torch sees no CUDA GPU.*use --device cpu"):
        LLM(tiny_model_dir(tmp_path / "m"), device="cuda")
    with pytest.raises(ValueError, match=r"device \(--device\) must be auto, cpu, cuda or cuda:N; got 'gpu0'"):
        LLM(tiny_model_dir(tmp_path / "m"), device="gpu0")


def test_a_served_engine_whose_worker_dies_exits_with_the_workers_error(tmp_path):
    """A group with a dead rank can serve nothing again: the server ends, instead of failing every request."""
    with running_server(tiny_model_dir(tmp_path / "m"), "--device", "cpu", "--tensor-parallel-size", "2",
                        log_dir=tmp_path) as server:
        (worker,) = [c for c in psutil.Process(server.proc.pid).children()
                     if "worker_process" in " ".join(c.cmdline()) or "spawn_main" in " ".join(c.cmdline())]
        worker.kill()
        killed = time.monotonic()
        code = server.proc.wait(timeout=60)
        elapsed = time.monotonic() - killed
        log = server.log()
    assert code == 1, log[-3000:]
    assert "engine serve: tensor-parallel worker tp-rank-1 exited (killed by SIGKILL" in log
    assert "after start-up" in log and elapsed < 20
    print(f"server ended {elapsed:.1f}s after its worker was killed")


def tp_workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The tensor-parallel workers of a script's process, waited for up to 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            found = [c for c in psutil.Process(proc.pid).children()
                     if "worker_process" in " ".join(c.cmdline()) or "spawn_main" in " ".join(c.cmdline())]
            if found:
                return found
        time.sleep(0.02)
    return []


def test_workers_do_not_outlive_a_rank_0_killed_while_they_start(guarded_tp_script):
    script, model = guarded_tp_script
    workers: list[psutil.Process] = []

    def kill_rank_0(proc: subprocess.Popen) -> None:
        workers.extend(tp_workers_of(proc))
        time.sleep(1.0)  # into its imports, past reading what rank 0 sent it
        proc.kill()
        # Measured before run_script's clean-up kills the whole session: the workers must go by themselves.
        assert not still_running_after(workers, 15), "a worker outlived its rank 0 by 15 s"

    done, _ = run_script(script, model, timeout_s=60, meanwhile=kill_rank_0)
    assert workers and done.returncode == -signal.SIGKILL


def test_a_tp_engine_in_a_child_rerunning_an_unguarded_script_says_to_add_the_guard(tp_script, tmp_path):
    """The engine's own workers need no guard, but a script's other spawned processes (a DataLoader's, say)
    re-run it; the engine must not start a second copy of itself there."""
    _, model = tp_script
    script = tmp_path / "with_a_helper_process.py"
    script.write_text(UNGUARDED_TP_SCRIPT + "import multiprocessing\n"
                      "helper = multiprocessing.get_context('spawn').Process(target=print)\n"
                      "helper.start()\nhelper.join()\nprint('HELPER', helper.exitcode)\n")
    done, _ = run_script(script, model, timeout_s=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HELPER 1" in done.stdout
    assert "put the code that creates LLM under `if __name__ == \"__main__\":`" in done.stderr, done.stderr[-3000:]


def test_ctrl_c_while_tensor_parallel_starts_ends_everything_in_seconds(guarded_tp_script):
    """Ctrl-C reaches the terminal's whole process group: rank 0 must not sit on in the rendezvous."""
    script, model = guarded_tp_script
    workers: list[psutil.Process] = []

    def ctrl_c(proc: subprocess.Popen) -> None:
        workers.extend(tp_workers_of(proc))
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        pressed = time.monotonic()
        proc.wait(timeout=20)
        assert not still_running_after(workers, 10), "a worker outlived Ctrl-C by 10 s"
        assert time.monotonic() - pressed < 20

    done, _ = run_script(script, model, timeout_s=60, meanwhile=ctrl_c)
    assert workers and done.returncode != 0 and "KeyboardInterrupt" in done.stderr


def test_serve_options_reach_the_engine(monkeypatch):
    """--enforce-eager (no CUDA graphs at all, for debugging a graph) and --no-async-scheduling end up in the
    engine's arguments; the server itself is not started."""
    from typer.testing import CliRunner

    import engine.server.serve as serve_module
    from engine.cli import app

    seen = {}
    monkeypatch.setattr(serve_module, "serve", lambda args: seen.update(args.engine_kwargs))
    result = CliRunner().invoke(app, ["serve", "random:qwen3-0.6b", "--port", "0", "--enforce-eager",
                                      "--no-async-scheduling"])
    assert result.exit_code == 0, result.output
    assert seen["enforce_eager"] is True and seen["async_scheduling"] is False
    result = CliRunner().invoke(app, ["serve", "random:qwen3-0.6b", "--port", "0"])
    assert result.exit_code == 0 and seen["enforce_eager"] is False and seen["async_scheduling"] is None
