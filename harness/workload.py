"""Prompts for a scenario: the same seed gives the same prompts, in the same order, for every backend."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import resolve_path
from harness.scenario import Scenario, Workload

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
_WORD_TOKEN = re.compile(r"^Ġ[a-z]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class WorkloadError(Exception):
    pass


@dataclass(slots=True)
class WorkItem:
    index: int
    user: str
    system: str | None
    messages: list[dict[str, str]] | None
    prompt: str
    prompt_tokens: int
    max_tokens: int
    seed: int


class _Text:
    """Cuts prompts of an exact token length out of real sentences (or words of the tokenizer's vocabulary)."""

    def __init__(self, w: Workload, base_dir: Path) -> None:
        self.tokenizer = None
        if w.tokenizer and w.tokenizer != "none":
            from harness.tokenizer import load_tokenizer

            spec = w.tokenizer if w.tokenizer == "demo" else str(resolve_path(w.tokenizer, base_dir))
            self.tokenizer = load_tokenizer(spec)
        self.mode = w.text
        raw = (resolve_path(w.corpus, base_dir) if w.corpus else CORPUS).read_text(encoding="utf-8")
        sentences = [s.strip() for line in raw.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]
        if not sentences:
            raise WorkloadError(f"corpus {w.corpus or CORPUS} has no text")
        self.pieces = [self.encode(" " + s) for s in sentences]
        if self.mode == "vocab":
            if self.tokenizer is None:
                raise WorkloadError("workload.text: vocab needs a tokenizer (workload.tokenizer)")
            vocab = self.tokenizer.get_vocab()
            self.words = sorted(i for t, i in vocab.items() if _WORD_TOKEN.match(t))
            if len(self.words) < 100:
                raise WorkloadError("workload.text: vocab found too few word tokens in this tokenizer; use text: corpus")

    def encode(self, text: str) -> list[Any]:
        if self.tokenizer is None:
            return text.split()
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[Any]) -> str:
        if self.tokenizer is None:
            return " ".join(ids)
        return self.tokenizer.decode(ids).strip()

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def make(self, n: int, rng: random.Random) -> str:
        if n <= 0:
            return ""
        if self.mode == "vocab":
            return self.decode([rng.choice(self.words) for _ in range(n)])
        ids: list[Any] = []
        while len(ids) < n:
            ids.extend(rng.choice(self.pieces))
        return self.decode(ids[:n])


def default_num_prompts(sc: Scenario) -> int:
    load = sc.load
    return load.warmup_requests + max(load.requests) if load.requests else 1000


def _jsonl_items(w: Workload, base_dir: Path) -> list[dict[str, Any]]:
    path = resolve_path(w.jsonl, base_dir)
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not (isinstance(obj.get("prompt"), str) or isinstance(obj.get("messages"), list)):
            raise WorkloadError(f"{path}:{n}: each line needs \"prompt\" (a string) or \"messages\" (a list)")
        if "messages" in obj and w.api == "completion" and "prompt" not in obj:
            raise WorkloadError(f"{path}:{n}: \"messages\" needs api: chat (or give \"prompt\")")
        items.append(obj)
    if not items:
        raise WorkloadError(f"{path}: no prompts")
    return items


def build_workload(sc: Scenario, base_dir: Path, num_prompts: int | None = None) -> list[WorkItem]:
    w = sc.workload
    n = num_prompts or w.num_prompts or default_num_prompts(sc)
    rng = random.Random(f"{w.seed}:prompts")
    out_rng = random.Random(f"{w.seed}:outputs")
    if w.source == "jsonl":
        return _from_jsonl(w, _jsonl_items(w, base_dir), n, out_rng)
    text = _Text(w, base_dir)
    instruction = (w.instruction or "").strip()
    overhead = text.count(instruction + "\n\n") if instruction else 0
    prefixes: list[str] = []
    if w.shared_prefix:
        prefix_rng = random.Random(f"{w.seed}:prefix")
        prefixes = [text.make(w.shared_prefix.prefix_tokens, prefix_rng) for _ in range(w.shared_prefix.groups)]
    items = []
    for i in range(n):
        target = w.input_tokens.sample(rng)
        body = text.make(max(1, target - overhead), rng)
        user = f"{instruction}\n\n{body}" if instruction else body
        system = prefixes[i % len(prefixes)] if prefixes else None
        tokens = overhead + text.count(body) + (w.shared_prefix.prefix_tokens if system else 0)
        items.append(_item(w, i, user, system, None, tokens, w.output_tokens.sample(out_rng)))
    return items


def _from_jsonl(w: Workload, rows: list[dict[str, Any]], n: int, out_rng: random.Random) -> list[WorkItem]:
    items = []
    for i in range(n):
        obj = rows[i % len(rows)]
        drawn = w.output_tokens.sample(out_rng)
        out = int(obj.get("output_tokens") or obj.get("max_tokens") or drawn)
        messages = obj.get("messages")
        user = obj.get("prompt") or "\n\n".join(str(m.get("content", "")) for m in messages)
        est = len(user.split())
        items.append(_item(w, i, user, None, messages if w.api == "chat" else None, est, out))
    return items


def _item(w: Workload, i: int, user: str, system: str | None, messages: list | None, tokens: int, out: int) -> WorkItem:
    if messages is None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    prompt = f"{system}\n\n{user}" if system else user
    return WorkItem(i, user, system, messages, prompt, tokens, out, w.seed + i)


def describe(items: list[WorkItem]) -> dict[str, Any]:
    def span(values: list[int]) -> dict[str, float]:
        return {"min": min(values), "mean": round(sum(values) / len(values), 1), "max": max(values)}

    return {"prompts": len(items), "prompt_tokens": span([i.prompt_tokens for i in items]),
            "output_tokens": span([i.max_tokens for i in items])}


