"""docker-compose.yml against the Compose Specification's JSON schema, and the invariants this project relies on.

No Docker engine runs here. The schema is the compose-spec one that check-jsonschema vendors
(check_jsonschema/builtin_schemas/vendor/compose-spec.json, Apache-2.0, licence file beside it).
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU_SERVICES = ("engine", "ollama")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    return json.loads((vendor / "compose-spec.json").read_text())


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR:-default} substitution, so the schema sees what `docker compose config` would."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", node)
    return node


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(doc: dict) -> list[str]:
    validator = Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)]


def invariant_errors(doc: dict) -> list[str]:
    """What this project needs beyond a valid file: private ports, GPUs, healthchecks, the pinned Ollama."""
    problems: list[str] = []
    services = doc.get("services", {})
    for name, svc in services.items():
        for port in svc.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published', '')}"
            if not text.startswith("127.0.0.1:"):
                problems.append(f"{name}: port {text} is not bound to 127.0.0.1")
    for name in GPU_SERVICES:
        svc = services.get(name)
        if svc is None:
            problems.append(f"{name}: service missing")
            continue
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if not any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices):
            problems.append(f"{name}: no NVIDIA GPU reserved under deploy.resources.reservations.devices")
        if not svc.get("healthcheck", {}).get("test"):
            problems.append(f"{name}: no healthcheck")
    version = (ROOT / "scripts" / "ollama.version").read_text().strip()
    image = services.get("ollama", {}).get("image", "")
    if image != f"ollama/ollama:{version}":
        problems.append(f"ollama: image {image!r} is not the pinned ollama/ollama:{version}")
    return problems


def test_compose_file_matches_the_compose_specification() -> None:
    doc = load()
    assert schema_errors(doc) == []
    assert schema_errors(interpolate(doc, {})) == []
    assert schema_errors(interpolate(doc, {"GPU_COUNT": "all", "ENGINE_PORT": "9000"})) == []


def test_schema_check_can_fail() -> None:
    doc = load()
    doc["services"]["engine"]["healthcheck"]["intervall"] = "5s"
    doc["services"]["ollama"]["ports"] = {"11434": "11434"}
    errors = schema_errors(doc)
    assert any("intervall" in e for e in errors) and any(e.startswith("services/ollama/ports") for e in errors)


def test_project_invariants_hold() -> None:
    assert invariant_errors(interpolate(load(), {})) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: d["services"]["engine"]["ports"].append("8001:8001"), "engine: port 8001:8001 is not bound to 127.0.0.1"),
    (lambda d: d["services"]["ollama"].pop("deploy"), "ollama: no NVIDIA GPU reserved"),
    (lambda d: d["services"]["engine"].pop("healthcheck"), "engine: no healthcheck"),
    (lambda d: d["services"]["ollama"].update(image="ollama/ollama:latest"), "is not the pinned ollama/ollama:"),
])
def test_invariant_check_catches(breakage, expected: str) -> None:
    doc = copy.deepcopy(interpolate(load(), {}))
    breakage(doc)
    assert any(expected in p for p in invariant_errors(doc))


def test_engine_service_serves_the_mounted_model_read_only_with_health() -> None:
    engine = interpolate(load(), {})["services"]["engine"]
    mount = next(v for v in engine["volumes"] if v["target"] == "/models/model")
    assert mount["read_only"] is True
    assert engine["command"][:2] == ["serve", mount["target"]]
    assert engine["command"][engine["command"].index("--host") + 1] == "0.0.0.0"
    port = engine["command"][engine["command"].index("--port") + 1]
    assert engine["ports"] == [f"127.0.0.1:8000:{port}"]
    assert f"127.0.0.1:{port}/health" in " ".join(engine["healthcheck"]["test"])
    dockerfile = (ROOT / engine["build"]["context"] / engine["build"]["dockerfile"]).read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-(runtime|devel)$", dockerfile, re.M)


def test_ollama_service_sets_the_serving_knobs() -> None:
    ollama = interpolate(load(), {})["services"]["ollama"]
    env = ollama["environment"]
    assert {"OLLAMA_NUM_PARALLEL", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_KEEP_ALIVE"} <= set(env)
    assert env["OLLAMA_NUM_PARALLEL"] == "1", "the default is Ollama's own: one request at a time"
    assert ollama["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert any(str(v).endswith(":/root/.ollama") for v in ollama["volumes"])


def test_bench_command_is_a_valid_run_of_an_existing_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.config import load_scenario

    doc = interpolate(load(), {})
    bench = doc["services"]["bench"]
    assert "./reports:/opt/pagebench/reports" in bench["volumes"]
    assert set(bench["depends_on"]) == set(GPU_SERVICES)
    assert all(dep["condition"] == "service_healthy" for dep in bench["depends_on"].values())
    argv = bench["command"]
    assert argv[0] == "run"
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    for key, value in bench.get("environment", {}).items():
        monkeypatch.setenv(key, value)
    loaded = load_scenario(ROOT / argv[1], overrides)
    engine_mount = next(v for v in doc["services"]["engine"]["volumes"] if v["target"] == "/models/model")
    assert engine_mount in bench["volumes"], "bench reads the tokenizer from the folder the engine serves"
    assert loaded.scenario.workload.tokenizer == engine_mount["target"]
    served = doc["services"]["engine"]["command"]
    engine_model = next(b.model for b in loaded.scenario.backends if b.kind == "paged")
    assert served[served.index("--served-model-name") + 1] == engine_model
    urls = {b.name: b.url for b in loaded.scenario.backends}
    assert urls == {"engine": "http://engine:8000", "ollama": "http://ollama:11434"}
    ollama_backend = next(b for b in loaded.scenario.backends if b.kind == "ollama")
    assert ollama_backend.num_parallel == int(doc["services"]["ollama"]["environment"]["OLLAMA_NUM_PARALLEL"])
    assert not any(b.launch for b in loaded.scenario.backends), "inside compose both servers already run"
    build = bench["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_dockerfiles_copy_only_what_exists() -> None:
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in shlex.split(line)[1:-1]:
                    assert (ROOT / src).exists() or src == "README.md", f"{dockerfile.name}: COPY {src}: not in the repo"
