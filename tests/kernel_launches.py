"""Counts a Triton kernel's launches in a test, by one keyword of each launch, and still runs every one."""
from types import ModuleType

import pytest


def record_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, key: str) -> list:
    """Replaces module.name (a Triton kernel) with a wrapper that appends kwargs[key] of each launch to the list
    returned, then launches the kernel as it was."""
    kernel, seen = getattr(module, name), []

    class Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs[key])
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(module, name, Recorded())
    return seen
