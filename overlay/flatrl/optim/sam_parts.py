"""What :class:`flatrl.optim.SAM` needs besides the algorithm itself.

* :func:`make_base_optimizer`: the argument checks of ``SAM(params_or_optimizer, base=...)``;
* :class:`Scope`: which parameters are perturbed, checked against the optimizer's;
* :func:`gradients_off`: parameters that take no gradient in a block (SAM's second pass);
* :class:`WeightBackup`: ``w`` while SAM stands at ``w + e``, and what puts it back;
* :class:`SAMReadings`: the numbers of the last step, for logs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

CLOSURE_HINT = (
    "def closure():\n"
    "    sam.zero_grad()\n"
    "    loss = compute_loss(batch)  # the SAME batch as the first pass\n"
    "    loss.backward()\n"
    "    return loss\n"
    "sam.step(closure, loss=first_pass_loss)"
)


def make_base_optimizer(
    params: Any, base: Any, base_kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer SAM wraps: ``params`` itself if it is one, else ``base(params, **kwargs)``."""
    from flatrl.optim.sam import SAM

    if isinstance(params, SAM):
        raise TypeError("SAM cannot wrap another SAM; wrap its base_optimizer instead.")
    if isinstance(params, torch.optim.Optimizer):
        if base is not None or base_kwargs:
            raise TypeError(
                "SAM wraps the given optimizer instance as is: do not also pass base= or base "
                f"optimizer kwargs (got base={base!r}, kwargs={sorted(base_kwargs)})."
            )
        return params
    if isinstance(base, torch.optim.Optimizer):
        raise TypeError(
            "SAM base= must be an optimizer class such as torch.optim.Adam; to wrap an existing "
            "optimizer instance pass it as the first argument: SAM(optimizer, rho=...)."
        )
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(
            "SAM needs base=<a torch.optim.Optimizer class> (e.g. base=torch.optim.Adam, lr=1e-3) "
            f"when given parameters; got base={base!r}."
        )
    return base(params, **base_kwargs)


class Scope:
    """The parameters SAM perturbs: all of them, or a checked subset of the optimizer's.

    Membership is by identity, so groups added to the optimizer later are out of a set scope.
    """

    def __init__(
        self,
        scope: Iterable[Tensor] | nn.Module | None,
        param_groups: list[dict[str, Any]],
    ) -> None:
        self.ids = _scope_ids(scope, param_groups)

    @property
    def restricted(self) -> bool:
        """Whether only a subset is perturbed."""
        return self.ids is not None

    def __contains__(self, p: Tensor) -> bool:
        return self.ids is None or id(p) in self.ids

    def outside(self, param_groups: list[dict[str, Any]]) -> list[Tensor]:
        """The optimizer's parameters that are not perturbed (none when the scope is everything)."""
        if self.ids is None:
            return []
        return [p for group in param_groups for p in group["params"] if id(p) not in self.ids]

    def buckets(self, param_groups: list[dict[str, Any]]) -> list[list[Tensor]]:
        """In-scope parameters with a gradient, bucketed by (device, dtype) for foreach kernels."""
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for group in param_groups:
            for p in group["params"]:
                if p.grad is not None and p in self:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
        return list(buckets.values())


def _scope_ids(
    scope: Iterable[Tensor] | nn.Module | None, param_groups: list[dict[str, Any]]
) -> set[int] | None:
    if scope is None:
        return None
    if isinstance(scope, Tensor):
        scope = [scope]
    scope_params = list(scope.parameters() if isinstance(scope, nn.Module) else scope)
    if not scope_params:
        raise ValueError("SAM scope is empty; pass scope=None to perturb every parameter.")
    known = {id(p) for group in param_groups for p in group["params"]}
    for i, p in enumerate(scope_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"SAM scope item #{i} is a {type(p).__name__}, not a parameter.")
        if id(p) not in known:
            raise ValueError(
                f"SAM scope parameter #{i} (shape {tuple(p.shape)}) is not among the optimizer's "
                "parameters; scope must be a subset of the parameters the optimizer updates "
                "(e.g. scope=model.dynamics.parameters() with an optimizer over model)."
            )
    return {id(p) for p in scope_params}


@contextlib.contextmanager
def gradients_off(params: Iterable[Tensor]) -> Iterator[list[Tensor]]:
    """Within the block, ``params`` take no gradient; yields those that were switched off.

    Only parameters with ``requires_grad`` on are switched, and exactly those are switched back
    on exit, also when the block raises: a parameter the user froze stays frozen. Autograd then
    skips their weight gradients, and the whole backward pass of a part of the graph that only
    they feed (e.g. an encoder upstream of perturbed dynamics).
    """
    switched = [p for p in params if p.requires_grad]
    for p in switched:
        p.requires_grad_(False)
    try:
        yield switched
    finally:
        for p in switched:
            p.requires_grad_(True)


def distributed_run() -> bool:
    """Whether a torch.distributed process group is up (DDP/FSDP may wrap the parameters)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class WeightBackup:
    """``w`` while SAM stands at ``w + e``: the in-scope weights and the set-aside gradients.

    Weights are copied into one persistent buffer per parameter (no allocation on every step).
    :meth:`restore` puts back every weight saved and every gradient set aside, which makes both
    the second step and the clean-up after a failure half-way through the first one.
    """

    def __init__(self) -> None:
        self._buffers: dict[Tensor, Tensor] = {}
        self._saved: list[tuple[list[Tensor], list[Tensor]]] = []
        self._set_aside: dict[Tensor, Tensor | None] = {}
        #: True between a completed first step and the restore that ends it.
        self.active = False

    def set_aside_grads(self, params: Iterable[Tensor]) -> None:
        """Take the gradients of ``params`` away until :meth:`restore` gives them back."""
        for p in params:
            self._set_aside[p] = p.grad
            p.grad = None

    @torch.no_grad()
    def save(self, params: list[Tensor]) -> None:
        """Copy the current weights of ``params`` (one device and dtype) before they move."""
        buffers = [self._buffer(p) for p in params]
        torch._foreach_copy_(buffers, params)
        # Registered before the weights move, so that a failure from here on restores these
        # too (copying an unmoved w back onto itself is a no-op).
        self._saved.append((params, buffers))

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every saved weight and set-aside gradient; the backup is then empty."""
        for params, buffers in self._saved:
            torch._foreach_copy_(params, buffers)
        for p, g in self._set_aside.items():
            p.grad = g
        self._saved, self._set_aside, self.active = [], {}, False

    def forget(self) -> None:
        """Drop the backup without writing it back (the weights were replaced from outside)."""
        self._saved, self._set_aside, self.active = [], {}, False

    @contextlib.contextmanager
    def restored_on_error(self) -> Iterator[None]:
        """Restore if the body raises (anything, interrupts included), then re-raise."""
        try:
            yield
        except BaseException:
            self.restore()
            raise

    def _buffer(self, p: Tensor) -> Tensor:
        buf = self._buffers.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = torch.empty_like(p, memory_format=torch.preserve_format)
            self._buffers[p] = buf
        return buf


def _as_float(value: Tensor | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return float(value.detach().double().mean().item())
    return float(value)


def _as_detached(value: Tensor | float | None) -> Tensor | float | None:
    if isinstance(value, Tensor):
        return value.detach()
    return value


class SAMReadings:
    """The numbers of SAM's last step for logs, kept as tensors until read.

    Reading them is the only device sync, so logging only when needed costs nothing per step.
    """

    _last_grad_norm: Tensor | None = None
    _last_loss: Tensor | float | None = None
    _last_perturbed: Tensor | float | None = None

    def _record(self, loss: Tensor | float | None, perturbed: Tensor | float | None) -> None:
        self._last_loss = _as_detached(loss)
        self._last_perturbed = _as_detached(perturbed)

    @property
    def last_perturbed_loss(self) -> float | None:
        """``L(w + e)`` returned by the closure on the last step, or None on a plain step."""
        return _as_float(self._last_perturbed)

    @property
    def last_sharpness(self) -> float | None:
        """``L(w + e) - L(w)`` of the last step if ``loss=`` was passed on a SAM step, else None."""
        if self._last_perturbed is None or self._last_loss is None:
            return None
        return _as_float(self._last_perturbed) - _as_float(self._last_loss)  # type: ignore[operator]

    @property
    def last_grad_norm(self) -> float | None:
        """Norm of the (ASAM-scaled) in-scope gradient at the last first_step, or None.

        ``rho * last_grad_norm`` is the paper's first-order sharpness estimate.
        """
        return _as_float(self._last_grad_norm)
