import os

# Idle OpenMP workers spin by default; beside a server's event loop or a load generator on few cores that costs
# an order of magnitude (measured: 16 vs 2 tokens/s for SmolLM2 on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "EngineStats"]
