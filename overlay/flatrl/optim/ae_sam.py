"""An AE-SAM schedule (Jiang et al., ICLR 2023, arXiv 2304.14647): SAM only where it is sharp.

AE-SAM keeps exponential moving statistics of the squared norm of the plain (first-pass)
gradient, ``n_t = ||g_t||^2`` over the in-scope parameters:

    mu_t  = delta * mu_{t-1}  + (1 - delta) * n_t
    var_t = delta * var_{t-1} + (1 - delta) * (n_t - mu_t)^2

(``mu_0 = var_0 = 0``) and takes a SAM step when ``n_t >= mu_t + c * sqrt(var_t)``, a plain
base step (no second pass) otherwise. A large gradient norm relative to its recent history is
the paper's signal of a sharp region. The paper moves ``c`` linearly over training to hold the
fraction of SAM steps; here ``c`` is a constant (``SAMConfig.aesam_c``), and
:attr:`AESAM.sam_fraction` reports the fraction actually taken, so the cost is visible.

Deciding needs ``||g||`` on the host: one device sync per update.
Sharpness (``last_sharpness``) is measured on the SAM steps only; on plain steps it is None.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flatrl.optim.sam import SAM, Closure
from flatrl.optim.sam_config import SAMConfig

__all__ = ["AESAM"]


class AESAM(SAM):
    """SAM on the updates whose squared gradient norm is high for recent history.

    Args:
        c: threshold in EMA standard deviations above the EMA mean (lower: more SAM steps).
        decay: the EMA decay ``delta`` in [0, 1).
        *args, **kwargs: as :class:`SAM` (``every_k`` must stay 1).
    """

    variant = "aesam"

    def __init__(self, *args: Any, c: float = 0.0, decay: float = 0.9, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.config.replace(variant=self.variant, aesam_c=c, aesam_decay=decay)
        self.c, self.decay = self.config.aesam_c, self.config.aesam_decay
        self._mean = 0.0
        self._var = 0.0
        #: Updates seen and SAM steps taken (for :attr:`sam_fraction`).
        self.updates = 0
        self.sam_steps = 0
        #: Whether the last update was a SAM step.
        self.last_was_sam = False

    @classmethod
    def _variant_options(cls, config: SAMConfig) -> dict[str, Any]:
        return {"c": config.aesam_c, "decay": config.aesam_decay}

    @property
    def sam_fraction(self) -> float | None:
        """Fraction of updates that were SAM steps so far (None before the first)."""
        return self.sam_steps / self.updates if self.updates else None

    def decide(self, squared_norm: float) -> bool:
        """Update the statistics with ``||g||^2`` and say whether this update is a SAM step."""
        d = self.decay
        self._mean = d * self._mean + (1.0 - d) * squared_norm
        self._var = d * self._var + (1.0 - d) * (squared_norm - self._mean) ** 2
        return squared_norm >= self._mean + self.c * math.sqrt(self._var)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, loss: Tensor | float | None = None
    ) -> Tensor | float | None:
        """A SAM step if ``||g||^2`` is high (returns ``L(w + e)``), else a plain step (None)."""
        grads = [p.grad for bucket in self._scope.buckets(self.param_groups) for p in bucket]
        if not grads:
            squared = 0.0
        else:
            norms = torch._foreach_norm(grads)
            squared = float(torch.stack([n.double().cpu() for n in norms]).square().sum())
        before = (self._mean, self._var, self.updates, self.sam_steps)
        take_sam = self.decide(squared)
        self.updates += 1
        self.last_was_sam = take_sam
        if take_sam:
            self.sam_steps += 1
            try:
                return super().step(closure, loss)
            except BaseException:
                # A refused or failed step (no closure, an error in it) is not counted.
                self._mean, self._var, self.updates, self.sam_steps = before
                raise
        self._step_calls += 1
        self._record(None, None)
        self._base_step()
        return None

    def _variant_state(self) -> dict[str, Any]:
        return {
            "aesam_c": self.c,
            "aesam_decay": self.decay,
            "aesam_mean": self._mean,
            "aesam_var": self._var,
            "aesam_updates": self.updates,
            "aesam_sam_steps": self.sam_steps,
        }

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        self._mean = float(state.get("aesam_mean", 0.0))
        self._var = float(state.get("aesam_var", 0.0))
        self.updates = int(state.get("aesam_updates", 0))
        self.sam_steps = int(state.get("aesam_sam_steps", 0))
