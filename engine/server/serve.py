"""`engine serve`: load the model, say what memory it took, serve the app on uvicorn, say when it is ready."""
import logging
import os
import socket
import sys
from dataclasses import dataclass, field

import uvicorn

from engine.llm_engine import LLMEngine
from engine.server.api import build_app, engine_version
from engine.server.listen import claim_port
from engine.tp_workers import WorkerFailed

logger = logging.getLogger("engine.server")


@dataclass(slots=True)
class ServeArgs:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: list[str] = field(default_factory=list)
    max_waiting: int = 1024
    tokenizer: str | None = None
    log_level: str = "info"
    access_log: bool = True
    engine_kwargs: dict = field(default_factory=dict)
    request_log: str | None = None
    # Claimed (bound and listening) before anything loads; None: serve() claims host:port itself.
    sock: socket.socket | None = None


def say(message: str) -> None:
    """Startup facts go to stdout for people and to the log for whoever keeps logs."""
    print(message, flush=True)
    logger.info(message)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def memory_line(core: LLMEngine) -> str:
    r = core.runner
    bs = core.config.block_size
    quant = f", from {core.quantization}" if core.quantization else ""
    tp = (f"; {core.config.tensor_parallel_size} ranks, all-reduce: {r.all_reduce}"
          if core.config.tensor_parallel_size > 1 else "")
    return (f"loaded {core.source} in {core.load_seconds:.1f} s: weights {human_bytes(core.weights_bytes)} "
            f"({str(core.dtype).removeprefix('torch.')} on {core.device}{quant}); KV cache "
            f"{human_bytes(r.kv_cache_bytes)} ({r.num_blocks} blocks x {bs} tokens = {r.num_blocks * bs} tokens); "
            f"context {core.max_model_len} tokens{tp}")


class ReadyServer(uvicorn.Server):
    """Says it is ready only once the socket is bound and the app has started."""

    def __init__(self, config: uvicorn.Config, ready_message: str) -> None:
        super().__init__(config)
        self.ready_message = ready_message

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            say(self.ready_message)


def serve(args: ServeArgs) -> None:
    if args.sock is None:
        args.sock = claim_port(args.host, args.port)
    port = args.sock.getsockname()[1]
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    say(f"pagebench engine {engine_version()}: loading {args.model}")
    core = LLMEngine(args.model, tokenizer=args.tokenizer, **args.engine_kwargs)
    say(memory_line(core))
    names = args.served_model_names or [args.model]
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    app = build_app(core, names, api_key=args.api_key, max_waiting=args.max_waiting, request_log=args.request_log)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=5, server_header=False,
                            headers=[("server", f"pagebench-engine/{engine_version()}")])
    ready = (f"ready: serving {', '.join(names)} at http://{args.host}:{port}/v1 "
             f"(weights {human_bytes(core.weights_bytes)}, KV cache {human_bytes(core.runner.kv_cache_bytes)}"
             f"{', API key required' if args.api_key else ''})")
    server = ReadyServer(config, ready)
    failures: list[str] = []
    if core.tp_group is not None:
        def end_serving(why: str) -> None:
            # A group with a dead rank can serve nothing again: stop, rather than answer every request with an error.
            logger.error("%s; shutting down", why)
            failures.append(why)
            server.should_exit = True

        core.tp_group.on_failure = end_serving
    server.run(sockets=[args.sock])
    if core.teardown_stuck:
        # The app closed the engine; only NCCL's teardown is left, stuck in a thread that would hold the exit.
        logger.warning("NCCL teardown did not finish; exiting without it")
        if failures:
            print(f"engine serve: {failures[0]}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(1 if failures else 0)
    if failures:
        raise WorkerFailed(failures[0])
