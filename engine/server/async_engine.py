"""Runs LLMEngine.step() in one background thread and hands each request's outputs to its outbox on the event loop."""
import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from engine.llm_engine import LLMEngine
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams

logger = logging.getLogger("engine.server")


class EngineDeadError(RuntimeError):
    """The engine step failed; the requests it held were aborted."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.queues: dict[str, Outbox] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.last_stats: EngineStats = engine.stats()
        self.on_outputs: list[Callable[[list[RequestOutput], float], None]] = []

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    @property
    def num_waiting(self) -> int:
        """Requests not yet scheduled; read without locking, so it may be off by one for an instant."""
        return len(self.engine.pending) + len(self.engine.scheduler.waiting)

    def _run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            if not self.engine.has_unfinished_requests():
                self.last_stats = self.engine.stats()
                self.wake.wait(timeout=1.0)
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                logger.exception("engine step failed; aborting the requests it held")
                failed = list(self.engine.seqs)
                for request_id in failed:
                    self.engine.abort_request(request_id)
                self._post(self._fail, failed, EngineDeadError(f"engine step failed: {type(e).__name__}: {e}"))
                continue
            self.last_stats = self.engine.stats()
            if outputs:
                self._post(self._dispatch, outputs, time.monotonic())

    def _post(self, fn: Callable, *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self.stopping = True

    def _dispatch(self, outputs: list[RequestOutput], now: float) -> None:
        """The event loop's part of a step, posted once for all its outputs: one wake-up of the loop per step."""
        for hook in self.on_outputs:
            hook(outputs, now)
        for out in outputs:
            queue = self.queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)

    def _fail(self, request_ids: list[str], error: Exception) -> None:
        for request_id in request_ids:
            if (queue := self.queues.get(request_id)) is not None:
                queue.put_nowait(error)

    def add(self, request_id: str, prompt: str | list[int], params: SamplingParams,
            arrival_time: float | None = None) -> "RequestStream":
        """Queues the request now, raising ValueError as LLMEngine.add_request does; outputs come on the stream."""
        self.engine.add_request(request_id, prompt, params, arrival_time=arrival_time or time.monotonic())
        outbox = Outbox()
        self.queues[request_id] = outbox
        self.wake.set()
        return RequestStream(self, request_id, outbox)


class Outbox:
    """A request's outputs not yet read, and the reader waiting for them: asyncio.Queue's part that is used here,
    for a fraction of its cost per token, and read all at once."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[RequestOutput | Exception] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: RequestOutput | Exception) -> None:
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class RequestStream:
    """One request's outputs. Closing it, or dropping it unread, before the end aborts the request."""

    __slots__ = ("engine", "request_id", "outbox", "finished")

    def __init__(self, engine: AsyncEngine, request_id: str, outbox: Outbox) -> None:
        self.engine = engine
        self.request_id = request_id
        self.outbox = outbox
        self.finished = False

    async def take(self) -> list[RequestOutput]:
        """Every output already waiting, after waiting for the first if there is none: never for a second. An engine
        failure is raised once the outputs that came before it are taken."""
        await self.outbox.wait()
        items = self.outbox.items
        if isinstance(items[0], Exception):
            self.finished = True
            raise items.popleft()
        taken = []
        while items and not isinstance(items[0], Exception):
            taken.append(out := items.popleft())
            self.finished = out.finished
        return taken

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                for out in await self.take():
                    yield out
        finally:
            self.close()

    def close(self) -> None:
        if self.engine.queues.pop(self.request_id, None) is not None and not self.finished:
            self.engine.engine.abort_request(self.request_id)
            self.engine.wake.set()

    def __del__(self) -> None:
        self.close()
