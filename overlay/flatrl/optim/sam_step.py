"""One SAM update for a training loop: the second pass as a closure that differs only in weights.

For ``L(w + e) - L(w)`` to be a sharpness (and for SAM with ``rho = 0`` to be the base
optimizer exactly), the second pass must see the same batch, the same random draws and the
same targets as the first, and must leave no trace of its own besides the gradient:

* random draws (dropout masks, sampled actions, target noise) are replayed from a
  :class:`flatrl.runtime.TorchRNG` snapshot taken *before the first pass*, and the generator
  is put back afterwards, so the run's random stream is the one plain training draws;
* BatchNorm running statistics and ``num_batches_tracked`` of ``modules`` are restored after
  the second pass, so they are updated once per update, at the unperturbed weights.

Targets computed once are the caller's business (compute them before, outside the closure).
Every integration (d3rlpy, TD-MPC2, the SAC and world-model agents) steps through
:func:`sam_step`, so a new SAM variant only touches :mod:`flatrl.optim.sam` and this file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from flatrl.optim.sam import SAM
from flatrl.runtime import TorchRNG

__all__ = ["kept_batchnorm_stats", "sam_closure", "sam_step"]


def _batchnorms(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    seen: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def kept_batchnorm_stats(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Restore every BatchNorm buffer under ``modules`` (running stats and counter) on exit."""
    saved = [
        (buf, buf.detach().clone())
        for bn in _batchnorms(modules)
        for buf in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def sam_closure(
    optimizer: torch.optim.Optimizer,
    recompute: Callable[[], Tensor],
    *,
    rng: TorchRNG | None = None,
    modules: Iterable[nn.Module] = (),
    backward: bool = True,
) -> Callable[[], Tensor]:
    """The closure of :meth:`SAM.step`: zero grads, replay draws, recompute, backward.

    Args:
        optimizer: the optimizer being stepped (its gradients are zeroed first).
        recompute: computes the loss on the first pass's batch; with ``backward=False`` it must
            also zero the gradients and call ``backward()`` itself (d3rlpy's ``compute_*_grad``).
        rng: the snapshot taken before the first pass, replayed for the second.
        modules: networks whose BatchNorm statistics the second pass must not change.
        backward: whether the closure calls ``backward()`` on the returned loss.
    """
    modules = list(modules)

    def closure() -> Tensor:
        if backward:
            optimizer.zero_grad(set_to_none=True)
        replay = rng.replay() if rng is not None else contextlib.nullcontext()
        with replay, kept_batchnorm_stats(modules):
            loss = recompute()
            if backward:
                loss.backward()
        return loss

    return closure


def sam_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    recompute: Callable[[], Tensor],
    *,
    rng: TorchRNG | None = None,
    modules: Iterable[nn.Module] = (),
    backward: bool = True,
) -> Tensor | None:
    """Step ``optimizer`` after the first pass; a SAM step when it is a :class:`SAM`.

    ``.grad`` must hold the first pass's gradient of ``loss``. A plain optimizer (or a plain
    every-k step of SAM) takes its ordinary step. Returns ``L(w + e)`` (detached) on a SAM step,
    None otherwise; the sharpness is then ``optimizer.last_sharpness``.
    """
    if not isinstance(optimizer, SAM):
        optimizer.step()
        return None
    closure = sam_closure(optimizer, recompute, rng=rng, modules=modules, backward=backward)
    return optimizer.step(closure, loss=loss.detach())
