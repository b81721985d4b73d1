"""Adapter: run torch.optim.Muon's Newton-Schulz iteration in float32 on CPU.

``torch.optim.Muon`` (torch 2.13) always orthogonalises in bfloat16. That is the right call on
GPUs, but CPUs without bf16 matrix units emulate it: a 256x256 bf16 matmul measured ~28x slower
than float32 here, which made one SAC update with Muon take ~2 s instead of tens of ms. Until
the flatrl.optim core handles this itself, :func:`float32_newton_schulz_on_cpu` swaps in the
same quintic iteration computed in float32 for CPU tensors, for the duration of a step only;
CUDA tensors still go through torch's own bfloat16 routine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.optim import _muon

_TORCH_NEWTON_SCHULZ = _muon._zeropower_via_newtonschulz


def _newton_schulz_float32(
    grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> torch.Tensor:
    if grad.is_cuda:
        return _TORCH_NEWTON_SCHULZ(grad, ns_coefficients, ns_steps, eps)
    a, b, c = ns_coefficients
    x = grad.float()
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if transposed else x).to(grad.dtype)


@contextlib.contextmanager
def float32_newton_schulz_on_cpu() -> Iterator[None]:
    """Within the block, torch.optim.Muon orthogonalises CPU gradients in float32."""
    _muon._zeropower_via_newtonschulz = _newton_schulz_float32
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = _TORCH_NEWTON_SCHULZ
