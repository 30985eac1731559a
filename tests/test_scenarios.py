"""The shipped scenarios: each passes `bench validate`, and each compares what it says it compares."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import launch_argv, load_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))


def test_the_four_scenarios_are_there() -> None:
    names = {p.name for p in SCENARIOS}
    assert {"smoke.yaml", "qwen32b.yaml", "qwen3-0.6b.yaml", "prefix-sharing.yaml"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_bench_validate_accepts(path: Path) -> None:
    done = CliRunner().invoke(app, ["validate", str(path)])
    assert done.exit_code == 0, done.output
    assert "ok" in done.output


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_scenario_sets_engine_against_a_4bit_server(path: Path) -> None:
    sc = load_scenario(path).scenario
    kinds = {b.kind for b in sc.backends}
    assert "paged" in kinds and kinds & {"ollama", "openai"}
    for b in sc.backends:
        if b.launch:
            argv = launch_argv(b.launch)
            assert "{port}" in argv, f"{b.name}: a launched server must listen on the port bench picks"
            if b.kind == "paged":
                assert argv[1:4] == ["-m", "engine.cli", "serve"]
                assert argv[argv.index("--served-model-name") + 1] == b.model
            elif b.kind == "ollama":
                assert argv[1] == "scripts/ollama_serve.py"
            else:
                assert argv[0].endswith("llama-server") and argv[argv.index("-m") + 1].endswith("Q4_K_M.gguf")
                assert b.name.startswith("llamacpp-"), "llama.cpp is labelled as llama.cpp, never as Ollama"


@pytest.mark.parametrize("name", ["gpu-7b.yaml", "gpu-32b.yaml"])
def test_gpu_comparison_scenarios(name: str) -> None:
    """The engine against the real Ollama, with its defaults and tuned for 64 users, and llama.cpp with 64 slots,
    the three 4-bit servers on one file, with the prompt and output fitting every slot's context."""
    sc = load_scenario(REPO / "scenarios" / name).scenario
    engine = next(b for b in sc.backends if b.kind == "paged")
    assert launch_argv(engine.launch)[4].startswith("random:qwen2.5-")
    need = sc.workload.input_tokens.upper + sc.workload.output_tokens.upper + 64
    files = set()
    for b in sc.backends:
        if b.kind == "openai":
            argv = launch_argv(b.launch)
            assert b.supports_ignore_eos, "llama.cpp runs every request to its full output length"
            np_, ctx = int(argv[argv.index("-np") + 1]), int(argv[argv.index("-c") + 1])
            assert (np_, b.name) == (64, "llamacpp-q4km-np64") and ctx // np_ >= need
            files.add(argv[argv.index("-m") + 1])
        elif b.kind == "ollama":
            argv = launch_argv(b.launch)
            assert argv[argv.index("--modelfile") + 1] == "scripts/Modelfile.qwen2"
            files.add(argv[argv.index("--gguf") + 1])
    ollama = {b.name: b for b in sc.backends if b.kind == "ollama"}
    default, tuned = ollama["ollama-q4km-default"], ollama["ollama-q4km-np64"]
    assert (default.num_parallel, default.num_ctx, default.env) == (None, None, {}), "Ollama as it comes"
    assert tuned.num_parallel == 64 and tuned.num_ctx >= need and tuned.env == {"OLLAMA_FLASH_ATTENTION": "1"}
    assert len(files) == 1, f"one Q4_K_M file for every 4-bit server: {files}"
    assert (sc.workload.input_tokens.value, sc.workload.output_tokens.value) == (1024, 256)
    assert sc.load.concurrency == [1, 8, 32, 64] and sc.workload.temperature == 0


def test_smoke_is_the_embedded_default() -> None:
    sc = load_scenario(REPO / "scenarios" / "smoke.yaml").scenario
    engine, ollama = sorted(sc.backends, key=lambda b: b.kind != "paged")
    argv = launch_argv(engine.launch)
    assert argv[4] == "demo" and argv[argv.index("--dtype") + 1] == "bfloat16"
    assert ollama.model == "smollm2-135m-instruct:q4_1" and ollama.num_parallel is None
    assert sc.workload.api == "chat" and sc.workload.temperature == 0
    assert sc.load.concurrency == [1, 2, 4, 8]
    # Kept small so the whole run fits in a few minutes on 2 cores.
    assert sc.workload.input_tokens.upper <= 128 and sc.workload.output_tokens.upper <= 64
    assert max(sc.load.requests) <= 8


def test_qwen32b_paths_and_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN32B_PATH", "/data/r1-32b")
    monkeypatch.setenv("OLLAMA_URL", "http://10.0.0.5:11434")
    sc = load_scenario(REPO / "scenarios" / "qwen32b.yaml").scenario
    engine = next(b for b in sc.backends if b.kind == "paged")
    ollama = next(b for b in sc.backends if b.kind == "ollama")
    argv = launch_argv(engine.launch)
    assert argv[4] == "/data/r1-32b" and argv[argv.index("--dtype") + 1] == "bfloat16"
    assert sc.workload.tokenizer == "/data/r1-32b"
    assert ollama.url == "http://10.0.0.5:11434" and ollama.model == "deepseek-r1:32b"
    assert sc.load.concurrency[0] == 1 and sc.load.concurrency[-1] == 64
    # Prompt and the whole output budget, think section included, must fit Ollama's context.
    assert sc.workload.input_tokens.upper + sc.workload.output_tokens.upper <= ollama.num_ctx


def test_command_line_overrides_reach_the_scenario() -> None:
    sc = load_scenario(REPO / "scenarios" / "qwen32b.yaml",
                       ["backends.engine.launch=", "backends.engine.url=http://engine:8000"]).scenario
    engine = next(b for b in sc.backends if b.name == "engine")
    assert not engine.launch and engine.url == "http://engine:8000"


def test_prefix_sharing_differs_only_in_prefix_caching() -> None:
    sc = load_scenario(REPO / "scenarios" / "prefix-sharing.yaml").scenario
    assert sc.workload.shared_prefix and sc.workload.shared_prefix.prefix_tokens >= 8 * sc.workload.input_tokens.upper
    with_cache, without = (launch_argv(b.launch) for b in sc.backends if b.kind == "paged")
    assert "--no-prefix-caching" not in with_cache and without == [*with_cache, "--no-prefix-caching"]
