"""benchmarks/pyspy_summary.py on a small collapsed-stack file like `py-spy record --threads --format raw` writes."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "pyspy_summary.py"
_spec = importlib.util.spec_from_file_location("pyspy_summary", SCRIPT)
pyspy_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pyspy_summary)

LOOP = "thread (0x7f01): engine-loop"
MAIN = "thread (0x7f02): MainThread"
# 60 samples on the engine loop, 40 on the main thread. step's samples sit on two lines (180, 194) and the linear
# layer's on two more (31, 40): each must add up to one function. sqlalchemy's own engine/ folder is not ours.
STACKS = f"""\
{LOOP};Thread.run (threading.py:982);AsyncEngine._run (engine/server/async_engine.py:54);step (engine/llm_engine.py:180);forward (engine/layers/linear.py:31) 30
{LOOP};Thread.run (threading.py:982);AsyncEngine._run (engine/server/async_engine.py:54);step (engine/llm_engine.py:194);forward (engine/layers/linear.py:40) 15
{LOOP};Thread.run (threading.py:982);AsyncEngine._run (engine/server/async_engine.py:54);step (engine/llm_engine.py:194);schedule (engine/scheduler.py:77) 10
{LOOP};Thread.run (threading.py:982);AsyncEngine._run (engine/server/async_engine.py:57);wait (threading.py:320) 5
{MAIN};<module> (engine/cli.py:9);Runner.run (asyncio/runners.py:118) 28
{MAIN};<module> (engine/cli.py:9);send (uvicorn/protocols/http/h11_impl.py:470) 8
{MAIN};<module> (engine/cli.py:9);execute (sqlalchemy/engine/base.py:1400) 3
{MAIN};<module> (/srv/pagebench/engine/cli.py:12);encode (/srv/pagebench/engine/tokenizer.py:60) 1
"""


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    path = tmp_path / "wall.txt"
    path.write_text(STACKS)
    return path


def test_collect_merges_lines_per_thread(stacks: Path) -> None:
    total, threads, ours = pyspy_summary.collect(str(stacks))
    assert total == 100
    assert {t: sum(c.values()) for t, c in threads.items()} == {LOOP: 60, MAIN: 40}
    loop = threads[LOOP]
    assert loop.most_common(2) == [("forward (engine/layers/linear.py)", 45), ("schedule (engine/scheduler.py)", 10)]
    assert loop["wait (threading.py)"] == 5
    assert ours[LOOP]["step (engine/llm_engine.py)"] == 55
    assert ours[LOOP]["AsyncEngine._run (engine/server/async_engine.py)"] == 60
    assert "Thread.run (threading.py)" not in ours[LOOP]
    main = ours[MAIN]
    assert main["<module> (engine/cli.py)"] == 39
    assert main["encode (/srv/pagebench/engine/tokenizer.py)"] == 1  # an absolute path to our code counts
    assert not any("sqlalchemy" in f for f in main)


def test_summary_lines(stacks: Path) -> None:
    text = pyspy_summary.summarize(str(stacks))
    lines = text.splitlines()
    assert lines[0] == f"== {stacks}: 100 samples"
    assert lines[1] == f"-- {LOOP}: 60 samples (60.0%)"
    assert lines[2:5] == ["   self  75.0%  forward (engine/layers/linear.py)",
                          "   self  16.7%  schedule (engine/scheduler.py)",
                          "   self   8.3%  wait (threading.py)"]
    assert lines[5:7] == ["   incl 100.0%  AsyncEngine._run (engine/server/async_engine.py)",
                          "   incl  91.7%  step (engine/llm_engine.py)"]
    main = lines.index(f"-- {MAIN}: 40 samples (40.0%)")
    assert main > 7
    assert lines[main + 1] == "   self  70.0%  Runner.run (asyncio/runners.py)"
    assert "   incl  97.5%  <module> (engine/cli.py)" in lines[main:]


def test_cli_prints_every_file(stacks: Path, tmp_path: Path) -> None:
    gil = tmp_path / "gil.txt"
    gil.write_text(f"{LOOP};step (engine/llm_engine.py:180) 3\n{LOOP};step (engine/llm_engine.py:181) 1\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(stacks), str(gil)], capture_output=True, text=True,
                         check=True).stdout
    assert f"== {stacks}: 100 samples" in out
    assert f"== {gil}: 4 samples\n-- {LOOP}: 4 samples (100.0%)\n   self 100.0%  step (engine/llm_engine.py)" in out
