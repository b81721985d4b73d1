"""Momentum-SAM (Becker et al., 2024, arXiv 2401.12033): SAM's perturbation without its pass.

MSAM perturbs along the optimizer's momentum instead of the current gradient, which it already
has: ``w~ = w - rho * m / ||m||`` (``m``: Adam's ``exp_avg``, SGD's or Muon's
``momentum_buffer``; the paper's sign: against the accumulated gradient). The gradient the base
step applies at ``w`` is taken at ``w~``. That costs no extra pass only if the caller's ordinary
forward/backward *is* the one at ``w~``, so MomentumSAM keeps the parameters perturbed
*between* updates: :meth:`MomentumSAM.step` puts ``w`` back (an exact copy, not a subtraction),
takes the base step, and applies the next perturbation from the updated momentum.

Whatever else reads the parameters between updates (evaluation, acting, target-network
updates, checkpoints meant for evaluation) must see ``w``: wrap it in
``with optimizer.unperturbed():`` (or :func:`flatrl.optim.unperturbed`, a no-op for every other
optimizer, so a training loop can use it unconditionally). On the first update there is no
momentum yet: it is a plain step at ``w``.

Sharpness: MSAM has no pass at ``w``, so it measures ``L(w~)`` only
(:attr:`~flatrl.optim.SAM.last_perturbed_loss`, the loss passed to ``step``);
``last_sharpness`` stays None, never a made-up 0.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from flatrl.optim.sam import SAM, Closure

__all__ = ["MomentumSAM", "unperturbed"]

MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")


class MomentumSAM(SAM):
    """Momentum-SAM around a base optimizer with momentum (Adam, AdamW, SGD with momentum,
    Muon, a CompositeOptimizer of them). Arguments as :class:`SAM` (``every_k = 1``, no ASAM).
    """

    variant = "msam"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.config.replace(variant=self.variant)
        defaults = self.base_optimizer.defaults
        if "momentum" in defaults and not defaults["momentum"] and "betas" not in defaults:
            raise ValueError(
                f"Momentum-SAM perturbs along the optimizer's momentum, but "
                f"{type(self.base_optimizer).__name__} has momentum=0; give it momentum "
                "(e.g. SGD(momentum=0.9)) or use Adam, or choose variant sam/looksam/aesam."
            )

    @property
    def perturbed(self) -> bool:
        """Whether the parameters stand at ``w~`` now (between updates)."""
        return self._w.active

    def first_step(self, zero_grad: bool = False) -> None:
        raise RuntimeError(
            "MomentumSAM takes no second pass (the perturbation comes from the momentum): call "
            "step() after the backward pass instead of first_step()/second_step()."
        )

    second_step = first_step  # type: ignore[assignment]

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, loss: Tensor | float | None = None
    ) -> Tensor | float | None:
        """Back to ``w``, base step with the gradient taken at ``w~``, perturb for the next.

        ``closure`` is never called. Returns None (no perturbed pass of its own was taken);
        :attr:`last_perturbed_loss` is ``loss`` when this update's pass was at ``w~``.
        """
        was_perturbed = self._w.active
        if was_perturbed:
            self._w.restore()
        self._base_step()
        self._step_calls += 1
        self._record(None, loss if was_perturbed else None)
        self._perturb()
        return None

    @contextlib.contextmanager
    def unperturbed(self) -> Iterator[None]:
        """Within the block the parameters are ``w``; on exit ``w~`` again (bit for bit, unless
        the block changed ``w``: then from the new ``w``)."""
        if not self._w.active:
            yield
            return
        self._w.restore()
        try:
            yield
        finally:
            if not self._w.active:
                self._perturb()

    def _momenta(self) -> dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]]:
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        state = self.state
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self._scope:
                    continue
                entry = state.get(p) or {}
                m = next((entry[k] for k in MOMENTUM_KEYS if entry.get(k) is not None), None)
                if m is None:
                    continue
                params, moms = buckets.setdefault((p.device, p.dtype), ([], []))
                params.append(p)
                moms.append(m)
        return buckets

    @torch.no_grad()
    def _perturb(self) -> None:
        """``w~ = w - rho * m / ||m||`` over the in-scope parameters that have a momentum."""
        buckets = list(self._momenta().values())
        if not buckets:
            return
        norms = [n for _, moms in buckets for n in torch._foreach_norm(moms)]
        device = norms[0].device
        dtype = functools.reduce(torch.promote_types, [n.dtype for n in norms], torch.float32)
        norm = torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]))
        # On the CPU reading the norm costs nothing and saves a pass (no product tensors) and the
        # small-tensor ops of the scale; elsewhere it would be a device sync on every update, so
        # the scale and the product stay on the device.
        if norm.device.type == "cpu":
            n = float(norm)
            ok = math.isfinite(n) and n > 0
            alpha: float | None = -self.rho / (n + self.eps) if ok else 0.0
        else:
            alpha, scale = None, -self._scale(norm)
        with self._w.restored_on_error():
            for params, moms in buckets:
                self._w.save(params)
                if alpha is not None:
                    torch._foreach_add_(params, moms, alpha=alpha)
                else:
                    torch._foreach_add_(
                        params, torch._foreach_mul(moms, scale.to(params[0].device))
                    )
            self._w.active = True

    # --- exact resume: the unperturbed weights are part of the state -------------------------
    def _ordered_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _variant_state(self) -> dict[str, Any]:
        if not self._w.active:
            return {"msam_w": None}
        params = self._ordered_params()
        with self.unperturbed():
            w = {i: p.detach().clone() for i, p in enumerate(params) if p in self._scope}
        return {"msam_w": w}

    @torch.no_grad()
    def _load_variant_state(self, state: dict[str, Any]) -> None:
        # Whatever the parameters hold now, the state's w is the truth; the perturbation is
        # recomputed from the loaded momentum, so it equals the saved run's bit for bit.
        self._w.forget()
        w = state.get("msam_w")
        if w is None:
            return
        params = self._ordered_params()
        for i, value in w.items():
            params[int(i)].copy_(value)
        self._perturb()


@contextlib.contextmanager
def unperturbed(*optimizers: torch.optim.Optimizer) -> Iterator[None]:
    """Parameters at ``w`` within the block for every MomentumSAM among ``optimizers``.

    A no-op for any other optimizer, so a training loop can wrap evaluation, acting and
    target-network updates in it whatever optimizer the run uses.
    """
    with contextlib.ExitStack() as stack:
        for opt in optimizers:
            if isinstance(opt, MomentumSAM):
                stack.enter_context(opt.unperturbed())
        yield
