import os
from typing import TYPE_CHECKING

# Idle OpenMP workers spin by default; beside a server's event loop or a load generator on few cores that costs
# an order of magnitude (measured: 16 vs 2 tokens/s for SmolLM2 on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from engine.llm import LLM
    from engine.llm_engine import LLMEngine
    from engine.outputs import EngineStats, RequestOutput
    from engine.sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "EngineStats"]

# Imported on first use: `engine serve` checks its port and options in a moment, before torch takes seconds.
_HOMES = {"LLM": "engine.llm", "LLMEngine": "engine.llm_engine", "SamplingParams": "engine.sampling_params",
          "RequestOutput": "engine.outputs", "EngineStats": "engine.outputs"}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
