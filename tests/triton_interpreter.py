"""Triton's interpreter for the kernel tests on a host without CUDA: switched on for one module's tests, and the
kernel modules reloaded whenever the mode they were imported under is not the one in force."""
import importlib
import os
import sys
from types import ModuleType

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
SAVED_INTERPRET = os.environ.get("TRITON_INTERPRET")  # as tests/conftest.py left it, before any module switched it


def skip_module_if_triton_came_first() -> None:
    """triton's own @jit helpers (tl.cdiv, reductions, tl.rand) are bound to the mode seen at its first import."""
    if not HAS_CUDA and "triton" in sys.modules and SAVED_INTERPRET != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; set it in tests/conftest.py on CPU hosts",
                    allow_module_level=True)


def restore_interpret_setting() -> None:
    if SAVED_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = SAVED_INTERPRET


def forget_kernels() -> None:
    for name in [m for m in sys.modules if m.startswith("engine.kernels")]:
        del sys.modules[name]


def kernel_module(name: str) -> ModuleType:
    """name (an engine.kernels module) as loaded under the interpreter setting in force now: another test module may
    have dropped or switched the kernels since this one was collected."""
    common = sys.modules.get("engine.kernels.common")
    if common is not None and common.INTERPRET != (os.environ.get("TRITON_INTERPRET") == "1"):
        forget_kernels()
    return importlib.import_module(name)


def interpreter_for_module():
    """Body of a module-scoped autouse fixture: the interpreter on while the module's tests run; where it was on
    already (tests/conftest.py) the kernels stay loaded, since other modules hold references to them."""
    switched = not HAS_CUDA and SAVED_INTERPRET != "1"
    if switched:
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    if switched:
        restore_interpret_setting()
        forget_kernels()


def round_like_kernels(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t rounded to dtype as the kernels round it here: the interpreter's fp32 -> bf16 cast truncates where a GPU
    rounds to nearest."""
    t = t.float()
    if not HAS_CUDA and dtype == torch.bfloat16:
        return (t.view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return t.to(dtype)
