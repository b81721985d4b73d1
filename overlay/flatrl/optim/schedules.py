"""Momentum schedules driven by an update counter.

"Delayed momentum" runs an optimizer without momentum for the first ``start_step`` updates and
with its own default afterwards: early in RL training targets move fast and stale momentum
points the wrong way. Muon keeps its momentum in ``group["momentum"]``, Adam/AdamW in
``group["betas"][0]``; the helpers below hide that difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _describe(group: dict[str, Any]) -> str:
    return str(group.get("optimizer_kind", sorted(k for k in group if k != "params")))


def get_momentum(group: dict[str, Any]) -> float:
    """The momentum of one param group: ``momentum`` (Muon, SGD) or ``betas[0]`` (Adam/AdamW)."""
    if "momentum" in group:
        return float(group["momentum"])
    if "betas" in group:
        return float(group["betas"][0])
    raise ValueError(
        f"param group {_describe(group)} has neither 'momentum' (Muon/SGD) nor 'betas' "
        "(Adam/AdamW), so it has no momentum to schedule."
    )


def set_momentum(group: dict[str, Any], value: float) -> None:
    """Set ``momentum`` (Muon, SGD) or ``betas[0]`` (Adam/AdamW) of one param group."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {value}.")
    if "momentum" in group:
        group["momentum"] = float(value)
    elif "betas" in group:
        beta1 = group["betas"][0]
        new_beta1 = beta1.new_tensor(value) if isinstance(beta1, torch.Tensor) else float(value)
        group["betas"] = (new_beta1, group["betas"][1])
    else:
        get_momentum(group)  # raises the explanatory error


class DelayedMomentum:
    """Momentum 0 until ``start_step`` updates have been made, then each group's own default.

    The defaults are read from the groups at construction. Call :meth:`step` once per optimizer
    update (after ``optimizer.step()``); :attr:`current_step` counts those calls. The update
    numbered ``current_step`` (from 0) runs with momentum 0 iff ``current_step < start_step``.

    ``kinds`` restricts the schedule to groups whose ``"optimizer_kind"`` is listed (e.g.
    ``("muon",)`` to delay Muon's momentum only); by default every group is scheduled.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        start_step: int,
        kinds: Iterable[str] | None = None,
    ) -> None:
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"DelayedMomentum start_step must be an int >= 0, got {start_step!r}.")
        self.optimizer = optimizer
        self.start_step = start_step
        self.kinds = None if kinds is None else tuple(kinds)
        if not self.groups:
            raise ValueError(
                f"DelayedMomentum found no param group of kinds {self.kinds}; the optimizer has "
                f"{[g.get('optimizer_kind') for g in optimizer.param_groups]}."
            )
        self.defaults = [get_momentum(g) for g in self.groups]
        self.current_step = 0
        self._apply()

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The scheduled groups, looked up afresh (load_state_dict replaces group dicts)."""
        return [
            g
            for g in self.optimizer.param_groups
            if self.kinds is None or g.get("optimizer_kind") in self.kinds
        ]

    def momentum_at(self, step: int, default: float) -> float:
        """The schedule itself: 0 before ``start_step``, ``default`` from then on."""
        return 0.0 if step < self.start_step else default

    def _apply(self) -> None:
        groups = self.groups
        # Groups added after construction (add_param_group) keep their own momentum as default.
        self.defaults += [get_momentum(g) for g in groups[len(self.defaults) :]]
        for group, default in zip(groups, self.defaults, strict=False):
            set_momentum(group, self.momentum_at(self.current_step, default))

    def step(self) -> None:
        """Advance the counter by one update and set the momentum for the next update."""
        self.current_step += 1
        self._apply()

    def get_last_momentum(self) -> list[float]:
        """The momentum each scheduled group uses now (for logging)."""
        return [get_momentum(g) for g in self.groups]

    def state_dict(self) -> dict[str, Any]:
        """The counter and the captured defaults."""
        return {
            "current_step": self.current_step,
            "start_step": self.start_step,
            "defaults": list(self.defaults),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counter and defaults, then re-apply the momentum they imply."""
        if len(state_dict["defaults"]) != len(self.groups):
            raise ValueError(
                f"DelayedMomentum state has {len(state_dict['defaults'])} groups, this schedule "
                f"has {len(self.groups)}; build it over the same optimizer."
            )
        self.current_step = int(state_dict["current_step"])
        self.start_step = int(state_dict["start_step"])
        self.defaults = [float(d) for d in state_dict["defaults"]]
        self._apply()
