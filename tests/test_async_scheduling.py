"""Asynchronous scheduling (the next step launched before the host reads this step's tokens) changes no output:
the same random traffic through an engine with it and one without gives the same tokens, and frees every block."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.server_process import TINY_LLAMA


def engine(async_scheduling: bool) -> LLMEngine:
    # 160 tokens of KV for up to four requests of up to 60 tokens: preemption happens.
    return LLMEngine("random:custom", device="cpu", hf_config=TINY_LLAMA, kv_cache_tokens=160, block_size=16,
                     max_model_len=80, max_num_batched_tokens=24, async_scheduling=async_scheduling)


@pytest.fixture(scope="module")
def engines() -> tuple[LLMEngine, LLMEngine]:
    return engine(True), engine(False)


request = st.tuples(st.lists(st.integers(3, 4000), min_size=1, max_size=30), st.integers(1, 30), st.booleans())
traffic = st.lists(st.tuples(st.integers(0, 4), request), min_size=1, max_size=6)
aborts = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 5)), max_size=3)


def drive(core: LLMEngine, arrivals: list, abort_at: list) -> dict[str, list[int]]:
    """arrivals: (step, (prompt, max_tokens, stop on EOS)); abort_at: (step, which request). Returns finished outputs."""
    done: dict[str, list[int]] = {}
    names = [f"r{i}-{id(arrivals)}" for i in range(len(arrivals))]
    step = 0
    while step < 200:
        for (at, (prompt, max_tokens, eos)), name in zip(arrivals, names):
            if at == step:
                core.add_request(name, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=not eos))
        for at, which in abort_at:
            if at == step and which < len(names):
                core.abort_request(names[which])
        for out in core.step():
            assert out.request_id not in done, "a request finished twice"
            if out.finished:
                done[out.request_id] = (out.finish_reason, out.token_ids)
        step += 1
        if step > max(a for a, _ in arrivals) and not core.has_unfinished_requests():
            break
    assert not core.has_unfinished_requests()
    assert core.block_manager.num_used_blocks == 0
    return {name.split("-")[0]: v for name, v in done.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(traffic, aborts)
def test_async_and_sync_engines_agree(engines, arrivals, abort_at):
    fast, plain = engines
    got, want = drive(fast, arrivals, []), drive(plain, arrivals, [])
    assert got == want
    for name, (reason, tokens) in got.items():
        _, (prompt, max_tokens, eos) = arrivals[int(name[1:])]
        assert 1 <= len(tokens) <= max_tokens
        assert reason == "stop" or len(tokens) == max_tokens
    # Aborts land at different points of the two pipelines, so only the bookkeeping is compared.
    drive(fast, arrivals, abort_at)
    drive(plain, arrivals, abort_at)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_requests_behind_a_shared_prefix_share_it_with_either_scheduling(async_scheduling):
    """The first request's prefix blocks are named when its step is launched, so requests scheduled before the host
    reads that step (the next step, under async scheduling) take them from the cache instead of recomputing."""
    core = LLMEngine("random:custom", device="cpu", hf_config=TINY_LLAMA, kv_cache_tokens=1024, block_size=16,
                     max_model_len=128, max_num_batched_tokens=256, async_scheduling=async_scheduling)
    shared = list(range(100, 164))
    for i in range(4):
        core.add_request(f"r{i}", shared + [200 + i, 300 + i], SamplingParams(temperature=0.0, max_tokens=3))
    cached = {}
    while core.has_unfinished_requests():
        for out in core.step():
            if out.finished:
                cached[out.request_id] = out.metrics.num_cached_tokens
    assert cached == {"r0": 0, "r1": 64, "r2": 64, "r3": 64}

