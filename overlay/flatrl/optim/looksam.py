"""LookSAM (Liu et al., CVPR 2022, arXiv 2203.02714): SAM's extra pass only every k-th update.

SAM's gradient ``g_s`` at ``w + e`` differs from the plain gradient ``g`` at ``w`` mostly by a
component orthogonal to ``g``, and that component changes slowly. LookSAM therefore takes a
full SAM step every ``k``-th update (the first included) and keeps

    g_v = g_s - (<g, g_s> / ||g||^2) g

from it. On the ``k - 1`` updates in between it takes no second pass and steps with

    g + alpha * ||g|| / ||g_v|| * g_v

i.e. the plain gradient plus the stored direction, rescaled to ``alpha`` times the plain
gradient's norm. ``g_v`` and the norms are taken over the in-scope parameters as one vector
(the paper's formula; out-of-scope parameters step with their plain gradient).

The rho -> 0 law, and where LookSAM breaks it: the reuse term has the size ``alpha * ||g||``
whatever the radius, so as rho -> 0 LookSAM does *not* tend to the base optimizer (the paper's
rule is discontinuous at 0). ``rho = 0`` keeps its one meaning in flatrl, the control arm equal
to the base optimizer: at rho = 0 no ``g_v`` is kept (it would be rounding noise rescaled to
``alpha * ||g||``), so every update is the base optimizer's exactly.

Sharpness (``last_sharpness``) is measured on the SAM steps only; between them it is None.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flatrl.optim.sam import SAM, Closure
from flatrl.optim.sam_config import SAMConfig

__all__ = ["LookSAM"]


def _norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


class LookSAM(SAM):
    """LookSAM around a base optimizer: :class:`SAM` plus the reuse rule between SAM steps.

    Args:
        alpha: weight of the reused orthogonal component (>= 0; 0 gives SAM every k-th
            update with plain steps between, i.e. ``variant="sam"``).
        every_k: LookSAM's ``k``: a SAM step on every k-th update (``k = 1``: SAM itself).
        *args, **kwargs: as :class:`SAM`.
    """

    variant = "looksam"

    def __init__(self, *args: Any, alpha: float = 0.7, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.config.replace(variant=self.variant, looksam_alpha=alpha)
        self.alpha = self.config.looksam_alpha
        #: The last SAM step's orthogonal component per in-scope parameter, and its norm.
        self._gv: dict[Tensor, Tensor] = {}
        self._gv_norm: Tensor | None = None
        self._plain_grads: list[tuple[Tensor, Tensor]] | None = None

    @classmethod
    def _variant_options(cls, config: SAMConfig) -> dict[str, Any]:
        return {"alpha": config.looksam_alpha}

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, loss: Tensor | float | None = None
    ) -> Tensor | float | None:
        """A SAM step every k-th call (returns ``L(w + e)``), a reuse step otherwise (None)."""
        self._plain_grads = None
        if not self.is_sam_step:
            self._step_calls += 1
            self._record(None, None)
            self._add_reused_direction()
            self._base_step()
            return None
        if closure is not None:
            # g at w, kept for g_v; SAM's step checks the rest (and raises without a closure).
            self._plain_grads = [(p, p.grad.clone()) for bucket in self._in_scope() for p in bucket]
        return super().step(closure, loss)

    def _in_scope(self) -> list[list[Tensor]]:
        return self._scope.buckets(self.param_groups)

    def _base_step(self) -> None:
        if self._plain_grads is not None:
            self._keep_orthogonal_component(self._plain_grads)
            self._plain_grads = None
        super()._base_step()

    def _keep_orthogonal_component(self, plain: list[tuple[Tensor, Tensor]]) -> None:
        """``g_v = g_s - (<g, g_s> / ||g||^2) g`` from the grads at ``w + e`` now in ``.grad``."""
        if not plain or self.rho == 0.0:
            self._gv, self._gv_norm = {}, None
            return
        params = [p for p, _ in plain]
        g = [gp for _, gp in plain]
        g_s = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dot = torch.stack([prod.sum() for prod in torch._foreach_mul(g, g_s)]).sum()
        gg = _norm(g) ** 2
        coef = torch.where(gg > 0, dot / gg.clamp_min(torch.finfo(gg.dtype).tiny), 0.0)
        gv = torch._foreach_sub(g_s, torch._foreach_mul(g, coef))
        self._gv = dict(zip(params, gv, strict=True))
        self._gv_norm = _norm(gv)

    def _add_reused_direction(self) -> None:
        """``.grad += alpha * ||g|| / ||g_v|| * g_v`` on the in-scope parameters."""
        if self._gv_norm is None or not self._gv or self.alpha == 0.0:
            return
        params = [p for bucket in self._in_scope() for p in bucket if p in self._gv]
        if not params:
            return
        grads = [p.grad for p in params]
        gv = [self._gv[p] for p in params]
        g_norm = _norm(grads)
        if g_norm.device.type == "cpu":  # no sync to avoid on the CPU: plain floats, one pass
            gv_norm = float(self._gv_norm)
            if gv_norm > 0:
                torch._foreach_add_(grads, gv, alpha=self.alpha * float(g_norm) / gv_norm)
            return
        scale = torch.where(
            self._gv_norm > 0,
            self.alpha * g_norm / self._gv_norm.clamp_min(torch.finfo(g_norm.dtype).tiny),
            torch.zeros_like(g_norm),
        )
        torch._foreach_add_(grads, torch._foreach_mul(gv, scale))

    # --- exact resume: g_v is part of the state ---------------------------------------------
    def _ordered_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _variant_state(self) -> dict[str, Any]:
        params = self._ordered_params()
        return {
            "looksam_alpha": self.alpha,
            "gv": {i: self._gv[p].clone() for i, p in enumerate(params) if p in self._gv},
            "gv_norm": None if self._gv_norm is None else self._gv_norm.clone(),
        }

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        params = self._ordered_params()
        gv = state.get("gv") or {}
        self._gv = {params[int(i)]: t.to(params[int(i)]) for i, t in gv.items()}
        norm = state.get("gv_norm")
        self._gv_norm = None if norm is None else norm.to(params[0].device)
