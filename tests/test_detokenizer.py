import pytest

from engine.detokenizer import IncrementalDetokenizer
from tests.conftest import requires_demo


@pytest.fixture(scope="module")
def tok():
    from engine.demo import demo_model_path
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    return from_gguf(GGUFFile(demo_model_path()))


def stream(tok, text, stop=()):
    detok = IncrementalDetokenizer(tok, list(stop))
    pieces, hit = [], None
    for t in tok.encode(text, add_special_tokens=False):
        hit = detok.add(t)
        if hit:
            break
        pieces.append(detok.take(False))
    pieces.append(detok.take(True))
    return pieces, detok, hit


@requires_demo
def test_multibyte_characters_are_never_split(tok):
    text = "Café 日本語 🙂 naïve — ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the test needs a character split across tokens"
    pieces, detok, _ = stream(tok, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@requires_demo
def test_stop_string_spanning_tokens_is_cut_and_never_streamed(tok):
    text = "Alpha beta<|gamma|> delta"
    pieces, detok, hit = stream(tok, text, stop=["a<|gam"])
    assert hit == "a<|gam"
    assert detok.text == "Alpha bet"
    assert "".join(pieces) == "Alpha bet"


@requires_demo
def test_earliest_stop_wins(tok):
    _, detok, hit = stream(tok, "one two three four", stop=["four", "two"])
    assert hit == "two"
    assert detok.text == "one "


def test_min_tokens_defers_stop_strings(tmp_path):
    from engine import LLM, SamplingParams
    from tests.tiny_models import make_tiny_checkpoint

    make_tiny_checkpoint("llama", str(tmp_path))
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=512)

    class Chars:
        eos_token_ids: list[int] = []

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(97 + i % 26) for i in ids)

    llm.engine.tokenizer = Chars()
    free = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8))[0]
    stop = free.text[2:4]
    early = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8, stop=[stop]))[0]
    assert early.finish_reason == "stop" and len(early.text) < 8
    held = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8, stop=[stop]))[0]
    assert held.finish_reason == "length" and held.text == free.text
