"""Tokenizers for HF directories and GGUF files, behind one small interface, with the chat template they carry."""
import json
import os
from datetime import datetime

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CONTROL, USER_DEFINED = 3, 4


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: list[int], bos_token_id: int | None,
                 add_bos: bool, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._compiled: "jinja2.Template | None" = None
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # The batch entry points let go of the GIL while they work (encode() holds it): the server's engine thread
        # and event loop keep going while a burst of prompts is tokenized. The fast one skips character offsets.
        ids = self._encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: object) -> str:
        special = lambda i: None if i is None else self.token_text(i)
        return self._template().render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=special(self.bos_token_id) or "", eos_token=special((self.eos_token_ids or [None])[0]) or "",
            **kwargs,
        )

    def _template(self) -> "jinja2.Template":
        """Compiled once: compiling takes milliseconds, and the server renders the template for every chat request
        on its event loop."""
        if self._compiled is not None:
            return self._compiled
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat template; use the completions API")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
        self._compiled = env.from_string(self.chat_template)
        return self._compiled


def from_hf_dir(path: str, config_eos: list[int]) -> TextTokenizer:
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    gen = _read_json(os.path.join(path, "generation_config.json"))
    template = cfg.get("chat_template")
    template_file = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(template_file):
        with open(template_file) as f:
            template = f.read()
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    eos = list(config_eos)
    gen_eos = gen.get("eos_token_id")
    for e in [gen_eos] if isinstance(gen_eos, int) else (gen_eos or []):
        if e not in eos:
            eos.append(e)
    eos_tok = _token_str(cfg.get("eos_token"))
    if eos_tok is not None and tok.token_to_id(eos_tok) is not None and tok.token_to_id(eos_tok) not in eos:
        eos.append(tok.token_to_id(eos_tok))
    bos_tok = _token_str(cfg.get("bos_token"))
    bos = tok.token_to_id(bos_tok) if bos_tok else None
    return TextTokenizer(tok, eos, bos, bool(cfg.get("add_bos_token", False)), template)


def from_gguf(gguf: "GGUFFile") -> TextTokenizer:
    field = gguf.field
    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{gguf.path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens: list[str] = field("tokenizer.ggml.tokens")
    types: list[int] = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(field("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    eos = field("tokenizer.ggml.eos_token_id")
    eot = field("tokenizer.ggml.eot_token_id")
    eos_ids = [i for i in (eos, eot) if i is not None]
    return TextTokenizer(tok, list(dict.fromkeys(eos_ids)), field("tokenizer.ggml.bos_token_id"),
                         bool(field("tokenizer.ggml.add_bos_token", False)), field("tokenizer.chat_template"))


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"), byte_level])
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level])
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    return gpt2


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _token_str(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None
