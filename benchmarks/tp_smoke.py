"""Starts a tensor-parallel engine on every visible GPU, generates, and exits: checks a clean shutdown (exit 0)."""
import sys

import torch

from engine import LLM, SamplingParams

if __name__ == "__main__":
    tp = torch.cuda.device_count() if torch.cuda.is_available() else 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with LLM("random:qwen3-0.6b", device=device, tensor_parallel_size=tp, max_model_len=1024, max_num_seqs=4,
             kv_cache_tokens=4096) as llm:
        out = llm.generate([[1, 2, 3, 4]], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8))
    print("tp", tp, "tokens", out[0].token_ids, flush=True)
    sys.exit(0)
