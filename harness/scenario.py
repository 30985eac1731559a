"""The scenario file's schema: backends, workload, load and SLO limits."""
from __future__ import annotations

import random
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _as_list(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) or value is None else [value]


def _as_dist(value: Any) -> Any:
    return {"dist": "fixed", "value": value} if isinstance(value, int) and not isinstance(value, bool) else value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dist(Strict):
    """A token-length distribution; a bare integer means `fixed`."""

    dist: Literal["fixed", "uniform", "normal"] = "fixed"
    value: PositiveInt | None = Field(None, description="fixed: the length")
    min: PositiveInt | None = Field(None, description="uniform/normal: smallest length")
    max: PositiveInt | None = Field(None, description="uniform/normal: largest length")
    mean: PositiveFloat | None = Field(None, description="normal: mean length")
    std: float | None = Field(None, ge=0, description="normal: standard deviation")

    @model_validator(mode="after")
    def _complete(self) -> Dist:
        need = {"fixed": ("value",), "uniform": ("min", "max"), "normal": ("mean", "std")}[self.dist]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"dist {self.dist} needs {' and '.join(missing)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            return int(self.value)
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        n = round(rng.gauss(self.mean, self.std))
        return max(self.min or 1, min(self.max or n, n))

    @property
    def upper(self) -> int:
        return int(self.value or self.max or round(self.mean + 4 * (self.std or 0)))


DistField = Annotated[Dist, BeforeValidator(_as_dist)]


class SharedPrefix(Strict):
    groups: PositiveInt = Field(description="number of distinct system prompts; request i uses group i % groups")
    prefix_tokens: PositiveInt = Field(description="length of each group's shared system prompt")


class Workload(Strict):
    api: Literal["chat", "completion"] = "chat"
    source: Literal["synthetic", "jsonl"] = "synthetic"
    jsonl: str | None = Field(None, description="prompt file, one JSON object per line: prompt|messages[, output_tokens]")
    tokenizer: str | None = Field("demo", description="demo | path to tokenizer.json, a model folder or a .gguf | null (words)")
    text: Literal["corpus", "vocab"] = Field("corpus", description="corpus: bundled prose; vocab: words drawn from the tokenizer")
    corpus: str | None = Field(None, description="your own text file to cut prompts from")
    instruction: str | None = "Continue the following text in the same style, at length."
    input_tokens: DistField = Field(default_factory=lambda: Dist(value=128))
    output_tokens: DistField = Field(default_factory=lambda: Dist(value=64))
    shared_prefix: SharedPrefix | None = None
    num_prompts: PositiveInt | None = Field(None, description="distinct prompts, sent in turn at every level and in every "
                                            "run (sharing on purpose); default: a prompt of its own for every request")
    reuse_prompts: bool = Field(False, description="send the same prompts at every level and in every run, so a "
                                                   "server's prompt cache hits on purpose; default: every request of a "
                                                   "run gets its own prompt, tagged with the run")
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _source(self) -> Workload:
        if self.source == "jsonl" and not self.jsonl:
            raise ValueError("source: jsonl needs a `jsonl` path")
        if self.jsonl and self.source != "jsonl":
            raise ValueError("`jsonl` is set but source is synthetic; write source: jsonl")
        return self


class Load(Strict):
    mode: Literal["closed", "open"] = "closed"
    concurrency: Annotated[list[PositiveInt], BeforeValidator(_as_list)] = Field(
        default_factory=lambda: [1], description="closed loop: users per level; a list is a sweep")
    spawn_rate: PositiveFloat | None = Field(None, description="closed loop: users started per second (default all at once)")
    wait_time_s: Annotated[list[Annotated[float, Field(ge=0)]], BeforeValidator(_as_list)] = Field(
        default_factory=lambda: [0.0], description="closed loop: pause between a user's requests, s or [min, max]")
    rate: Annotated[list[PositiveFloat] | None, BeforeValidator(_as_list)] = Field(
        None, description="open loop: requests per second per level; a list is a sweep")
    arrival: Literal["poisson", "constant"] = "poisson"
    max_concurrency: PositiveInt | None = Field(None, description="open loop: cap on requests in flight")
    requests: Annotated[list[PositiveInt] | None, BeforeValidator(_as_list)] = Field(
        None, description="measured requests per level; a list gives each level its own count")
    duration_s: PositiveFloat | None = Field(None, description="stop sending after this long per level")
    warmup_requests: int = Field(0, ge=0, description="requests sent (and finished) before each level is measured, not counted")
    request_timeout_s: PositiveFloat = 600.0
    sample_interval_s: PositiveFloat = 0.5
    cooldown_s: float = Field(0.0, ge=0, description="pause between levels")
    abort_after_errors: PositiveInt = Field(25, description="stop a backend after this many connection failures in a row")

    @model_validator(mode="after")
    def _levels(self) -> Load:
        if self.requests is None and self.duration_s is None:
            raise ValueError("give `requests` or `duration_s` (or both) so each level stops")
        if len(self.wait_time_s) not in (1, 2) or self.wait_time_s[0] > self.wait_time_s[-1]:
            raise ValueError("wait_time_s is a number or [min, max] with min <= max")
        levels = len(self.rate or []) if self.mode == "open" else len(self.concurrency)
        if self.requests and len(self.requests) not in (1, levels):
            raise ValueError(f"requests has {len(self.requests)} counts for {levels} levels; give one count or one per level")
        if self.mode == "open" and not self.rate:
            raise ValueError("mode: open needs `rate` (requests per second, or a list for a sweep)")
        if self.mode == "closed" and self.rate:
            raise ValueError("`rate` is for mode: open; a closed loop is set by `concurrency`")
        return self


class Slo(Strict):
    ttft_s: PositiveFloat | None = None
    itl_s: PositiveFloat | None = Field(None, description="limit on a request's mean inter-token latency")
    e2e_s: PositiveFloat | None = None


class BackendBase(Strict):
    name: str = Field(pattern=NAME)
    model: str = Field(min_length=1, description="model name sent with every request")
    url: str | None = Field(None, description="base URL of a running server, e.g. http://127.0.0.1:8000")
    launch: str | list[str] | None = Field(None, description="command that starts the server; {port} becomes a free port, {python} the interpreter running bench")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for a launched server")
    ready_timeout_s: PositiveFloat = 600.0
    stop_timeout_s: PositiveFloat = 30.0
    article_side: Literal["ollama", "vllm"] | None = Field(
        None, description="the article's column this backend is set beside: ollama (4-bit) or vllm (FP16); "
                          "default by kind, ollama for `ollama` and vllm for the others")

    @model_validator(mode="after")
    def _where(self) -> BackendBase:
        if not self.url and not self.launch:
            raise ValueError("give `url` (a running server) or `launch` (a command to start one)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        cmd = " ".join(self.launch) if isinstance(self.launch, list) else self.launch
        if cmd and "{port}" not in cmd and not self.url and self.kind != "ollama":
            raise ValueError("launch needs {port} in the command, or a `url` saying where it listens")
        return self


class PagedBackend(BackendBase):
    kind: Literal["paged"]
    model_path: str | None = Field(None, description="weights to check before starting; default: MODEL of `engine serve MODEL`")
    extra_body: dict[str, Any] = Field(default_factory=dict)


class OpenAIBackend(BackendBase):
    kind: Literal["openai"]
    api_key: str | None = None
    supports_ignore_eos: bool = Field(False, description="send ignore_eos/min_tokens for fixed output lengths (vLLM, SGLang)")
    extra_body: dict[str, Any] = Field(default_factory=dict)


class OllamaBackend(BackendBase):
    kind: Literal["ollama"]
    num_ctx: PositiveInt | None = Field(4096, description="context per request (OLLAMA_CONTEXT_LENGTH for a launched "
                                       "server); null leaves it to Ollama, whose default depends on its version and VRAM")
    keep_alive: str | float = "30m"
    num_parallel: PositiveInt | None = Field(None, description="OLLAMA_NUM_PARALLEL for a launched server")
    pull: bool = Field(False, description="pull the model if the server lacks it")
    options: dict[str, Any] = Field(default_factory=dict, description="more Ollama options, sent with every request")
    truncate: bool = False


Backend = Annotated[Union[PagedBackend, OpenAIBackend, OllamaBackend], Field(discriminator="kind")]


class Scenario(Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    backends: list[Backend] = Field(min_length=1)
    workload: Workload = Field(default_factory=Workload)
    load: Load
    slo: Slo | None = None

    @model_validator(mode="after")
    def _unique(self) -> Scenario:
        names = [b.name for b in self.backends]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"backend names must be unique: {', '.join(dup)}")
        return self

    def requests_at(self, level: int) -> int | None:
        counts = self.load.requests
        return None if not counts else counts[level if len(counts) > 1 else 0]

    def levels(self) -> list[tuple[str, int | None, float | None]]:
        if self.load.mode == "closed":
            return [(f"c={c}", c, None) for c in self.load.concurrency]
        return [(f"rate={r:g}", None, r) for r in self.load.rate]
