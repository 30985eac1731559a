import pytest

from engine import LLM, SamplingParams
from tests.tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_tiny_checkpoint("llama", str(path))
    return LLM(str(path), dtype="float32", device="cpu", kv_cache_tokens=1024)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
])
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="prompt must not be empty"):
        llm.generate([[]], SamplingParams(max_tokens=4))


def test_prompt_over_context(llm):
    with pytest.raises(ValueError, match="context"):
        llm.generate([[5] * 600], SamplingParams(max_tokens=4))


def test_max_tokens_past_context(llm):
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate([[5] * 100], SamplingParams(max_tokens=450))


def test_token_id_out_of_vocab(llm):
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[5, 100000]], SamplingParams(max_tokens=4))


def test_request_larger_than_pool_rejected_at_admission(tmp_path):
    make_tiny_checkpoint("llama", str(tmp_path))
    small = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=64)
    with pytest.raises(ValueError, match="KV cache"):
        small.generate([[5] * 60], SamplingParams(max_tokens=10))


def test_bad_request_loses_nothing(llm):
    with pytest.raises(ValueError):
        llm.generate([[5, 6, 7], []], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests()
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4, min_tokens=4))
    assert len(out[0].token_ids) == 4


def test_bad_engine_config(tmp_path):
    with pytest.raises(ValueError, match="block_size"):
        LLM("random:qwen3-0.6b", device="cpu", block_size=12)
    with pytest.raises(FileNotFoundError, match="no such file"):
        LLM(str(tmp_path / "missing"), device="cpu")


def test_cpu_threads_leave_a_core_for_the_server_unless_told():
    from engine.startup import cpu_threads

    assert cpu_threads(None, 1, env={}, cores=2) == 1
    assert cpu_threads(None, 1, env={}, cores=16) == 15
    assert cpu_threads(None, 2, env={}, cores=16) == 7  # two CPU ranks share the cores
    assert cpu_threads(None, 4, env={}, cores=2) == 1
    assert cpu_threads(None, 1, env={"OMP_NUM_THREADS": "3"}, cores=16) == 3
    assert cpu_threads(None, 1, env={"OMP_NUM_THREADS": "lots"}, cores=16) == 15
    assert cpu_threads(5, 1, env={"OMP_NUM_THREADS": "3"}, cores=16) == 5


def test_cpu_threads_are_set_for_the_engine_and_a_bad_count_names_the_field(tmp_path):
    import torch

    from engine.server.api import engine_info

    with pytest.raises(ValueError, match="cpu_threads must be >= 1"):
        LLM(str(tmp_path), device="cpu", cpu_threads=0)
    make_tiny_checkpoint("llama", str(tmp_path))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=256, cpu_threads=1)
        assert torch.get_num_threads() == 1
        assert engine_info(llm.engine, ["tiny"])["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)
