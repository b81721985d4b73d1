"""Sharpness-Aware Minimization as a wrapper around any torch optimizer.

SAM (Foret et al., 2021) takes two gradients per update: one at the current weights ``w`` to
find the ascent direction ``e = rho * g / ||g||``, and one at ``w + e`` that the base optimizer
then applies at ``w``. ASAM (Kwon et al., 2021; ``adaptive=True``) scales the perturbation
element-wise by ``|w|`` so that it is invariant to per-weight rescaling.

On top of the well-known ``sam`` repository's API (``first_step``/``second_step``/``step``) this
wrapper adds what RL training loops need:

* ``scope``: perturb only a subset of parameters (e.g. a world model's dynamics). In-scope
  parameters get the gradient taken at the perturbed point, every other parameter keeps the
  gradient of the unperturbed pass, and a single base step updates them all. This is the
  "where to apply SAM" ablation. The out-of-scope gradients of the second pass are never used,
  so by default (``freeze_out_of_scope``) :meth:`step` does not compute them: during the
  closure those parameters have ``requires_grad`` off, autograd skips their weight gradients and
  the backward pass of whatever only they feed (an encoder upstream of perturbed dynamics).
  Neither the loss nor any gradient that is used changes.
* ``every_k``: a full SAM step only every k-th update, plain base steps in between (the closure
  is not called then), so the cost is about ``1 + 1/k`` forward-backward passes.
* ``clip_grad_norm``: clipping applied to the gradient the base step uses, after the second
  pass; the perturbation direction is computed from the unclipped gradient.
* ``last_sharpness``: ``L(w + e) - L(w)`` for one-line logging.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from flatrl.optim.delegating import DelegatingOptimizer
from flatrl.optim.sam_config import SAMConfig
from flatrl.optim.sam_parts import (
    CLOSURE_HINT,
    SAMReadings,
    Scope,
    WeightBackup,
    distributed_run,
    gradients_off,
    make_base_optimizer,
)

Closure = Callable[[], Tensor | float | None]


class SAM(SAMReadings, DelegatingOptimizer):
    """Sharpness-Aware Minimization around a base optimizer.

    Args:
        params: the parameters (or param-group dicts) to optimize, in which case ``base`` is the
            base optimizer class and ``base_kwargs`` its keyword arguments; or an existing
            optimizer instance, which is wrapped as is (its param groups, learning rates and
            state are kept, e.g. TD-MPC2's multi-group Adam).
        base: the base optimizer class (e.g. ``torch.optim.Adam``); only with parameters.
        rho: radius of the perturbation ball, >= 0 (0: a zero-radius step equal to the base
            optimizer's, see :mod:`flatrl.optim.sam_config`).
        adaptive: ASAM; perturbation ``rho * w**2 * g / ||w * g||``.
        every_k: run a SAM step on every k-th call of :meth:`step` (the first call included),
            plain base steps otherwise.
        scope: parameters (or a module) to perturb; ``None`` perturbs every parameter. Each
            must be one of the optimizer's parameters.
        clip_grad_norm: if set, the total gradient norm over all parameters is clipped to this
            value right before every base step.
        eps: added to the gradient norm in the denominator of the perturbation scale.
        freeze_out_of_scope: with a ``scope``, run the closure of :meth:`step` with the
            out-of-scope parameters' ``requires_grad`` off (restored afterwards, also on an
            error; user-frozen parameters stay frozen), so that the second pass computes only
            the gradients the step uses. Skipped automatically while a ``torch.distributed``
            process group is up: DDP's reducer expects a gradient for every parameter it wraps
            in every backward pass. Set False if something in the closure reads those
            gradients (a hook; the base step itself uses the first pass's). A ``torch.compile``d
            loss is compiled once more for the second pass (its guards see the flags).
        **base_kwargs: keyword arguments for ``base`` (e.g. ``lr=1e-3``).

    Notes:
        ``param_groups`` *is* the base optimizer's list and ``state`` its state, so LR
        schedulers, momentum schedules and code that inspects the optimizer see one truth.
        Groups added later with :meth:`add_param_group` go to the base optimizer and are out of
        ``scope`` when a scope is set. The every_k counter and :attr:`last_sharpness` are kept
        by :meth:`step`; calling :meth:`first_step`/:meth:`second_step` by hand always makes a
        SAM step. SAM keeps one persistent copy of the in-scope weights to return to ``w``.
    """

    _wraps_one = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | torch.optim.Optimizer,
        base: type[torch.optim.Optimizer] | None = None,
        rho: float = 0.05,
        adaptive: bool = False,
        every_k: int = 1,
        scope: Iterable[Tensor] | nn.Module | None = None,
        clip_grad_norm: float | None = None,
        eps: float = 1e-12,
        freeze_out_of_scope: bool = True,
        **base_kwargs: Any,
    ) -> None:
        config = SAMConfig(
            rho=rho, adaptive=adaptive, every_k=every_k, clip_grad_norm=clip_grad_norm, eps=eps
        )
        self.config = config
        self.rho, self.adaptive, self.every_k = config.rho, config.adaptive, config.every_k
        self.clip_grad_norm, self.eps = config.clip_grad_norm, config.eps
        if not isinstance(freeze_out_of_scope, bool):
            raise TypeError(
                f"SAM freeze_out_of_scope must be True or False, got {freeze_out_of_scope!r}."
            )
        #: Whether :meth:`step` computes no out-of-scope gradients in the second pass.
        self.freeze_out_of_scope = freeze_out_of_scope
        self.base_optimizer = make_base_optimizer(params, base, base_kwargs)
        super().__init__(dict(self.base_optimizer.defaults))
        self._scope = Scope(scope, self.param_groups)
        self._w = WeightBackup()
        self._step_calls = 0

    #: The :class:`SAMConfig` variant this class implements (subclasses override it).
    variant = "sam"

    @classmethod
    def from_config(
        cls,
        optimizer: torch.optim.Optimizer,
        config: SAMConfig,
        scope: Iterable[Tensor] | nn.Module | None = None,
        freeze_out_of_scope: bool = True,
    ) -> SAM:
        """Wrap ``optimizer`` with the settings of ``config`` (its ``scope`` name is resolved to
        parameters by the caller and passed as ``scope``).

        ``SAM.from_config`` builds the class of ``config.variant`` (LookSAM, MomentumSAM,
        AESAM: subclasses of SAM, so code that checks ``isinstance(opt, SAM)`` and steps through
        :func:`flatrl.optim.sam_step` runs every variant unchanged).
        """
        target = variant_class(config.variant) if cls is SAM else cls
        if target.variant != config.variant:
            raise ValueError(
                f"{target.__name__}.from_config got a config with variant={config.variant!r}; "
                f"use SAM.from_config to build the class of any variant."
            )
        return target(
            optimizer,
            rho=config.rho,
            adaptive=config.adaptive,
            every_k=config.every_k,
            scope=scope,
            clip_grad_norm=config.clip_grad_norm,
            eps=config.eps,
            freeze_out_of_scope=freeze_out_of_scope,
            **target._variant_options(config),
        )

    @classmethod
    def _variant_options(cls, config: SAMConfig) -> dict[str, Any]:
        """The constructor keywords a variant takes from ``config`` (SAM itself: none)."""
        return {}

    def _variant_state(self) -> dict[str, Any]:
        """What a variant adds to ``state_dict()["sam"]`` for an exact resume."""
        return {}

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`_variant_state` saved (absent keys: a fresh variant state)."""

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the in-scope weights to ``w + e`` using the gradients currently in ``.grad``.

        Gradients of out-of-scope parameters are set aside so that :meth:`second_step` can give
        them back untouched: they must stay those of the unperturbed point. Exception-safe: if
        anything fails on the way (allocating a backup, a kernel, an interrupt), every weight
        already moved is put back to ``w`` and every gradient set aside is given back before the
        exception propagates, so a failed step never leaves the model perturbed.
        """
        if self._w.active:
            raise RuntimeError("SAM.first_step() called twice; call second_step() in between.")
        params = [p for group in self.param_groups for p in group["params"]]
        if all(p.grad is None for p in params):
            raise ValueError(
                "SAM found no gradients: call loss.backward() on the unperturbed loss before "
                "sam.step(closure) / sam.first_step()."
            )
        buckets = self._scope.buckets(self.param_groups)
        grad_norm = self._last_grad_norm = self._grad_norm(buckets)
        with self._w.restored_on_error():
            self._w.set_aside_grads(p for p in params if p not in self._scope)
            if grad_norm is not None:
                scale = self._scale(grad_norm)
                for bucket in buckets:
                    self._w.save(bucket)
                    e = torch._foreach_mul([p.grad for p in bucket], scale.to(bucket[0].device))
                    if self.adaptive:
                        torch._foreach_mul_(e, torch._foreach_mul(bucket, bucket))
                    torch._foreach_add_(bucket, e)  # climb to w + e
            self._w.active = True
            if zero_grad:
                self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w`` and take the base step with the gradients taken at ``w + e``."""
        if not self._w.active:
            raise RuntimeError("SAM.second_step() called without first_step() before it.")
        self._w.restore()
        self._base_step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, loss: Tensor | float | None = None
    ) -> Tensor | float | None:
        """One update. Returns ``L(w + e)`` (detached) on a SAM step, None on a plain step.

        Before calling, ``.grad`` must hold the gradient of the unperturbed loss ``L(w)``;
        ``closure`` must zero the gradients, recompute the loss on the same batch, call
        ``backward()`` and return the loss. Pass ``loss=L(w)`` to get :attr:`last_sharpness`.
        """
        if not self.is_sam_step:
            self._step_calls += 1
            self._record(None, None)
            self._base_step()
            return None
        if closure is None:
            raise ValueError(
                "SAM.step() needs a closure on a SAM step (it recomputes the loss at the "
                f"perturbed weights). Pass one, e.g.:\n{CLOSURE_HINT}"
            )
        self.first_step(zero_grad=True)
        with self._w.restored_on_error(), torch.enable_grad(), self.out_of_scope_frozen():
            perturbed = closure()
        self.second_step()
        self._step_calls += 1
        self._record(loss, perturbed)
        return self._last_perturbed

    def out_of_scope_frozen(self) -> contextlib.AbstractContextManager[object]:
        """The second pass's gradient switch: out-of-scope parameters take no gradient within.

        :meth:`step` wraps its closure in it; with :meth:`first_step`/:meth:`second_step` by
        hand, wrap the second forward-backward pass. A no-op without a scope, with
        ``freeze_out_of_scope=False``, in a distributed run, or when no in-scope parameter had
        a gradient at the last first step (the loss would then take no gradient at all).
        """
        if (
            not self.freeze_out_of_scope
            or not self._scope.restricted
            or self._last_grad_norm is None
            or distributed_run()
        ):
            return contextlib.nullcontext()
        return gradients_off(self._scope.outside(self.param_groups))

    @property
    def is_sam_step(self) -> bool:
        """Whether the next :meth:`step` call is a SAM step (every_k bookkeeping)."""
        return self._step_calls % self.every_k == 0

    # --- the pieces of the algorithm ----------------------------------------------------------
    def _grad_norm(self, buckets: list[list[Tensor]]) -> Tensor | None:
        """``||g||`` (ASAM: ``||w * g||``) over the in-scope gradients; None if there are none."""
        norms: list[Tensor] = []
        for params in buckets:
            grads = [p.grad for p in params]
            if self.adaptive:
                grads = torch._foreach_mul(grads, torch._foreach_abs(params))
            norms.extend(torch._foreach_norm(grads))
        if not norms:
            return None
        dtype = functools.reduce(torch.promote_types, [n.dtype for n in norms], torch.float32)
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]))

    def _scale(self, grad_norm: Tensor) -> Tensor:
        """``rho / (||g|| + eps)``; 0 for a zero or non-finite norm (no perturbation, no NaN),
        decided on the device so that no host sync is needed on every step."""
        return torch.where(
            torch.isfinite(grad_norm) & (grad_norm > 0),
            self.rho / (grad_norm + self.eps).clamp_min(torch.finfo(grad_norm.dtype).tiny),
            torch.zeros_like(grad_norm),
        )

    def _base_step(self) -> None:
        if self.clip_grad_norm is not None:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if params:
                nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.base_optimizer.step()

    # --- what the base optimizer holds, and SAM's own counter ---------------------------------
    def _wrapped(self) -> list[torch.optim.Optimizer]:
        return [self.base_optimizer]

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict plus SAM's every_k counter."""
        return {
            "base": self.base_optimizer.state_dict(),
            "sam": {
                "step_calls": self._step_calls,
                "rho": self.rho,
                "every_k": self.every_k,
                "variant": self.variant,
                **self._variant_state(),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load a dict from :meth:`state_dict`, or a plain state dict of the base optimizer."""
        if "base" in state_dict and "sam" in state_dict:
            self.base_optimizer.load_state_dict(state_dict["base"])
            self._step_calls = int(state_dict["sam"]["step_calls"])
            self._load_variant_state(state_dict["sam"])
        elif "state" in state_dict and "param_groups" in state_dict:
            self.base_optimizer.load_state_dict(state_dict)
        else:
            raise ValueError(
                "SAM.load_state_dict expects a dict from SAM.state_dict() (keys 'base' and "
                "'sam') or a base optimizer's state dict (keys 'state' and 'param_groups')."
            )
        # Optimizer.load_state_dict builds new group dicts: share the base's list again.
        self._sync_groups()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rho={self.rho}, adaptive={self.adaptive}, "
            f"every_k={self.every_k}, "
            f"scoped={self._scope.restricted}, clip_grad_norm={self.clip_grad_norm}, "
            f"freeze_out_of_scope={self.freeze_out_of_scope}, "
            f"base={self.base_optimizer!r})"
        )


_VARIANT_CLASSES = {
    "looksam": ("flatrl.optim.looksam", "LookSAM"),
    "msam": ("flatrl.optim.msam", "MomentumSAM"),
    "aesam": ("flatrl.optim.ae_sam", "AESAM"),
}


def variant_class(variant: str) -> type[SAM]:
    """The optimizer class of a :class:`SAMConfig` variant (imported on first use)."""
    if variant == "sam":
        return SAM
    import importlib

    module, name = _VARIANT_CLASSES[variant]
    return getattr(importlib.import_module(module), name)
