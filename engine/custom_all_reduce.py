"""All-reduce of decode-sized tensors through PyTorch symmetric memory, in one kernel.

Each rank copies its partial sum into a buffer that every peer maps, meets the others at a barrier, and reads all
of them over NVLink: one launch and no NCCL protocol, which for the few kilobytes of a decode step's activations is
most of the cost. Larger tensors (prefill) go to NCCL, which moves them at full bandwidth. No multicast is used
(the one-shot kernel reads peers with ordinary loads), so it runs with NCCL_NVLS_ENABLE=0 and multicast off."""
import warnings

import torch
import torch.distributed as dist

MAX_BYTES = 8 << 20
ALIGN_BYTES = 16


class CustomAllReduce:
    """Build it with try_custom_all_reduce: each stage is collective and every rank must agree it worked."""

    def __init__(self, buffer: torch.Tensor, group_name: str) -> None:
        self.buffer = buffer
        self.dtype = buffer.dtype
        self.group_name = group_name
        self.half_numel = buffer.numel() // 2
        self.half = 0
        self.copy_reduce = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", None)

    @property
    def max_bytes(self) -> int:
        return self.half_numel * self.buffer.element_size()

    def accepts(self, x: torch.Tensor) -> bool:
        """Decided by dtype and size alone, which every rank shares: ranks that chose differently would deadlock."""
        nbytes = x.numel() * x.element_size()
        return x.dtype == self.dtype and 0 < x.numel() <= self.half_numel and nbytes % ALIGN_BYTES == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous() or x.data_ptr() % ALIGN_BYTES:
            x = x.clone(memory_format=torch.contiguous_format)
        # Consecutive all-reduces stage in alternate halves, so a rank that runs ahead never overwrites what a slower
        # peer is still reading, whether or not this PyTorch's kernel ends with a barrier.
        start = self.half * self.half_numel
        self.half ^= 1
        staged = self.buffer[start : start + x.numel()].view(x.shape)
        if self.copy_reduce is not None:
            return self.copy_reduce(staged, x, "sum", self.group_name)
        staged.copy_(x)
        return torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)


def try_custom_all_reduce(device: torch.device, dtype: torch.dtype,
                          max_bytes: int = MAX_BYTES) -> tuple[CustomAllReduce | None, str]:
    """Collective. Every rank gets one, or every rank gets None and the reason: a rank that failed a stage never
    leaves the others waiting at the next stage's barrier."""
    if device.type != "cuda":
        return None, "needs CUDA devices"
    if dtype not in (torch.bfloat16, torch.float32):
        return None, f"the one-shot kernel has no {dtype}"
    try:
        import torch.distributed._symmetric_memory as symm_mem
    except ImportError as exc:
        return None, f"symmetric memory unavailable: {exc}"
    group_name = dist.group.WORLD.group_name
    buffer = None

    def allocate() -> None:
        nonlocal buffer
        buffer = symm_mem.empty(2 * max_bytes // dtype.itemsize, dtype=dtype, device=device)

    def map_peers() -> None:
        if hasattr(symm_mem, "enable_symm_mem_for_group"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a no-op with a deprecation warning on newer PyTorch
                symm_mem.enable_symm_mem_for_group(group_name)
        symm_mem.rendezvous(buffer, group_name)

    def probe() -> None:
        world = dist.get_world_size()
        x = torch.full((ALIGN_BYTES // dtype.itemsize * 64,), float(dist.get_rank() + 1), dtype=dtype, device=device)
        if not bool(torch.all(CustomAllReduce(buffer, group_name)(x) == world * (world + 1) / 2)):
            raise RuntimeError("the one-shot all-reduce gave a wrong sum")

    for stage in (allocate, map_peers, probe):
        reason = ""
        try:
            stage()
        except Exception as exc:  # any failure here means NCCL serves every all-reduce, never a crash
            reason = f"{stage.__name__}: {type(exc).__name__}: {exc}"
        ok = torch.tensor([0 if reason else 1], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not ok.item():
            return None, reason or f"{stage.__name__} failed on another rank"
    return CustomAllReduce(buffer, group_name), ""
