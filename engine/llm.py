"""The offline API: LLM(...).generate(prompts, SamplingParams(...))."""
from collections.abc import Sequence as Seq

from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, dtype: str = "auto", device: str = "auto", **kwargs: object) -> None:
        self.engine = LLMEngine(model, dtype, device, **kwargs)

    @classmethod
    def from_config(cls, config: dict | str, dtype: str = "auto", device: str = "auto", **kwargs: object) -> "LLM":
        """Random weights with a real shape: a Hugging Face config dict, or a bundled config's name."""
        if isinstance(config, str):
            return cls(f"random:{config}", dtype, device, **kwargs)
        return cls("random:custom", dtype, device, hf_config=config, **kwargs)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str | list[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        params_list = list(params) if isinstance(params, Seq) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        token_ids = [self.engine.tokenize(p) for p in prompts]
        for ids, sp in zip(token_ids, params_list):
            self.engine.validate(ids, sp)
        ids = [self.engine.add_request(None, t, sp) for t, sp in zip(token_ids, params_list)]
        done: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[i] for i in ids]
