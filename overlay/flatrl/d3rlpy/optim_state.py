"""Copy one algorithm's optimizer state into another's, across SAM and Muon wrappers.

d3rlpy's ``copy_policy_optim_from`` / ``copy_q_function_optim_from`` (e.g. CQL pre-training,
then SAC fine-tuning) load the source's ``state_dict()["state"]`` into the target with the
target's ``param_groups``. That assumes a plain torch optimizer on both sides: a
:class:`flatrl.optim.SAM` state dict is ``{"base": ..., "sam": ...}`` and a
:class:`flatrl.optim.CompositeOptimizer` (Muon + Adam) one is ``{"kinds": ..., "optimizers":
...}``. :func:`sync_optimizer_state` compares what actually holds the state - the optimizer
under SAM, and for a composite each child - so Adam and SAM(Adam), SAM(Muon) and Muon, ...
exchange their moments, and an incompatible pair is one clear error.
"""

from __future__ import annotations

import copy
from typing import Any

from torch.optim import Optimizer

from flatrl.optim import SAM, CompositeOptimizer

__all__ = ["sync_optimizer_state"]


def _base(optim: Optimizer) -> Optimizer:
    return optim.base_optimizer if isinstance(optim, SAM) else optim


def _describe(optim: Optimizer) -> str:
    base = _base(optim)
    inner = (
        "+".join(type(child).__name__ for child in base.optimizers)
        if isinstance(base, CompositeOptimizer)
        else type(base).__name__
    )
    return f"SAM({inner})" if isinstance(optim, SAM) else inner


def _leaves(optim: Optimizer) -> list[Optimizer]:
    base = _base(optim)
    return list(base.optimizers) if isinstance(base, CompositeOptimizer) else [base]


def _incompatible(target: Optimizer, source: Optimizer, what: str, why: str) -> ValueError:
    return ValueError(
        f"Cannot copy the {what} state from {_describe(source)} into {_describe(target)}: {why}. "
        "Both algorithms must use the same base optimizer (SAM around it or not does not "
        "matter), e.g. AdamFactory() and SAMFactory(base=AdamFactory()), or MuonFactory() on "
        "both sides; otherwise skip the optimizer copy and start the target's state afresh."
    )


def sync_optimizer_state(target: Optimizer, source: Optimizer, what: str = "optimizer") -> None:
    """Give ``target`` the per-parameter state of ``source``, keeping ``target``'s settings.

    The state is deep-copied (the two algorithms train on independently afterwards); learning
    rates, betas and SAM's own counters stay the target's, as in d3rlpy's upstream function.

    Raises:
        ValueError: the two hold their state in different optimizers (e.g. Adam -> Muon, Adam
            -> AdamW) or over differently sized parameter groups.
    """
    targets, sources = _leaves(target), _leaves(source)
    kinds = [type(o) for o in targets], [type(o) for o in sources]
    if kinds[0] != kinds[1]:
        raise _incompatible(target, source, what, "their base optimizers differ")
    loaded: list[dict[str, Any]] = []
    for targ, src in zip(targets, sources, strict=True):
        targ_groups = targ.state_dict()["param_groups"]
        src_sd = src.state_dict()
        sizes = (
            [len(g["params"]) for g in targ_groups],
            [len(g["params"]) for g in src_sd["param_groups"]],
        )
        if sizes[0] != sizes[1]:
            raise _incompatible(
                target,
                source,
                what,
                f"their parameter groups differ in size ({sizes[1]} -> {sizes[0]})",
            )
        loaded.append({"state": copy.deepcopy(src_sd["state"]), "param_groups": targ_groups})

    base = _base(target)
    base_sd: dict[str, Any] = (
        {"kinds": base.state_dict()["kinds"], "optimizers": loaded}
        if isinstance(base, CompositeOptimizer)
        else loaded[0]
    )
    if isinstance(target, SAM):
        # Through SAM.load_state_dict, which re-links SAM's param_groups to the base's new ones.
        sam_sd = target.state_dict()
        sam_sd["base"] = base_sd
        target.load_state_dict(sam_sd)
    else:
        target.load_state_dict(base_sd)
