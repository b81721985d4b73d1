"""Momentum-SAM in d3rlpy: act, evaluate and sync target networks at the trained weights w.

``SAMFactory(variant="msam")`` builds a :class:`flatrl.optim.MomentumSAM`, which keeps the
parameters it steps at the perturbed ``w~`` between updates (that is what makes its gradient
free). d3rlpy reads those parameters outside the updates in a few places, all of which must see
``w``:

* ``predict`` / ``sample_action`` / ``predict_value`` (the implementation methods under
  ``eval_api``): evaluation, online data collection, evaluators;
* ``soft_sync`` / ``hard_sync``: target-network updates (DQN, DDPG, TD3, SAC, CQL, BCQ, CRR,
  PLAS, TACR, FQE) and ``copy_policy_from`` / ``copy_q_function_from``.

The patched tree calls :func:`unperturbed_modules` there (one hunk per place in
``d3rlpy/torch_utility.py``). ``SAMFactory`` registers every Momentum-SAM it builds; the
context manager puts ``w`` back for each registered one that owns a parameter of the given
modules, and ``w~`` bit for bit afterwards. Without a Momentum-SAM it does nothing.

Inside one update the same holds for the networks the update does *not* train: each
optimizer's own loss is taken at its own ``w~``, every other network is read at its ``w`` (SAC
with a Momentum-SAM critic: the actor's loss reads the critic at ``w``; ``compute_target``
samples the policy at ``w``). :func:`others_at_w` holds the other optimizers of the
implementation at ``w`` for a whole update (``flatrl.d3rlpy.closures.optimizer_update`` calls
it); an optimizer stepped *inside* that update (SAC's temperature, CQL's alpha) is let go to its
``w~`` for its own loss and step by :func:`released`, and held at its new ``w`` afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from flatrl.optim import MomentumSAM, unperturbed

__all__ = ["optimizers_of", "others_at_w", "register", "released", "unperturbed_modules"]

_MSAM: weakref.WeakSet[MomentumSAM] = weakref.WeakSet()


def register(optimizer: torch.optim.Optimizer) -> None:
    """Remember ``optimizer`` if it is a Momentum-SAM (held weakly: no leak)."""
    if isinstance(optimizer, MomentumSAM):
        _MSAM.add(optimizer)


def _parameters(obj: Any) -> Iterable[torch.Tensor]:
    """Parameters of a module, or of the modules in a d3rlpy ``Modules`` dataclass."""
    if isinstance(obj, nn.Module):
        yield from obj.parameters()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if isinstance(value, nn.Module):
                yield from value.parameters()


@contextlib.contextmanager
def unperturbed_modules(*modules: Any) -> Iterator[None]:
    """Within the block, every registered Momentum-SAM that owns a parameter of ``modules``
    (``nn.Module``s or d3rlpy ``Modules``) holds its parameters at ``w``."""
    perturbed = [o for o in list(_MSAM) if o.perturbed]
    if not perturbed:
        yield
        return
    ids = {id(p) for m in modules for p in _parameters(m)}
    owners = [
        o for o in perturbed if any(id(p) in ids for g in o.param_groups for p in g["params"])
    ]
    with unperturbed(*owners):
        yield


def optimizers_of(modules: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers of a d3rlpy ``Modules`` dataclass (its ``OptimizerWrapper`` fields)."""
    if not dataclasses.is_dataclass(modules) or isinstance(modules, type):
        return []
    found = (getattr(getattr(modules, f.name), "optim", None) for f in dataclasses.fields(modules))
    return [o for o in found if isinstance(o, torch.optim.Optimizer)]


_LOCAL = threading.local()


def _held() -> dict[int, contextlib.AbstractContextManager[None]]:
    """The Momentum-SAMs held at ``w`` by the enclosing :func:`others_at_w`, by id."""
    held = getattr(_LOCAL, "held", None)
    if held is None:
        held = _LOCAL.held = {}
    return held


@contextlib.contextmanager
def others_at_w(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """Within the block every Momentum-SAM among ``optimizers`` holds its parameters at ``w``.

    One that is not perturbed yet (no momentum) is held too, so that if an update nested in the
    block perturbs it, the rest of the block still reads its ``w`` (see :func:`released`). On
    exit each is back at ``w~`` (bit for bit unless it stepped). Already held ones are skipped.
    """
    held = _held()
    mine: list[int] = []
    try:
        for opt in optimizers:
            if isinstance(opt, MomentumSAM) and id(opt) not in held:
                context = opt.unperturbed()
                context.__enter__()
                held[id(opt)] = context
                mine.append(id(opt))
        yield
    finally:
        for key in reversed(mine):
            held.pop(key).__exit__(None, None, None)


@contextlib.contextmanager
def released(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Let ``optimizer``, if an enclosing :func:`others_at_w` holds it at ``w``, stand at its
    ``w~`` within the block (its own loss and step); afterwards it is held at its new ``w``."""
    held = _held()
    context = held.pop(id(optimizer), None)
    if context is None or not isinstance(optimizer, MomentumSAM):  # only Momentum-SAMs are held
        yield
        return
    context.__exit__(None, None, None)
    try:
        yield
    finally:
        again = optimizer.unperturbed()
        again.__enter__()
        held[id(optimizer)] = again
