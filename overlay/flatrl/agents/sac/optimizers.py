"""From an optimizer config block to the optimizer, its momentum schedule and optional SAM.

All the optimizer logic lives in :mod:`flatrl.optim`; this module only translates the seed's
config keys (case, betas, muon.*, *_momentum_schedule, sam.rho) into calls to it, using the
networks' own first/last-layer names so the Muon toggles mean what the seed says.
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

    def step(self, closure: Any = None, loss: torch.Tensor | None = None) -> Any:
        """Step the optimizer (SAM needs ``closure``; ``loss`` feeds its sharpness log)."""
        if self.uses_sam:
            return self.optimizer.step(closure, loss=loss)
        return self.optimizer.step()

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
) -> NetworkOptimizer:
    """Optimizer for ``module`` per its config block (case, Muon split, schedule, SAM)."""
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
        optimizer = SAM(base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, every_k=cfg.sam.every_k)
    return NetworkOptimizer(optimizer=optimizer, base=base, schedule=sched)
