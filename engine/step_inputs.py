"""One step's model inputs, and how rank 0 sends them to tensor-parallel workers.

They travel over a gloo group on the CPU, so a worker's GPU never waits on the message: the step reaches the
worker's host directly, not through a device buffer and a copy back as a broadcast over NCCL would."""
import pickle
import struct
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(slots=True)
class StepInputs:
    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    block_tables: list[list[int]]
    seq_lens: list[int]
    query_start_loc: list[int]
    num_decodes: int
    max_query_len: int
    sample_rows: list[int]
    # Input positions whose token the previous step sampled and the host has not read yet, and that step's rows.
    pending_rows: list[int] = field(default_factory=list)
    pending_from: list[int] = field(default_factory=list)


HEAD_BYTES = 4096
_group: dist.ProcessGroup | None = None


# A worker waits here for as long as the server stays idle; the main group's timeout is for steps, not for this.
IDLE_WAIT = timedelta(days=365)


def open_channel() -> None:
    """Collective: every rank calls it once, right after the process group starts."""
    global _group
    _group = dist.new_group(backend="gloo", timeout=IDLE_WAIT)


def close_channel() -> None:
    global _group
    _group = None


def encode(step: StepInputs | None) -> torch.Tensor:
    """Pickled (protocol 5 is C code throughout: faster than any tensor packing of these lists), behind its length."""
    data = pickle.dumps(step, protocol=5)
    return torch.frombuffer(bytearray(struct.pack("<q", len(data)) + data), dtype=torch.uint8)


def split(message: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fixed-size head, so a small step (every decode step of a modest batch) crosses in one broadcast."""
    head = torch.zeros(HEAD_BYTES, dtype=torch.uint8)
    head[: min(HEAD_BYTES, message.numel())] = message[:HEAD_BYTES]
    return head, (message[HEAD_BYTES:] if message.numel() > HEAD_BYTES else None)


def decode(head: torch.Tensor, tail: torch.Tensor | None) -> StepInputs | None:
    size = struct.unpack("<q", head[:8].numpy().tobytes())[0]
    data = head[8 : 8 + size].numpy().tobytes()
    if tail is not None:
        data += tail.numpy().tobytes()
    return pickle.loads(data)


def tail_bytes(head: torch.Tensor) -> int:
    return max(0, 8 + struct.unpack("<q", head[:8].numpy().tobytes())[0] - HEAD_BYTES)


def send(step: StepInputs | None) -> None:
    """From rank 0; None tells the workers to stop."""
    head, tail = split(encode(step))
    dist.broadcast(head, src=0, group=_group)
    if tail is not None:
        dist.broadcast(tail.contiguous(), src=0, group=_group)


def receive() -> StepInputs | None:
    head = torch.empty(HEAD_BYTES, dtype=torch.uint8)
    dist.broadcast(head, src=0, group=_group)
    tail = None
    if (rest := tail_bytes(head)) > 0:
        tail = torch.empty(rest, dtype=torch.uint8)
        dist.broadcast(tail, src=0, group=_group)
    return decode(head, tail)
