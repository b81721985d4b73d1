"""One optimizer step of a d3rlpy 1.x implementation, with a SAM closure when SAM is active.

d3rlpy 1.x writes each update as ``optim.zero_grad(); target = compute_target(batch);
loss = compute_*_loss(batch, target); loss.backward(); optim.step()`` (``d3rlpy/algos/torch/
*_impl.py``). The patched tree takes a snapshot of the random generators right before the loss
(:func:`first_pass`) and replaces ``optim.step()`` by :func:`step`, handing it a function that
recomputes the same loss. For ``L(w+e) - L(w)`` to be a sharpness, and SAM with ``rho = 0`` to
be its base optimizer exactly, the second pass differs from the first only in the weights:

* **Targets computed once.** The target (and SAC's temperature target) is computed before the
  snapshot and passed to the recomputation as a value: the target networks do not move between
  the passes, and their random draws (target smoothing, sampled next actions) are not redrawn.
* **Same random draws.** The closure replays the generators from the snapshot (sampled actions,
  VAE noise, dropout), and afterwards they are where the first pass left them, so the random
  stream of a seeded run is the one plain training draws (:func:`flatrl.optim.sam_closure`).
* **BatchNorm statistics once.** Running statistics and counters of the implementation's
  networks are put back after the second pass.
* **Temperature and alpha stepped once.** In 1.x they are updates of their own
  (``update_temp``, ``update_alpha``), each one :func:`step`; no update steps another inside
  its loss, so nothing is stepped twice.
* **Only the needed gradients.** In the closure, parameters of the implementation's networks
  that the stepping optimizer does not own (the critic during the actor's update, the
  temperature) take no gradient; user-frozen parameters stay frozen.

Each SAM step records ``<name>_sharpness`` (``critic_sharpness``, ``temp_sharpness``, ...) on
the implementation; the patched ``LearnableBase.update`` moves them into the metrics it returns
(:func:`take_sharpness`), so 1.x's logger writes them to CSV and TensorBoard next to the loss.
Without SAM, :func:`step` is ``optim.step()``: upstream's update and metrics, unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from flatrl.optim import SAM, sam_closure
from flatrl.runtime import TorchRNG

__all__ = ["first_pass", "networks", "sharpness_key", "step", "take_sharpness"]

_SHARPNESS = "_flatrl_sharpness"


def sharpness_key(loss_key: str) -> str:
    """``critic_loss`` -> ``critic_sharpness``; ``loss`` -> ``loss_sharpness``."""
    stem = loss_key[: -len("_loss")] if loss_key.endswith("_loss") else loss_key
    return f"{stem}_sharpness"


def _device(impl: Any) -> torch.device:
    return torch.device(getattr(impl, "_device", None) or "cpu")


def first_pass(impl: Any) -> TorchRNG:
    """The generators' state right before the loss: what the SAM closure replays."""
    return TorchRNG(_device(impl))


def networks(impl: Any) -> list[nn.Module]:
    """The implementation's networks (every ``nn.Module`` attribute, targets included)."""
    seen: dict[int, nn.Module] = {}
    for value in vars(impl).values():
        if isinstance(value, nn.Module):
            seen.setdefault(id(value), value)
    return list(seen.values())


@contextlib.contextmanager
def _only_own_gradients(modules: list[nn.Module], optim: torch.optim.Optimizer) -> Iterator[None]:
    """Freeze, for the block, the parameters of ``modules`` that ``optim`` does not update."""
    own = {id(p) for group in optim.param_groups for p in group["params"]}
    frozen = [p for m in modules for p in m.parameters() if p.requires_grad and id(p) not in own]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def step(
    impl: Any,
    optim: torch.optim.Optimizer,
    loss: torch.Tensor,
    recompute: Callable[[], torch.Tensor],
    loss_key: str,
    rng: TorchRNG,
) -> None:
    """Step ``optim`` after the first pass (``loss.backward()`` done): a SAM step if it is SAM.

    Args:
        impl: the implementation (its device and networks; it collects the sharpness).
        optim: the optimizer of this update, as made by the algorithm's OptimizerFactory.
        loss: the first pass's loss.
        recompute: computes the same loss on the same batch and targets (no backward).
        loss_key: the loss's key in the algorithm's metrics; names the sharpness key.
        rng: :func:`first_pass`'s snapshot, taken right before the loss was computed.
    """
    if not isinstance(optim, SAM):
        optim.step()
        return
    modules = networks(impl)

    def second_pass() -> torch.Tensor:
        with _only_own_gradients(modules, optim):
            return recompute()

    closure = sam_closure(optim, second_pass, rng=rng, modules=modules)
    optim.step(closure, loss=loss.detach())
    if optim.last_sharpness is not None:  # None on a plain step of SAM(every_k > 1)
        sharpness = vars(impl).setdefault(_SHARPNESS, {})
        sharpness[sharpness_key(loss_key)] = float(optim.last_sharpness)


def take_sharpness(impl: Any) -> dict[str, float]:
    """The sharpness figures recorded since the last call (empty without SAM)."""
    if impl is None:
        return {}
    return vars(impl).pop(_SHARPNESS, {})
