"""Prompts for a scenario: the same seed gives the same prompts, in the same order, for every backend."""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
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
    counted: bool = False  # prompt_tokens counted with the workload's tokenizer (not words), so a server's count compares


class _Text:
    """Cuts prompts of an exact token length out of real sentences (or words of the tokenizer's vocabulary)."""

    def __init__(self, w: Workload, base_dir: Path) -> None:
        self.tokenizer = None
        if w.tokenizer and w.tokenizer != "none":
            from harness.tokenizer import load_tokenizer

            spec = w.tokenizer if w.tokenizer == "demo" else str(resolve_path(w.tokenizer, base_dir))
            self.tokenizer = load_tokenizer(spec)
        self.mode = w.text
        self.tag_words: list[Any] | None = None
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

    def tag(self, rng: random.Random, n: int) -> str:
        """n words that are n tokens, so a tag costs every prompt the same share of its length."""
        if self.tokenizer is None:
            if self.tag_words is None:
                self.tag_words = sorted({w for p in self.pieces for w in p if w.isalpha() and len(w) >= 3})
            return " ".join(rng.choice(self.tag_words) for _ in range(n))
        if self.tag_words is None:
            vocab = self.tokenizer.get_vocab()
            self.tag_words = sorted(i for t, i in vocab.items() if _WORD_TOKEN.match(t))
        for _ in range(100):  # a word is one token after a space, not always at the start: draw again
            text = self.decode([rng.choice(self.tag_words) for _ in range(n)])
            if self.count(text) == n:
                return text
        raise WorkloadError("workload.tokenizer: found no prompt tag of single-token words in this tokenizer")

    def make(self, n: int, rng: random.Random) -> str:
        if n <= 0:
            return ""
        if self.mode == "vocab":
            return self.decode([rng.choice(self.words) for _ in range(n)])
        ids: list[Any] = []
        while len(ids) < n:
            ids.extend(rng.choice(self.pieces))
        return self.decode(ids[:n])


TAG_WORDS = 4  # words of a request's tag: 20k+ single-token words each, so two tags agree on their first word rarely
UNSIZED = 1_000_000  # prompt range of a level stopped by time alone, whose request count is unknown beforehand


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


def level_totals(sc: Scenario) -> list[int | None]:
    """Requests each level sends, warm-ups included; None where only `duration_s` stops it."""
    return [None if (n := sc.requests_at(i)) is None else sc.load.warmup_requests + n for i in range(len(sc.levels()))]


class Prompts(Sequence[WorkItem]):
    """Prompt i of a run, the same on every backend of the run.

    Unless the scenario asks for shared prompts, every request of a run (warm-ups and every level) gets a prompt
    index of its own, and every prompt starts with a tag of TAG_WORDS words drawn from the run's nonce and that
    index. Prefix caches (the engine's block hashes, llama.cpp's slots, Ollama's) match from a prompt's first
    token, so no request can then find more than the chat template's fixed part in a cache: not another request
    of this run, nor one of an earlier run against a server that stayed up. Prompts are built on first use and
    kept; `len()` counts those built up front (every prompt a run with request counts will send).
    """

    def __init__(self, sc: Scenario, base_dir: Path, nonce: str | None = None, num_prompts: int | None = None) -> None:
        w = sc.workload
        self.w = w
        self.rows = _jsonl_items(w, base_dir) if w.source == "jsonl" else []
        totals = level_totals(sc)
        known = None if None in totals else sum(totals)
        self.sharing = self._sharing(sc, known)
        # Prompts sent in turn (reused) when sharing is asked for through repetition; a shared system prompt alone
        # still gets a prompt of its own per request, the system prompt being what is shared.
        self.cycle: int | None = None
        if w.reuse_prompts or w.num_prompts or num_prompts:
            self.cycle = num_prompts or w.num_prompts or default_num_prompts(sc)
        elif self.rows and self.sharing:
            self.cycle = len(self.rows)
        self.nonce = None if self.cycle else nonce
        self.text = _Text(w, base_dir)
        self.prefixes: list[str] = []
        if w.shared_prefix and w.source == "synthetic":
            prefix_rng = random.Random(f"{w.seed}:prefix")
            self.prefixes = [self.text.make(w.shared_prefix.prefix_tokens, prefix_rng) for _ in range(w.shared_prefix.groups)]
        self.firsts: list[int] = []
        self.counts: list[int] = []
        first = 0
        for total in totals:
            count = self.cycle or total or UNSIZED
            self.firsts.append(0 if self.cycle else first)
            self.counts.append(count)
            first += 0 if self.cycle else count
        self.size = self.cycle or known or (sum(t for t in totals if t) or 1)
        self.made: dict[int, WorkItem] = {}
        for i in range(self.size):
            self[i]

    def _sharing(self, sc: Scenario, needed: int | None) -> str | None:
        w = sc.workload
        if w.reuse_prompts:
            return "reuse_prompts: true"
        if w.num_prompts:
            return f"num_prompts: {w.num_prompts} (prompts sent in turn)"
        if w.shared_prefix:
            return f"shared_prefix: {w.shared_prefix.groups} system prompt(s) of {w.shared_prefix.prefix_tokens} tokens"
        if self.rows and (needed is None or needed > len(self.rows)):
            want = f"{needed} requests" if needed is not None else "levels stopped by time"
            return f"{w.jsonl} ({len(self.rows)} prompts) repeats for {want}"
        return None

    def info(self) -> dict[str, Any]:
        """What run.json says about the prompts, for the report."""
        return {"tagged": self.nonce is not None, "tag_nonce": self.nonce, "tag_words": TAG_WORDS if self.nonce else 0,
                "distinct": self.cycle is None, "sharing": self.sharing, "level_first_prompt": self.firsts}

    def level(self, i: int) -> LevelPrompts:
        return LevelPrompts(self, self.firsts[i], self.counts[i])

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[WorkItem]:
        return (self[i] for i in range(self.size))

    def __getitem__(self, i: int) -> WorkItem:  # type: ignore[override]
        if i < 0:
            raise IndexError(i)
        if self.cycle:
            i %= self.cycle
        item = self.made.get(i)
        if item is None:
            item = self.made[i] = self._jsonl(i) if self.rows else self._synthetic(i)
        return item

    def tag(self, i: int) -> str:
        return self.text.tag(random.Random(f"{self.nonce}:{i}"), TAG_WORDS) if self.nonce else ""

    def _synthetic(self, i: int) -> WorkItem:
        w, text = self.w, self.text
        rng = random.Random(f"{w.seed}:prompt:{i}")
        target = w.input_tokens.sample(rng)
        instruction = (w.instruction or "").strip()
        head = "\n\n".join(x for x in (self.tag(i), instruction) if x)
        body = text.make(max(1, target - (text.count(head + "\n\n") if head else 0)), rng)
        user = f"{head}\n\n{body}" if head else body
        system = self.prefixes[i % len(self.prefixes)] if self.prefixes else None
        tokens = text.count(user) + (text.count(system) if system else 0)
        out = w.output_tokens.sample(random.Random(f"{w.seed}:output:{i}"))
        return _item(w, i, user, system, None, tokens, out, text.tokenizer is not None)

    def _jsonl(self, i: int) -> WorkItem:
        w = self.w
        obj = self.rows[i % len(self.rows)]
        drawn = w.output_tokens.sample(random.Random(f"{w.seed}:output:{i}"))
        out = int(obj.get("output_tokens") or obj.get("max_tokens") or drawn)
        tag = self.tag(i)
        messages = [dict(m) for m in obj["messages"]] if isinstance(obj.get("messages"), list) else None
        prompt = obj.get("prompt")
        if tag and prompt is not None:
            prompt = f"{tag}\n\n{prompt}"
        if tag and messages:
            # The tag goes into the first user message: a system prompt before it stays shareable, as in the file.
            first_user = next((m for m in messages if m.get("role") == "user"), messages[0])
            first_user["content"] = f"{tag}\n\n{first_user.get('content', '')}"
        user = prompt or "\n\n".join(str(m.get("content", "")) for m in messages)
        counted = self.text.tokenizer is not None
        tokens = self.text.count(user) if counted else len(user.split())
        return _item(w, i, user, None, messages if w.api == "chat" else None, tokens, out, counted)


class LevelPrompts(Sequence[WorkItem]):
    """One level's range of a run's prompts; the load generator takes request k of the level as `[k % len]`."""

    __slots__ = ("prompts", "first", "count")

    def __init__(self, prompts: Prompts, first: int, count: int) -> None:
        self.prompts, self.first, self.count = prompts, first, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> WorkItem:  # type: ignore[override]
        return self.prompts[self.first + k]


def build_workload(sc: Scenario, base_dir: Path, num_prompts: int | None = None, nonce: str | None = None) -> Prompts:
    return Prompts(sc, base_dir, nonce, num_prompts)


def _item(w: Workload, i: int, user: str, system: str | None, messages: list | None, tokens: int, out: int,
          counted: bool = False) -> WorkItem:
    if messages is None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    prompt = f"{system}\n\n{user}" if system else user
    return WorkItem(i, user, system, messages, prompt, tokens, out, w.seed + i, counted)


def describe(items: list[WorkItem]) -> dict[str, Any]:
    def span(values: list[int]) -> dict[str, float]:
        return {"min": min(values), "mean": round(sum(values) / len(values), 1), "max": max(values)}

    return {"prompts": len(items), "prompt_tokens": span([i.prompt_tokens for i in items]),
            "output_tokens": span([i.max_tokens for i in items])}


