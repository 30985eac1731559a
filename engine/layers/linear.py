import os

import torch
import torch.nn.functional as F
from torch import nn

from engine.parallel import all_reduce, divide, tp_rank, tp_size

FUSED_GEMV_MAX_M = 16  # engine.kernels.gemv.MAX_M, checked here so that CPU steps never import triton


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: int | None) -> None:
        super().__init__()
        self.tp_dim = tp_dim
        self.tp_rank = tp_rank()
        self.tp_size = tp_size()
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if self.tp_dim is not None and self.tp_dim < loaded.dim():
            size = param.size(self.tp_dim)
            loaded = loaded.narrow(self.tp_dim, self.tp_rank * size, size)
        param.data.copy_(loaded)

    def fused_gemv(self, x: torch.Tensor, prologue: str = "plain") -> bool:
        """Whether projecting x (after prologue "plain", "norm" or "silu_mul") runs in one of engine.kernels.gemv's
        small-batch kernels (one GPU, at most 16 rows, the policy there); on CPU tensors only under the Triton
        interpreter with the kernels forced on (tests)."""
        if self.tp_size != 1 or x.dim() != 2 or x.size(0) > FUSED_GEMV_MAX_M:
            return False
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return False
        from engine.kernels.gemv import fused_gemv_allowed

        return fused_gemv_allowed(x, self.weight, prologue)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(input_size, output_size, bias, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(input_size, divide(output_size, tp_size(), "output size"), bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        target = param.data.narrow(0, offset, size)
        target.copy_(loaded.narrow(0, self.tp_rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False) -> None:
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp, "num_attention_heads")
        self.num_kv_heads = max(1, num_kv_heads // tp) if num_kv_heads < tp else divide(num_kv_heads, tp, "num_key_value_heads")
        self.kv_replicas = max(1, tp // num_kv_heads)
        output = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, output, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, index = 0, q_size, self.tp_rank
        else:
            offset = q_size if shard_id == "k" else q_size + kv_size
            size, index = kv_size, self.tp_rank // self.kv_replicas
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, index * size, size))


class RowParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(divide(input_size, tp_size(), "input size"), output_size, bias, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gemv(x):
            from engine.kernels.gemv import gemv

            return gemv(x, self.weight, self.bias)
        y = F.linear(x, self.weight, self.bias if self.tp_rank == 0 else None)
        return all_reduce(y)
