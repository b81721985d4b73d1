"""One optimizer update of a d3rlpy algorithm, with a SAM closure when SAM is active.

d3rlpy's implementations split an update into ``compute_*_grad`` (zero_grad, loss, backward)
and ``optim.step()``. SAM needs a closure that recomputes *the same* loss at the perturbed
weights, and for the sharpness figure ``L(w+e) - L(w)`` to mean anything (and for SAM with
``rho = 0`` to be the base optimizer exactly) the second pass must differ from the first only
in the weights. :func:`optimizer_update` provides that, on top of :func:`flatrl.optim.sam_closure`:

* **Same random draws.** A :class:`flatrl.runtime.TorchRNG` snapshot taken before the first
  pass is replayed for the closure (SAC/CQL action samples, TD3 smoothing noise, VAE noise,
  dropout); afterwards the post-first-pass state is put back, so the random stream - and hence
  the whole run for a fixed seed - is the one plain training would see.
* **Targets computed once, draws kept in step.** ``impl.compute_target`` returns the first
  pass's value during the closure (the target networks do not move between the passes). It
  drew random numbers in the first pass (soft/max Q backups, target smoothing, dropout in the
  target network), so in the closure the cached call also moves the generator to where the
  first pass's call left it: every draw after it is the first pass's draw.
* **BatchNorm statistics once.** Running statistics and ``num_batches_tracked`` of the
  implementation's networks are restored after the second pass
  (:func:`flatrl.optim.kept_batchnorm_stats`): they are updated once, at the unperturbed weights.
* **Only the needed gradients.** In the closure, parameters the stepping optimizer does not
  own are frozen (no weight gradients are computed for them) and afterwards get back the flag
  they had, so a parameter the user froze stays frozen; not under DDP.
* **Nested optimizer steps once, replayed in order.** SAC's temperature, CQL's and BEAR's alpha
  are stepped *inside* the loss code. While a closure runs, every such step is skipped (see
  :func:`nested_steps_suppressed`); the nested parameters hold, during the closure, the values
  the first pass saw at the same point (before their step until the step's place in the code,
  after it from there on), so e.g. BEAR's MMD term is weighted by the same alpha in both passes.
  A nested SAM step's ``<name>_sharpness`` (``temp_sharpness``, ``alpha_sharpness``) is reported
  by the enclosing update.
* **Other networks at their w (Momentum-SAM).** Each update runs with the implementation's
  other Momentum-SAM optimizers at ``w`` (:func:`flatrl.d3rlpy.unperturbed.others_at_w`); only
  the stepping optimizer's parameters stand at ``w~``.

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
from torch import nn

from flatrl.d3rlpy.unperturbed import optimizers_of, others_at_w, released
from flatrl.optim import SAM, sam_closure
from flatrl.runtime import TorchRNG

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


def _stack(name: str) -> list[Any]:
    stack = getattr(_LOCAL, name, None)
    if stack is None:
        stack = []
        setattr(_LOCAL, name, stack)
    return stack


def _frozen_by_closures() -> dict[int, nn.Parameter]:
    """Parameters frozen by the enclosing closures (not by the user), by id."""
    frozen = getattr(_LOCAL, "frozen", None)
    if frozen is None:
        frozen = {}
        _LOCAL.frozen = frozen
    return frozen


def _own_params(optim: Any) -> list[torch.Tensor]:
    return [p for group in optim.optim.param_groups for p in group["params"]]


@dataclasses.dataclass
class _NestedStep:
    """An optimizer stepped inside another update's first pass, with its parameter values."""

    params: list[torch.Tensor]
    before: list[torch.Tensor]
    after: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @torch.no_grad()
    def set(self, values: list[torch.Tensor]) -> None:
        for p, v in zip(self.params, values, strict=True):
            p.copy_(v)


@dataclasses.dataclass
class _Frame:
    """What the first pass of one update learns about the optimizer updates nested in it."""

    nested: dict[int, _NestedStep] = dataclasses.field(default_factory=dict)
    sharpness: dict[str, float] = dataclasses.field(default_factory=dict)

    def record_nested(self, optim: Any) -> None:
        if id(optim) not in self.nested:
            params = _own_params(optim)
            self.nested[id(optim)] = _NestedStep(params, [p.detach().clone() for p in params])

    def record_after(self) -> None:
        for step in self.nested.values():
            step.after = [p.detach().clone() for p in step.params]

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Nested parameters at their pre-step values; :meth:`reached` moves each on."""
        for step in self.nested.values():
            step.set(step.before)
        _stack("replays").append(self)
        try:
            yield
        finally:
            _stack("replays").pop()
            for step in self.nested.values():
                step.set(step.after)

    def reached(self, optim: Any) -> None:
        """The closure got to ``optim``'s (skipped) step: its parameters take the new values."""
        step = self.nested.get(id(optim))
        if step is not None:
            step.set(step.after)


class _Targets:
    """``impl.compute_target`` computed once per update, replayed in the closure."""

    def __init__(self, impl: Any, device: torch.device) -> None:
        self.impl = impl
        self.device = device
        self.active = False
        self.in_closure = False
        self.value: Any = None
        self.rng_after: TorchRNG | None = None

    def compute_target_once(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def compute_target(*args: Any, **kwargs: Any) -> Any:
            if self.rng_after is None:
                self.value = original(*args, **kwargs)
                self.rng_after = TorchRNG(self.device)
            elif self.in_closure:
                # The first pass's call drew from the generator: skip those draws too.
                self.rng_after.restore()
            return self.value

        return compute_target

    @contextlib.contextmanager
    def frozen(self) -> Iterator[_Targets]:
        """Install the override as an instance attribute (removed afterwards), so the class
        method - and every algorithm that does not go through SAM - is untouched."""
        original = getattr(self.impl, "compute_target", None)
        if original is None or "compute_target" in vars(self.impl):
            # No targets, or an enclosing update (e.g. the actor's, around SAC's nested
            # temperature update) has frozen them already.
            yield self
            return
        self.impl.compute_target = self.compute_target_once(original)
        self.active = True
        try:
            yield self
        finally:
            del self.impl.compute_target
            self.active = False

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        self.in_closure = True
        try:
            yield
        finally:
            self.in_closure = False


def _networks(impl: Any) -> list[nn.Module]:
    modules = getattr(impl, "modules", None)
    if not dataclasses.is_dataclass(modules):
        return []
    networks = [getattr(modules, f.name) for f in dataclasses.fields(modules)]
    return [m for m in networks if isinstance(m, nn.Module)]


_OTHER_PARAMS: weakref.WeakKeyDictionary[Any, list[nn.Parameter]] = weakref.WeakKeyDictionary()


def _other_params(impl: Any, optim: Any, networks: list[nn.Module]) -> list[nn.Parameter]:
    """Parameters of ``impl``'s networks that ``optim`` does not update (cached per optimizer).

    Whether each takes gradients is looked up at every closure, not cached: the user may freeze
    or unfreeze parameters between updates. Empty under DDP: its reducer expects a gradient for
    every parameter it wraps in every backward pass, so nothing may be frozen there.
    """
    if optim in _OTHER_PARAMS:
        return _OTHER_PARAMS[optim]
    ddp = nn.parallel.DistributedDataParallel
    others: list[nn.Parameter] = []
    if not any(isinstance(sub, ddp) for m in networks for sub in m.modules()):
        own = {id(p) for p in _own_params(optim)}
        seen: set[int] = set()
        for network in networks:
            for p in network.parameters():
                if id(p) not in own and id(p) not in seen:
                    seen.add(id(p))
                    others.append(p)
    _OTHER_PARAMS[optim] = others
    return others


@contextlib.contextmanager
def _gradients_only_for_own_params(others: list[nn.Parameter]) -> Iterator[None]:
    """In the closure, skip weight gradients that no optimizer would use in this update.

    E.g. the actor's closure backpropagates through the Q-functions to the action but needs no
    gradient for the Q-functions' weights; the first pass still computes them as upstream does.
    Only parameters that take gradients now are frozen, and only those are given back.
    """
    frozen = _frozen_by_closures()
    mine = [p for p in others if p.requires_grad]
    for p in mine:
        p.requires_grad_(False)
        frozen[id(p)] = p
    try:
        yield
    finally:
        for p in mine:
            p.requires_grad_(True)
            frozen.pop(id(p), None)


@contextlib.contextmanager
def _unfrozen(params: list[torch.Tensor]) -> Iterator[None]:
    """Let ``params`` take gradients within the block if an enclosing closure froze them.

    A parameter the user froze stays frozen.
    """
    frozen = _frozen_by_closures()
    thawed = [p for p in params if id(p) in frozen]
    for p in thawed:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(False)


def sharpness_key(loss_key: str) -> str:
    """``critic_loss`` -> ``critic_sharpness``; ``loss`` -> ``loss_sharpness``."""
    stem = loss_key[: -len("_loss")] if loss_key.endswith("_loss") else loss_key
    return f"{stem}_sharpness"


def _device(impl: Any) -> torch.device:
    return torch.device(getattr(impl, "device", None) or getattr(impl, "_device", "cpu"))


def optimizer_update(
    impl: Any,
    optim: Any,
    compute_grad: Callable[[], T],
    loss_of: Callable[[T], torch.Tensor],
    loss_key: str,
) -> tuple[T, dict[str, float]]:
    """Run ``compute_grad`` and step ``optim`` (a d3rlpy ``OptimizerWrapper``).

    Args:
        impl: the algorithm implementation (its device, networks and ``compute_target``).
        optim: the OptimizerWrapper to step.
        compute_grad: zeroes grads, computes the loss on the current batch, calls backward and
            returns the loss object (upstream's ``compute_*_grad``).
        loss_of: picks the scalar loss tensor out of what ``compute_grad`` returns.
        loss_key: the loss's key in the metrics (names the sharpness key).

    Returns:
        ``compute_grad``'s result from the first pass, and ``{"<name>_sharpness": value}`` for
        this SAM step and every SAM step nested in it (empty without SAM, so plain training logs
        exactly upstream's keys). A nested update's sharpness also goes to the enclosing one.
    """
    if nested_steps_suppressed():
        # Re-run inside another optimizer's SAM closure (e.g. SAC's temperature inside the
        # actor's): recompute for the caller's return value; the step itself is skipped, and
        # the parameters take the values the first pass's step gave them.
        with _unfrozen(_own_params(optim)):
            out = compute_grad()
        optim.step()
        replays = _stack("replays")
        if replays:
            replays[-1].reached(optim)
        return out, {}

    frames = _stack("frames")
    parent = frames[-1] if frames else None
    if parent is not None:
        parent.record_nested(optim)
    frame = _Frame()
    frames.append(frame)
    try:
        with _others_at_w(impl, optim, nested=parent is not None):
            out, own = _update(
                impl, optim, compute_grad, loss_of, loss_key, frame, parent is not None
            )
    finally:
        frames.pop()
    sharpness = {**own, **frame.sharpness}
    if parent is not None:
        parent.sharpness.update(sharpness)
    return out, sharpness


def _others_at_w(impl: Any, optim: Any, nested: bool) -> contextlib.AbstractContextManager[None]:
    """Momentum-SAM: this update's loss at its own ``w~``, every other network at its ``w``.

    A top-level update holds the implementation's other optimizers at ``w`` (the actor's loss
    reads the critic, ``compute_target`` samples the policy); a nested one (temperature, alpha)
    is let go to its ``w~`` for its own loss and step, then held at its new ``w``.
    """
    if nested:
        return released(optim.optim)
    modules = getattr(impl, "modules", None)
    return others_at_w(o for o in optimizers_of(modules) if o is not optim.optim)


def _update(
    impl: Any,
    optim: Any,
    compute_grad: Callable[[], T],
    loss_of: Callable[[T], torch.Tensor],
    loss_key: str,
    frame: _Frame,
    nested: bool,
) -> tuple[T, dict[str, float]]:
    if not isinstance(optim.optim, SAM):
        out = compute_grad()
        optim.step()
        return out, {}

    device = _device(impl)
    networks = _networks(impl)
    with _Targets(impl, device).frozen() as targets:
        before_first_pass = TorchRNG(device)
        out = compute_grad()
        frame.record_after()
        others = _other_params(impl, optim, networks)

        def recompute() -> torch.Tensor:
            with (
                _inside_closure(),
                targets.replaying(),
                frame.replayed(),
                _gradients_only_for_own_params(others),
            ):
                return loss_of(compute_grad())

        # compute_grad zeroes the gradients and calls backward itself. A nested update's loss
        # (temperature, alpha) does not run the networks, and the enclosing first pass's graph
        # still holds their BatchNorm buffers, which restoring them in place would invalidate:
        # the enclosing update keeps the statistics instead.
        closure = sam_closure(
            optim.optim,
            recompute,
            rng=before_first_pass,
            modules=() if nested else networks,
            backward=False,
        )
        optim.step(closure, loss=loss_of(out))
    sharpness = optim.optim.last_sharpness
    if sharpness is None:  # a plain step of SAM(every_k > 1)
        return out, {}
    return out, {sharpness_key(loss_key): sharpness}
