import torch
from torch import nn

from engine.layers.linear import LinearBase


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if x.is_cuda:
            from engine.kernels import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def project(self, x: torch.Tensor, residual: torch.Tensor | None,
                linear: LinearBase) -> tuple[torch.Tensor, torch.Tensor]:
        """(linear(norm(x + residual)), x + residual), or (linear(norm(x)), x) without residual: one launch where
        linear.fused_gemv allows it (small batch on one GPU), else this norm then linear as two steps."""
        if linear.fused_gemv(x, "norm"):
            from engine.kernels.gemv import norm_gemv

            return norm_gemv(x, residual, self.weight, self.eps, linear.weight, linear.bias)
        if residual is None:
            return linear(self(x)), x
        hidden, residual = self(x, residual)
        return linear(hidden), residual
