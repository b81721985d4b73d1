"""One optimizer update of a d3rlpy algorithm, with a SAM closure when SAM is active.

d3rlpy's implementations split an update into ``compute_*_grad`` (zero_grad, loss, backward)
and ``optim.step()``. SAM needs a closure that recomputes *the same* loss at the perturbed
weights, and for the sharpness figure ``L(w+e) - L(w)`` to mean anything the second pass must
differ from the first only in the weights. :func:`optimizer_update` provides that:

* **Same random draws.** The RNG state is captured before the first pass and restored for the
  closure (SAC/CQL action samples, TD3 smoothing noise, VAE noise, dropout); afterwards the
  post-first-pass state is put back, so the random stream - and hence the whole run for a fixed
  seed - is the one plain training would see.
* **Targets computed once.** ``impl.compute_target`` returns the first pass's value during the
  closure (the target networks do not move between the passes; recomputing would cost time and,
  with sampling, change the target).
* **Only the needed gradients.** In the closure, parameters the stepping optimizer does not
  own are frozen (no weight gradients are computed for them); not under DDP.
* **No nested optimizer steps twice.** SAC's temperature, CQL's and BEAR's alpha are stepped
  *inside* the loss code; while a closure runs, every other optimizer step is skipped (see
  :func:`nested_steps_suppressed`), so they step exactly once per update.

Without SAM the update is exactly upstream's: ``compute_grad()`` then ``optim.step()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from flatrl.optim import SAM

T = TypeVar("T")

_LOCAL = threading.local()


def nested_steps_suppressed() -> bool:
    """True while a SAM closure runs: optimizer steps made by loss code are then skipped."""
    return getattr(_LOCAL, "depth", 0) > 0


@contextlib.contextmanager
def _inside_closure() -> Iterator[None]:
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1


class RNGSnapshot:
    """The CPU (and, for a CUDA device, that device's) RNG state at one moment."""

    def __init__(self, device: str | torch.device) -> None:
        self._device = torch.device(device)
        self._cpu = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state(self._device) if self._device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state(self._cuda, self._device)


@contextlib.contextmanager
def replayed_rng(snapshot: RNGSnapshot, device: str | torch.device) -> Iterator[None]:
    """Run the body with the RNG as it was at ``snapshot``; leave the RNG as it was before."""
    after_first_pass = RNGSnapshot(device)
    snapshot.restore()
    try:
        yield
    finally:
        after_first_pass.restore()


@contextlib.contextmanager
def _frozen_targets(impl: Any) -> Iterator[None]:
    """Make ``impl.compute_target`` compute once and return that value for the rest of the block.

    The override is an instance attribute, removed afterwards, so the class method - and every
    algorithm that does not go through SAM - is untouched.
    """
    original = getattr(impl, "compute_target", None)
    if original is None or "compute_target" in vars(impl):
        # No targets, or an enclosing update (e.g. the actor's, around SAC's nested temperature
        # update) has frozen them already.
        yield
        return
    cache: dict[str, Any] = {}

    def compute_target_once(*args: Any, **kwargs: Any) -> Any:
        if "value" not in cache:
            cache["value"] = original(*args, **kwargs)
        return cache["value"]

    impl.compute_target = compute_target_once
    try:
        yield
    finally:
        del impl.compute_target


_FOREIGN_PARAMS: weakref.WeakKeyDictionary[Any, list[torch.nn.Parameter]] = (
    weakref.WeakKeyDictionary()
)


def _foreign_params(impl: Any, optim: Any) -> list[torch.nn.Parameter]:
    """Trainable parameters of ``impl`` that ``optim`` does not update (cached per optimizer).

    Empty under DDP: its reducer expects a gradient for every parameter it wraps in every
    backward pass, so nothing may be frozen there.
    """
    if optim in _FOREIGN_PARAMS:
        return _FOREIGN_PARAMS[optim]
    modules = getattr(impl, "modules", None)
    networks = (
        [getattr(modules, f.name) for f in dataclasses.fields(modules)]
        if dataclasses.is_dataclass(modules)
        else []
    )
    networks = [m for m in networks if isinstance(m, torch.nn.Module)]
    ddp = torch.nn.parallel.DistributedDataParallel
    if any(isinstance(sub, ddp) for m in networks for sub in m.modules()):
        foreign: list[torch.nn.Parameter] = []
    else:
        own = {id(p) for group in optim.optim.param_groups for p in group["params"]}
        seen: set[int] = set()
        foreign = []
        for network in networks:
            for p in network.parameters():
                if p.requires_grad and id(p) not in own and id(p) not in seen:
                    seen.add(id(p))
                    foreign.append(p)
    _FOREIGN_PARAMS[optim] = foreign
    return foreign


@contextlib.contextmanager
def _requires_grad(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Let ``params`` take gradients within the block, whatever an enclosing closure froze."""
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, previous, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _gradients_only_for_own_params(foreign: list[torch.nn.Parameter]) -> Iterator[None]:
    """In the closure, skip weight gradients that no optimizer would use in this update.

    E.g. the actor's closure backpropagates through the Q-functions to the action but needs no
    gradient for the Q-functions' weights; the first pass still computes them as upstream does.
    """
    for p in foreign:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in foreign:
            p.requires_grad_(True)


def sharpness_key(loss_key: str) -> str:
    """``critic_loss`` -> ``critic_sharpness``; ``loss`` -> ``loss_sharpness``."""
    stem = loss_key[: -len("_loss")] if loss_key.endswith("_loss") else loss_key
    return f"{stem}_sharpness"


def optimizer_update(
    impl: Any,
    optim: Any,
    compute_grad: Callable[[], T],
    loss_of: Callable[[T], torch.Tensor],
    loss_key: str,
) -> tuple[T, dict[str, float]]:
    """Run ``compute_grad`` and step ``optim`` (a d3rlpy ``OptimizerWrapper``).

    Args:
        impl: the algorithm implementation (for its device and ``compute_target``).
        optim: the OptimizerWrapper to step.
        compute_grad: zeroes grads, computes the loss on the current batch, calls backward and
            returns the loss object (upstream's ``compute_*_grad``).
        loss_of: picks the scalar loss tensor out of what ``compute_grad`` returns.
        loss_key: the loss's key in the metrics (names the sharpness key).

    Returns:
        ``compute_grad``'s result from the first pass, and ``{"<name>_sharpness": value}`` on a
        SAM step (empty otherwise, so plain training logs exactly upstream's keys).
    """
    if nested_steps_suppressed():
        # Re-run inside another optimizer's SAM closure (e.g. SAC's temperature inside the
        # actor's): recompute for the caller's return value; the step itself is skipped.
        own = [p for group in optim.optim.param_groups for p in group["params"]]
        with _requires_grad(own):
            out = compute_grad()
        optim.step()
        return out, {}
    if not isinstance(optim.optim, SAM):
        out = compute_grad()
        optim.step()
        return out, {}

    device = getattr(impl, "device", None) or getattr(impl, "_device", "cpu")
    with _frozen_targets(impl):
        before_first_pass = RNGSnapshot(device)
        out = compute_grad()

        foreign = _foreign_params(impl, optim)

        def closure() -> torch.Tensor:
            with (
                replayed_rng(before_first_pass, device),
                _inside_closure(),
                _gradients_only_for_own_params(foreign),
            ):
                return loss_of(compute_grad())

        optim.step(closure, loss=loss_of(out))
    sharpness = optim.optim.last_sharpness
    if sharpness is None:  # a plain step of SAM(every_k > 1)
        return out, {}
    return out, {sharpness_key(loss_key): sharpness}
