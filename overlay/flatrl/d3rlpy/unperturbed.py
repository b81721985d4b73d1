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
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from flatrl.optim import MomentumSAM, unperturbed

__all__ = ["register", "unperturbed_modules"]

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
