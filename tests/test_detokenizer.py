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
