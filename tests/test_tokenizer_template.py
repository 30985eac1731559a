"""The chat template is compiled once per tokenizer and renders the same text every time."""
import pytest
from jinja2 import TemplateError

from engine.tokenizer import TextTokenizer
from tests.conftest import requires_demo


@requires_demo
def test_template_compiled_once_renders_alike():
    from engine.demo import demo_model_path
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    tok = from_gguf(GGUFFile(demo_model_path()))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \"there\" — ünïcode"}]
    first = tok.apply_chat_template(messages)
    assert "Hi \"there\" — ünïcode" in first and first.endswith("<|im_start|>assistant\n")
    compiled = tok._template()
    assert tok.apply_chat_template(messages) == first
    assert tok._template() is compiled
    assert tok.apply_chat_template(messages, add_generation_prompt=False) != first


def test_a_broken_template_fails_every_time_with_its_error():
    from tokenizers import Tokenizer, models

    tok = TextTokenizer(Tokenizer(models.BPE()), [], None, False, "{% if %}")
    for _ in range(2):
        with pytest.raises(TemplateError):
            tok.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="no chat template"):
        TextTokenizer(Tokenizer(models.BPE()), [], None, False, None).apply_chat_template([])


@requires_demo
def test_encode_through_the_gil_free_batch_path_gives_the_plain_encode_ids():
    from engine.demo import demo_model_path
    from engine.gguf_loader import GGUFFile
    from engine.tokenizer import from_gguf

    tok = from_gguf(GGUFFile(demo_model_path()))
    texts = ["", " ", "Hello, world!", "  leading and trailing  ", "ünïcode — 日本語 😀\n\ttabs\r\n",
             "<|im_start|>user\nhi<|im_end|>\n", "a" * 3000, "12345 678.9e-3 $%^&*"]
    for text in texts:
        plain = tok.tokenizer.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False) == plain
        assert tok.encode(text) == ([tok.bos_token_id] if tok.add_bos and tok.bos_token_id is not None
                                    and plain[:1] != [tok.bos_token_id] else []) + plain
