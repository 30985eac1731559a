"""A warning for every Triton kernel variant compiled after start-up: each one stalls the step that needs it (about
a second, once per process), and names the specialization that warmup should have covered."""
import logging
import time

logger = logging.getLogger("engine")


class LateCompileWatch:
    def __init__(self) -> None:
        self.started: dict[object, float] = {}
        self.seen: list[str] = []

    def on_cache_miss(self, *, key: object, repr: str, **_: object) -> None:
        self.started[key] = time.perf_counter()

    def on_compiled(self, *, key: object, repr: str, **_: object) -> None:
        seconds = time.perf_counter() - self.started.pop(key, time.perf_counter())
        self.seen.append(repr)
        logger.warning("Triton compiled a kernel variant after start-up (%.2f s; a step waited for it): %s",
                       seconds, repr)


def watch_late_compiles() -> LateCompileWatch | None:
    """Installs the watch on Triton's JIT hooks; None where this Triton has no such hooks."""
    try:
        from triton import knobs
    except ImportError:
        return None
    runtime = getattr(knobs, "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_cache_hook") or not hasattr(runtime, "jit_post_compile_hook"):
        return None
    watch = LateCompileWatch()
    runtime.jit_cache_hook = watch.on_cache_miss
    runtime.jit_post_compile_hook = watch.on_compiled
    return watch
