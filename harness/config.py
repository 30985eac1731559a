"""Reading a scenario file: YAML, ${VAR:-default} expansion, --set overrides, one-screen errors."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.scenario import Scenario

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
_KINDS = {"paged", "ollama", "openai"}
_MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")


class ScenarioError(Exception):
    """A problem with a scenario file, worded for the person who wrote it."""


@dataclass(slots=True)
class LoadedScenario:
    scenario: Scenario
    path: Path
    raw_bytes: bytes

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _expand(value: Any, where: str, errors: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}.{i}", errors) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ and (os.environ[name] or default is None):
            return os.environ[name]
        if default is not None:
            return default
        errors.append(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
        return m.group(0)

    return _VAR.sub(sub, value)


def _apply_set(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ScenarioError(f"--set {assignment!r}: expected KEY=VALUE, e.g. backends.0.url=http://127.0.0.1:8000")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw  # not YAML (a launch command starting with "{python}", say): the text as given
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = int(part) if part.isdigit() else next(
                (j for j, b in enumerate(node) if isinstance(b, dict) and b.get("name") == part), None)
            if idx is None or idx >= len(node):
                raise ScenarioError(f"--set {key}: no list item {part!r} under {'.'.join(parts[:i]) or 'top level'}")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping or list")


def _loc(loc: tuple, data: Any) -> str:
    out: list[str] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in _KINDS and i and isinstance(loc[i - 1], int):
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        out.append(str(part))
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            if isinstance(node, dict) and "name" in node and i == 1 and loc[0] == "backends":
                out[-1] += f" ({node['name']})"
        elif isinstance(node, dict):
            node = node.get(part)
    return ".".join(out) or "(top level)"


def format_validation(path: Path, err: ValidationError, data: Any) -> str:
    lines = [f"{path}: {err.error_count()} problem{'s' if err.error_count() > 1 else ''}"]
    for e in err.errors()[:15]:
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `bench schema` lists the fields)"
        loc = _loc(tuple(e["loc"]), data)
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, msg = f"{loc}.kind", "must be one of paged, ollama, openai"
        got = e.get("input")
        if e["type"] == "union_tag_invalid":
            got = e["ctx"]["tag"]
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    if err.error_count() > 15:
        lines.append(f"  ... and {err.error_count() - 15} more")
    return "\n".join(lines)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> LoadedScenario:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the scenario file ({e.strerror})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping with name, backends, workload and load at the top level")
    errors: list[str] = []
    data = _expand(data, "", errors)
    if errors:
        raise ScenarioError(f"{path}: " + "\n  ".join(["unset environment variables", *errors]))
    for assignment in overrides or []:
        _apply_set(data, assignment)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(format_validation(path, e, data)) from None
    return LoadedScenario(scenario, path, raw)


def resolve_path(value: str, base_dir: Path) -> Path:
    p = Path(os.path.expanduser(value))
    if p.is_absolute() or p.exists():
        return p
    return base_dir / p if (base_dir / p).exists() else p


def launch_argv(launch: str | list[str]) -> list[str]:
    """The command as a list; `{python}` is the interpreter running bench, so venv-only tools work without activation."""
    argv = list(launch) if isinstance(launch, list) else shlex.split(launch)
    return [a.replace("{python}", sys.executable) for a in argv]


def _served_model(argv: list[str]) -> str | None:
    if "serve" not in argv:
        return None
    rest = argv[argv.index("serve") + 1:]
    return next((a for a in rest if not a.startswith("-")), None)


def preflight(loaded: LoadedScenario, only: list[str] | None = None) -> list[str]:
    """Problems that would make a backend fail before it starts: missing binaries, weights, prompt files."""
    problems: list[str] = []
    sc, base = loaded.scenario, loaded.base_dir
    for i, b in enumerate(sc.backends):
        if only and b.name not in only:
            continue
        where = f"backends.{i} ({b.name})"
        argv = launch_argv(b.launch) if b.launch else []
        if argv and shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            problems.append(f"{where}.launch: command not found: {argv[0]}")
        if b.kind == "paged":
            model = b.model_path or _served_model(argv)
            if model and model.startswith("random:"):
                model = model.split(":", 1)[1] if model.endswith(".json") else None
            looks_like_path = model and (os.sep in model or model.endswith(_MODEL_SUFFIXES) or model.startswith(("~", ".")))
            if looks_like_path and not resolve_path(model, base).exists():
                field = "model_path" if b.model_path else "launch"
                problems.append(f"{where}.{field}: model path does not exist: {model}")
    w = sc.workload
    for field in ("jsonl", "corpus"):
        value = getattr(w, field)
        if value and not resolve_path(value, base).exists():
            problems.append(f"workload.{field}: file does not exist: {value}")
    if w.tokenizer and w.tokenizer not in ("demo", "none") and not resolve_path(w.tokenizer, base).exists():
        problems.append(f"workload.tokenizer: file does not exist: {w.tokenizer} (use `demo`, a path, or null)")
    if only:
        unknown = sorted(set(only) - {b.name for b in sc.backends})
        if unknown:
            problems.append(f"--only: no backend named {', '.join(unknown)} (have: {', '.join(b.name for b in sc.backends)})")
    return problems
