"""From an optimizer config block to the optimizer, its momentum schedule and optional SAM.

All the optimizer logic lives in :mod:`flatrl.optim`; this module only translates the agent's
config keys (case, betas, muon.*, *_momentum_schedule, sam.*) into calls to it, using the
networks' own first/last-layer names so the Muon toggles mean what their names say. SAM is built
with :meth:`SAM.from_config` from the one :class:`flatrl.optim.SAMConfig`, and stepped by
:func:`flatrl.optim.sam_step` in the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flatrl.agents.sac.settings import OptimizerSettings, ScheduleSettings
from flatrl.optim import SAM, DelayedMomentum, build_optimizer, get_momentum


@dataclass
class NetworkOptimizer:
    """What trains one network: ``optimizer`` is what to step (SAM-wrapped if SAM is on)."""

    optimizer: torch.optim.Optimizer
    base: torch.optim.Optimizer
    schedule: DelayedMomentum | None

    @property
    def uses_sam(self) -> bool:
        return isinstance(self.optimizer, SAM)

    def after_update(self) -> None:
        """Advance the momentum schedule by one update (no-op when disabled)."""
        if self.schedule is not None:
            self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["schedule"] is None) != (self.schedule is None):
            raise ValueError(
                "the checkpoint's momentum schedule setting differs from the config's; resume "
                "with the same training.*_momentum_schedule.enabled."
            )
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])

    def hyperparameters(self) -> dict[str, float]:
        """Learning rate and momentum of each optimizer kind, for logging."""
        out: dict[str, float] = {}
        for group in self.base.param_groups:
            kind = group.get("optimizer_kind", "opt")
            out[f"lr/{kind}"] = float(group["lr"])
            out[f"momentum/{kind}"] = get_momentum(group)
        return out


def build_network_optimizer(
    module: nn.Module,
    cfg: OptimizerSettings,
    schedule: ScheduleSettings,
    first_layer_names: list[str],
    last_layer_names: list[str],
    key: str,
    grad_clip: float | None = None,
) -> NetworkOptimizer:
    """Optimizer for ``module`` per its config block ``key`` (case, Muon split, schedule, SAM).

    With SAM, ``grad_clip`` becomes SAM's ``clip_grad_norm``: the clipping must act on the
    gradient the base step applies (taken at the perturbed weights), not on the first pass's.
    """
    base = build_optimizer(
        module,
        case=cfg.case,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        momentum=cfg.muon.momentum,
        nesterov=cfg.muon.nesterov,
        apply_first_layer=cfg.muon.apply_first_layer,
        apply_last_layer=cfg.muon.apply_last_layer,
        first_layer_names=first_layer_names,
        last_layer_names=last_layer_names,
        muon_lr=cfg.muon.lr,
        adjust_lr_fn=cfg.muon.adjust_lr_fn,
        fallback=cfg.fallback,
    )
    sched = DelayedMomentum(base, start_step=schedule.start_step) if schedule.enabled else None
    optimizer: torch.optim.Optimizer = base
    if cfg.sam.enabled:
        optimizer = SAM.from_config(base, cfg.sam.config(key, clip_grad_norm=grad_clip))
    return NetworkOptimizer(optimizer=optimizer, base=base, schedule=sched)
