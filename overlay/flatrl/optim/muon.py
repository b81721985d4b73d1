"""``torch.optim.Muon`` with its Newton-Schulz iteration in a dtype that suits the device.

torch's Muon always orthogonalises in bfloat16. That is the fast choice on GPUs, but CPUs
without native bf16 matrix units emulate it: on the development machines (AVX2, no AVX512-BF16)
one 256x256 Newton-Schulz takes about 0.9 s in bf16 against about 0.03 s in float32, which makes
torch's Muon unusable for CPU training and tests. This subclass keeps torch's hyperparameters,
group layout, state (``momentum_buffer``) and update rule, and only picks the Newton-Schulz
dtype: bfloat16 on CUDA (as torch), float32 elsewhere, or whatever ``ns_dtype`` says. With
``ns_dtype=torch.bfloat16`` it reproduces ``torch.optim.Muon`` bit for bit (tested).

``torch.optim.Muon`` exists from torch 2.9 on. On an older torch this module (and so
``flatrl.optim``, whose SAM and Adam paths do not need Muon) still imports; only constructing
:class:`Muon` raises :class:`MuonUnavailableError`, naming the torch found and the one needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: The first torch release with ``torch.optim.Muon``.
MIN_TORCH_FOR_MUON = "2.9"

_TorchMuon: type[torch.optim.Optimizer] | None = getattr(torch.optim, "Muon", None)


class MuonUnavailableError(RuntimeError):
    """This torch has no ``torch.optim.Muon``, which :class:`Muon` builds on."""


def _muon_unavailable() -> MuonUnavailableError:
    return MuonUnavailableError(
        f"flatrl.optim.Muon needs torch.optim.Muon, which torch >= {MIN_TORCH_FOR_MUON} provides, "
        f"but this is torch {torch.__version__}. Install torch >= {MIN_TORCH_FOR_MUON} (the "
        "project's environments pin it in requirements/constraints.txt), or pick an optimizer "
        "without Muon (e.g. case='adam')."
    )


if _TorchMuon is None:

    class _MuonBase(torch.optim.Optimizer):
        """Stand-in base on a torch without Muon, so that importing this module still works."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise _muon_unavailable()

else:
    _MuonBase = _TorchMuon  # type: ignore[misc]


def newton_schulz(
    grad: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> Tensor:
    """Quintic Newton-Schulz orthogonalisation of a 2-D matrix, as in ``torch.optim.Muon``.

    The same sequence of operations as torch's private ``_zeropower_via_newtonschulz``, with the
    working dtype as a parameter instead of a hard-coded bfloat16.
    """
    if grad.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(grad.shape)}.")
    a, b, c = coefficients
    # Always a copy: ``grad`` may be the momentum buffer itself (nesterov=False), and the
    # normalisation below is in place.
    x = grad.to(dtype, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's shape-dependent learning-rate scaling (same rules as torch.optim.Muon)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _resolve_dtype(ns_dtype: str | None, device: torch.device) -> torch.dtype:
    if ns_dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[ns_dtype]


class Muon(_MuonBase):
    """``torch.optim.Muon`` whose Newton-Schulz dtype follows the device (see module doc).

    Args:
        params, **kwargs: exactly as ``torch.optim.Muon``.
        ns_dtype: ``None`` (bfloat16 on CUDA, float32 elsewhere), ``"float32"``,
            ``"bfloat16"`` or ``"float64"``. Stored per param group.

    Raises:
        MuonUnavailableError: on a torch without ``torch.optim.Muon`` (before torch 2.9).
    """

    def __init__(self, params: Any, *args: Any, ns_dtype: str | None = None, **kwargs: Any):
        if _TorchMuon is None:
            raise _muon_unavailable()
        if ns_dtype is not None and ns_dtype not in _DTYPES:
            raise ValueError(
                f"ns_dtype must be None or one of {sorted(_DTYPES)}, got {ns_dtype!r}."
            )
        self._default_ns_dtype = ns_dtype  # read by add_param_group during __init__
        super().__init__(params, *args, **kwargs)
        self.defaults["ns_dtype"] = ns_dtype

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus the ``ns_dtype`` default."""
        param_group.setdefault("ns_dtype", self._default_ns_dtype)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Muon update (torch's rule; Newton-Schulz in the group's dtype)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            lr = float(lr) if isinstance(lr, Tensor) else lr
            momentum, weight_decay = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon supports neither complex parameters nor sparse grads.")
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        grad, memory_format=torch.preserve_format
                    )
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(
                    update,
                    group["ns_coefficients"],
                    group["ns_steps"],
                    group["eps"],
                    _resolve_dtype(group.get("ns_dtype"), p.device),
                )
                p.mul_(1 - lr * weight_decay)
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
