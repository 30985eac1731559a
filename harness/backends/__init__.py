"""Backends by scenario kind."""
from __future__ import annotations

from harness.backends.base import Backend, BackendError, StatusError
from harness.scenario import BackendBase, Workload


def make_backend(cfg: BackendBase, url: str, workload: Workload) -> Backend:
    if cfg.kind == "ollama":
        from harness.backends.ollama_native import OllamaNativeBackend

        return OllamaNativeBackend(cfg, url, workload)
    from harness.backends.openai_http import OpenAIHttpBackend

    return OpenAIHttpBackend(cfg, url, workload)


__all__ = ["Backend", "BackendError", "StatusError", "make_backend"]
