"""Scenario files: schema, one-screen errors naming file/field/why, ${VAR} expansion, --set, preflight, `bench validate`."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import ScenarioError, load_scenario, preflight

REPO = Path(__file__).resolve().parents[1]

GOOD = """
name: demo-run
backends:
  - name: engine
    kind: paged
    model: demo
    launch: engine serve demo --port {port}
  - name: ollama
    kind: ollama
    model: smollm2:135m
    url: ${TEST_OLLAMA_URL:-http://127.0.0.1:11434}
    num_ctx: 2048
    num_parallel: 4
workload:
  input_tokens: {dist: normal, mean: 100, std: 20, min: 10, max: 200}
  output_tokens: 32
load:
  concurrency: [1, 2, 4]
  requests: 10
slo: {ttft_s: 1.0}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ScenarioError) as e:
        load_scenario(path, overrides)
    return str(e.value)


def test_good_scenario_levels_and_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_OLLAMA_URL", raising=False)
    sc = load_scenario(write(tmp_path, GOOD)).scenario
    assert [b.kind for b in sc.backends] == ["paged", "ollama"]
    assert sc.backends[1].url == "http://127.0.0.1:11434"
    assert sc.levels() == [("c=1", 1, None), ("c=2", 2, None), ("c=4", 4, None)]
    assert sc.workload.output_tokens.value == 32 and sc.workload.input_tokens.dist == "normal"


def test_env_expansion_and_set_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_OLLAMA_URL", "http://10.0.0.5:11500")
    path = write(tmp_path, GOOD)
    loaded = load_scenario(path, ["backends.engine.url=http://127.0.0.1:9000", "load.concurrency=[8]", "backends.1.pull=true"])
    sc = loaded.scenario
    assert sc.backends[1].url == "http://10.0.0.5:11500" and sc.backends[1].pull is True
    assert sc.backends[0].url == "http://127.0.0.1:9000"
    assert sc.levels() == [("c=8", 8, None)]
    assert loaded.raw_bytes == path.read_bytes()


def test_set_value_that_is_not_yaml_is_taken_as_text(tmp_path):
    loaded = load_scenario(write(tmp_path, GOOD), ["backends.engine.launch={python} -m engine.cli serve demo --port {port}"])
    assert loaded.scenario.backends[0].launch == "{python} -m engine.cli serve demo --port {port}"


def test_unset_variable_without_default_names_field(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_PB", raising=False)
    text = GOOD.replace("${TEST_OLLAMA_URL:-http://127.0.0.1:11434}", "${NO_SUCH_VAR_PB}")
    msg = error_of(write(tmp_path, text))
    assert "backends.1.url" in msg and "NO_SUCH_VAR_PB" in msg


def test_errors_name_file_field_and_reason(tmp_path):
    path = write(tmp_path, """
        name: bad
        backends:
          - name: engine
            kind: paged
            model: demo
            launch: engine serve demo --port {port}
            urll: http://x
          - name: other
            kind: vllm
            model: m
            url: http://x
          - name: nowhere
            kind: openai
            model: m
        workload:
          input_tokens: {dist: uniform, min: 10}
        load:
          concurrency: [1, 0]
          requests: 5
        """)
    msg = error_of(path)
    lines = msg.splitlines()
    assert lines[0] == f"{path}: 5 problems"
    assert "backends.0 (engine).urll: unknown field" in msg
    assert "backends.1 (other).kind: must be one of paged, ollama, openai (got 'vllm')" in msg
    assert "backends.2 (nowhere): give `url`" in msg
    assert "workload.input_tokens: dist uniform needs max" in msg
    assert "load.concurrency.1: Input should be greater than 0 (got 0)" in msg
    assert len(lines) < 25


@pytest.mark.parametrize("load, needle", [
    ("mode: open\n  requests: 5", "mode: open needs `rate`"),
    ("concurrency: 2", "give `requests` or `duration_s`"),
    ("rate: 2\n  requests: 5", "`rate` is for mode: open"),
    ("wait_time_s: [2, 1]\n  requests: 5", "wait_time_s is a number or [min, max]"),
    ("concurrency: [1, 8, 64]\n  requests: [4, 16]", "requests has 2 counts for 3 levels"),
])
def test_load_rules(tmp_path, load, needle):
    text = f"name: x\nbackends: [{{name: a, kind: openai, model: m, url: 'http://h'}}]\nload:\n  {load}\n"
    assert needle in error_of(write(tmp_path, text))


def test_requests_per_level(tmp_path):
    from harness.loadgen import plans

    text = "name: x\nbackends: [{name: a, kind: openai, model: m, url: 'http://h'}]\n"
    sc = load_scenario(write(tmp_path, text + "load: {concurrency: [1, 8, 64], requests: [4, 16, 64], warmup_requests: 1}\n")).scenario
    assert [(p.label, p.requests, p.total) for p in plans(sc)] == [("c=1", 4, 5), ("c=8", 16, 17), ("c=64", 64, 65)]
    sc = load_scenario(write(tmp_path, text + "load: {concurrency: [1, 8], requests: 5}\n")).scenario
    assert [p.requests for p in plans(sc)] == [5, 5]


def test_launch_needs_port_placeholder_or_url(tmp_path):
    text = "name: x\nbackends: [{name: a, kind: paged, model: m, launch: engine serve demo}]\nload: {requests: 1}\n"
    assert "launch needs {port}" in error_of(write(tmp_path, text))


def test_yaml_syntax_error_gives_line(tmp_path):
    msg = error_of(write(tmp_path, "name: x\nbackends: [\n  - a: b\n"))
    assert f"{tmp_path / 's.yaml'}:" in msg and "not valid YAML" in msg


def test_missing_file_is_clear(tmp_path):
    assert "cannot read the scenario file" in error_of(tmp_path / "nope.yaml")


def test_set_rejects_unknown_list_item(tmp_path):
    assert "no list item 'ghost'" in error_of(write(tmp_path, GOOD), ["backends.ghost.url=http://x"])


def test_preflight_reports_missing_model_path_and_binary(tmp_path):
    text = GOOD.replace("engine serve demo --port {port}", "engine serve /no/such/model-dir --port {port}")
    text = text.replace("url: ${TEST_OLLAMA_URL:-http://127.0.0.1:11434}", "launch: no-such-ollama-binary serve")
    problems = preflight(load_scenario(write(tmp_path, text)))
    assert any("backends.0 (engine).launch: model path does not exist: /no/such/model-dir" in p for p in problems)
    assert any("command not found: no-such-ollama-binary" in p for p in problems)


def test_preflight_accepts_demo_and_checks_only(tmp_path):
    loaded = load_scenario(write(tmp_path, GOOD))
    assert not any("model path" in p for p in preflight(loaded, ["engine"]))
    assert any("--only: no backend named ghost" in p for p in preflight(loaded, ["ghost"]))


def test_cli_validate(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(REPO / "scenarios/examples/fake.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output and "fake-openai=paged" in ok.output
    bad = runner.invoke(app, ["validate", str(write(tmp_path, "name: x\nbackends: []\nload: {requests: 1}\n"))])
    assert bad.exit_code == 2
    assert "backends: List should have at least 1 item" in bad.output
    missing = write(tmp_path, GOOD.replace("serve demo", "serve ./weights/none.gguf"), "m.yaml")
    assert runner.invoke(app, ["validate", str(missing)]).exit_code == 0
    strict = runner.invoke(app, ["validate", "--strict", str(missing)])
    assert strict.exit_code == 1 and "model path does not exist" in strict.output


def test_schema_lists_every_field():
    out = CliRunner().invoke(app, ["schema"]).output
    for word in ("num_parallel", "supports_ignore_eos", "shared_prefix", "spawn_rate", "warmup_requests", "ttft_s", "model_path"):
        assert word in out


def test_cli_help_explains_commands():
    out = CliRunner().invoke(app, ["run", "--help"]).output
    for word in ("--out", "--only", "--dry-run", "--set", "Exit code"):
        assert word in out
