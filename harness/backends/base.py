"""What the load generator needs from a backend: prepare it, stream one request, read its gauges."""
from __future__ import annotations

import asyncio
import ssl
from abc import ABC, abstractmethod
from typing import Any, Callable, Generic, TypeVar

import httpx

from harness.record import RequestRecord
from harness.scenario import BackendBase, Workload
from harness.workload import WorkItem

PullProgress = Callable[[str, int | None, int | None], None]
C = TypeVar("C")


class ClientPool(Generic[C]):
    """One single-connection client per concurrent stream, reused LIFO.

    httpcore's shared pool scans every connection for every request it adds or removes (quadratic in connections),
    which at 1,000 streams delays token reads by milliseconds; a free list is O(1). One SSL context serves all,
    because building one per client costs ~45 ms. Clients ignore proxy variables (trust_env=False): reading
    them costs ~0.5 ms per client, and benchmark traffic should not detour through a proxy anyway.
    """

    def __init__(self, factory: Callable[[ssl.SSLContext], C]) -> None:
        self.factory = factory
        self.ssl = ssl.create_default_context()
        self.free: list[C] = []
        self.made: list[C] = []

    def acquire(self) -> C:
        if self.free:
            return self.free.pop()
        client = self.factory(self.ssl)
        self.made.append(client)
        return client

    def release(self, client: C) -> None:
        self.free.append(client)


class BackendError(Exception):
    """A backend cannot be measured; the message is one line a user can act on."""


class StatusError(BackendError):
    def __init__(self, status: int, message: object) -> None:
        super().__init__(f"HTTP {status}: {' '.join(str(message).split())[:200]}")
        self.status = status


class Backend(ABC):
    def __init__(self, cfg: BackendBase, url: str, workload: Workload) -> None:
        self.cfg = cfg
        self.url = url.rstrip("/")
        self.workload = workload
        self.control = httpx.AsyncClient(base_url=self.url, timeout=10.0)

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60.0)

    @abstractmethod
    async def prepare(self, on_pull: PullProgress | None = None) -> tuple[str | None, dict[str, Any]]:
        """Checks the model is served and warm; returns (version, info for run.json)."""

    @abstractmethod
    async def stream(self, item: WorkItem, rec: RequestRecord) -> None:
        """Sends one request and records every token-bearing chunk on `rec`."""

    async def poll(self) -> dict[str, Any]:
        return {}

    async def generate(self, item: WorkItem, rec: RequestRecord, timeout_s: float) -> None:
        if item.counted:
            rec.message_tokens = item.prompt_tokens
        try:
            async with asyncio.timeout(timeout_s):
                await self.stream(item, rec)
        except TimeoutError:
            rec.fail(f"timeout: no complete answer after {timeout_s:g}s")
        except httpx.ConnectError as e:
            rec.connect_failed = True
            rec.fail(f"cannot connect to {self.url}: {e or type(e).__name__}")
        except ConnectionError as e:
            rec.connect_failed = True
            rec.fail(f"cannot connect to {self.url}: {e}")
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
            rec.fail(f"stream broken: {e or type(e).__name__}")
        except ValueError as e:
            rec.fail(f"malformed response: {e}")
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            rec.fail(f"malformed response: unexpected shape ({type(e).__name__}: {e})")
        except BackendError as e:
            rec.fail(str(e), getattr(e, "status", None))
        except httpx.HTTPError as e:
            rec.fail(f"{type(e).__name__}: {e}")

    async def close(self) -> None:
        await self.control.aclose()
