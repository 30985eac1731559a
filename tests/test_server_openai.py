"""The official `openai` package against `engine serve demo`: greedy output equals the offline LLM.generate."""
import openai
import pytest

from tests.conftest import requires_demo
from tests.server_process import running_server

CONTEXT = 512
pytestmark = [requires_demo, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server_openai")
    with running_server("demo", "--max-model-len", str(CONTEXT), "--kv-cache-tokens", "8192", log_dir=tmp) as srv:
        yield srv


@pytest.fixture(scope="module")
def llm(server):
    from engine import LLM

    return LLM("demo", max_model_len=CONTEXT, kv_cache_tokens=2048)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def offline(llm, prompt: str, max_tokens: int):
    from engine import SamplingParams

    return llm.generate(prompt, SamplingParams(temperature=0, max_tokens=max_tokens))[0]


def test_completions_greedy_equal_llm_generate(client, llm):
    prompt = "The capital of France is"
    expected = offline(llm, prompt, 8)
    full = client.completions.create(model="demo", prompt=prompt, max_tokens=8, temperature=0)
    assert full.choices[0].text == expected.text and full.choices[0].finish_reason == expected.finish_reason
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == \
        (len(expected.prompt_token_ids), expected.num_output_tokens)
    chunks = list(client.completions.create(model="demo", prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == expected.num_output_tokens


def test_chat_greedy_equals_llm_generate(client, llm):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    expected = offline(llm, llm.tokenizer.apply_chat_template(messages), 12)
    full = client.chat.completions.create(model="demo", messages=messages, max_tokens=12, temperature=0)
    assert full.choices[0].message.content == expected.text
    assert full.choices[0].finish_reason == expected.finish_reason
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == \
        (len(expected.prompt_token_ids), expected.num_output_tokens)
    chunks = list(client.chat.completions.create(model="demo", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_token_ids)


def test_stop_string_with_the_real_model(client, llm):
    prompt = "List three colours: red,"
    text = offline(llm, prompt, 8).text
    stop = text.strip()[:2]
    cut = client.completions.create(model="demo", prompt=prompt, max_tokens=8, temperature=0, stop=stop)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(stop)]
