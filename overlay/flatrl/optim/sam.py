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
  "where to apply SAM" ablation.
* ``every_k``: a full SAM step only every k-th update, plain base steps in between (the closure
  is not called then), so the cost is about ``1 + 1/k`` forward-backward passes.
* ``clip_grad_norm``: clipping applied to the gradient the base step uses, after the second
  pass; the perturbation direction is computed from the unclipped gradient.
* ``last_sharpness``: ``L(w + e) - L(w)`` for one-line logging.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from flatrl.optim.sam_config import SAMConfig

Closure = Callable[[], Tensor | float | None]

_CLOSURE_HINT = (
    "def closure():\n"
    "    sam.zero_grad()\n"
    "    loss = compute_loss(batch)  # the SAME batch as the first pass\n"
    "    loss.backward()\n"
    "    return loss\n"
    "sam.step(closure, loss=first_pass_loss)"
)


def _as_float(value: Tensor | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return float(value.detach().double().mean().item())
    return float(value)


def _as_detached(value: Tensor | float | None) -> Tensor | float | None:
    if isinstance(value, Tensor):
        return value.detach()
    return value


class SAM(torch.optim.Optimizer):
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
        **base_kwargs: keyword arguments for ``base`` (e.g. ``lr=1e-3``).

    Notes:
        ``param_groups`` *is* the base optimizer's list and ``state`` its state, so LR
        schedulers, momentum schedules and code that inspects the optimizer see one truth.
        Groups added later with :meth:`add_param_group` go to the base optimizer and are out of
        ``scope`` when a scope is set. The every_k counter and :attr:`last_sharpness` are kept
        by :meth:`step`; calling :meth:`first_step`/:meth:`second_step` by hand always makes a
        SAM step. SAM keeps one persistent copy of the in-scope weights to return to ``w``.
    """

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
        **base_kwargs: Any,
    ) -> None:
        config = SAMConfig(
            rho=rho, adaptive=adaptive, every_k=every_k, clip_grad_norm=clip_grad_norm, eps=eps
        )
        base_optimizer = _make_base_optimizer(params, base, base_kwargs)

        self.base_optimizer = base_optimizer
        self.config = config
        self.rho = config.rho
        self.adaptive = config.adaptive
        self.every_k = config.every_k
        self.clip_grad_norm = config.clip_grad_norm
        self.eps = config.eps

        # Optimizer.__init__ registers the base's group dicts without copying them; we then make
        # ``self.param_groups`` the very same list object, so an LR scheduler attached to either
        # the base or to SAM sees (and changes) the same learning rates.
        self._delegate_add_param_group = False
        super().__init__(base_optimizer.param_groups, dict(base_optimizer.defaults))
        self.param_groups = base_optimizer.param_groups
        self._delegate_add_param_group = True

        self._scope_ids = _scope_ids(scope, self.param_groups)
        self._step_calls = 0
        self._backup: dict[Tensor, Tensor] = {}
        self._moved: list[tuple[list[Tensor], list[Tensor]]] = []
        self._kept_grads: dict[Tensor, Tensor | None] = {}
        self._perturbed = False
        self._last_grad_norm: Tensor | None = None
        self._last_loss: Tensor | float | None = None
        self._last_perturbed: Tensor | float | None = None
        self._initialised = True

    # --- the base optimizer's state is SAM's state -------------------------------------------
    @property
    def state(self) -> Any:  # type: ignore[override]
        """The base optimizer's per-parameter state (SAM keeps its own buffers privately)."""
        return self.base_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        # Optimizer.__init__ assigns an empty state, which must not replace the base's; any
        # later assignment (e.g. d3rlpy's reset_optimizer_states) is the base optimizer's.
        if self.__dict__.get("_initialised", False):
            self.base_optimizer.state = value

    @classmethod
    def from_config(
        cls,
        optimizer: torch.optim.Optimizer,
        config: SAMConfig,
        scope: Iterable[Tensor] | nn.Module | None = None,
    ) -> SAM:
        """Wrap ``optimizer`` with the settings of ``config`` (its ``scope`` name is resolved to
        parameters by the caller and passed as ``scope``)."""
        return cls(
            optimizer,
            rho=config.rho,
            adaptive=config.adaptive,
            every_k=config.every_k,
            scope=scope,
            clip_grad_norm=config.clip_grad_norm,
            eps=config.eps,
        )

    # --- the logging API ----------------------------------------------------------------------
    @property
    def is_sam_step(self) -> bool:
        """Whether the next :meth:`step` call is a SAM step (every_k bookkeeping)."""
        return self._step_calls % self.every_k == 0

    @property
    def last_perturbed_loss(self) -> float | None:
        """``L(w + e)`` returned by the closure on the last step, or None on a plain step."""
        return _as_float(self._last_perturbed)

    @property
    def last_sharpness(self) -> float | None:
        """``L(w + e) - L(w)`` of the last step if ``loss=`` was passed on a SAM step, else None.

        Kept as tensors until read, so logging only when needed avoids a device sync per step.
        """
        if self._last_perturbed is None or self._last_loss is None:
            return None
        return _as_float(self._last_perturbed) - _as_float(self._last_loss)  # type: ignore[operator]

    @property
    def last_grad_norm(self) -> float | None:
        """Norm of the (ASAM-scaled) in-scope gradient at the last first_step, or None.

        ``rho * last_grad_norm`` is the paper's first-order sharpness estimate.
        """
        return _as_float(self._last_grad_norm)

    # --- the sam-repo API -----------------------------------------------------------------------
    def _scoped(self, p: Tensor) -> bool:
        return self._scope_ids is None or id(p) in self._scope_ids

    def _buckets(self) -> list[list[Tensor]]:
        """In-scope params with a gradient, bucketed by (device, dtype) for foreach kernels."""
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and self._scoped(p):
                    buckets.setdefault((p.device, p.dtype), []).append(p)
        return list(buckets.values())

    def _perturbation_norm(self, buckets: list[list[Tensor]]) -> Tensor | None:
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

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the in-scope weights to ``w + e`` using the gradients currently in ``.grad``.

        Gradients of out-of-scope parameters are set aside so that :meth:`second_step` can give
        them back untouched: they must stay those of the unperturbed point. Exception-safe: if
        anything fails on the way (allocating a backup, a kernel, an interrupt), every weight
        already moved is put back to ``w`` and every gradient set aside is given back before the
        exception propagates, so a failed step never leaves the model perturbed.
        """
        if self._perturbed:
            raise RuntimeError("SAM.first_step() called twice; call second_step() in between.")
        all_params = [p for group in self.param_groups for p in group["params"]]
        if all(p.grad is None for p in all_params):
            raise ValueError(
                "SAM found no gradients: call loss.backward() on the unperturbed loss before "
                "sam.step(closure) / sam.first_step()."
            )
        buckets = self._buckets()
        grad_norm = self._perturbation_norm(buckets)
        self._last_grad_norm = grad_norm

        self._kept_grads = {}
        self._moved = []
        try:
            for p in all_params:
                if not self._scoped(p):
                    self._kept_grads[p] = p.grad
                    p.grad = None
            if grad_norm is not None:
                # A zero (or non-finite) norm gives scale 0: no perturbation and no NaN, decided
                # on the device so that no host sync is needed on every step.
                scale = torch.where(
                    torch.isfinite(grad_norm) & (grad_norm > 0),
                    self.rho / (grad_norm + self.eps).clamp_min(torch.finfo(grad_norm.dtype).tiny),
                    torch.zeros_like(grad_norm),
                )
                for params in buckets:
                    backups = [self._backup_buffer(p) for p in params]
                    torch._foreach_copy_(backups, params)
                    # Registered before the weights move, so that a failure from here on
                    # restores this bucket too (copying an unmoved w back onto itself is a no-op).
                    self._moved.append((params, backups))
                    e = torch._foreach_mul([p.grad for p in params], scale.to(params[0].device))
                    if self.adaptive:
                        torch._foreach_mul_(e, torch._foreach_mul(params, params))
                    torch._foreach_add_(params, e)
            self._perturbed = True
            if zero_grad:
                self.zero_grad()
        except BaseException:
            self._restore()
            raise

    def _backup_buffer(self, p: Tensor) -> Tensor:
        """A persistent buffer per parameter for ``w`` (no allocation on every step)."""
        buf = self._backup.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = torch.empty_like(p, memory_format=torch.preserve_format)
            self._backup[p] = buf
        return buf

    @torch.no_grad()
    def _restore(self) -> None:
        """Put back ``w`` and the out-of-scope gradients of the unperturbed pass."""
        for params, backups in self._moved:
            torch._foreach_copy_(params, backups)
        for p, g in self._kept_grads.items():
            p.grad = g
        self._moved, self._kept_grads, self._perturbed = [], {}, False

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w`` and take the base step with the gradients taken at ``w + e``."""
        if not self._perturbed:
            raise RuntimeError("SAM.second_step() called without first_step() before it.")
        self._restore()
        self._base_step()
        if zero_grad:
            self.zero_grad()

    def _base_step(self) -> None:
        if self.clip_grad_norm is not None:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if params:
                nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.base_optimizer.step()

    # --- the usual optimizer API --------------------------------------------------------------
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
            self._last_loss, self._last_perturbed = None, None
            self._base_step()
            return None
        if closure is None:
            raise ValueError(
                "SAM.step() needs a closure on a SAM step (it recomputes the loss at the "
                f"perturbed weights). Pass one, e.g.:\n{_CLOSURE_HINT}"
            )
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                perturbed = closure()
        except BaseException:
            self._restore()
            raise
        self.second_step()
        self._step_calls += 1
        self._last_loss = _as_detached(loss)
        self._last_perturbed = _as_detached(perturbed)
        return self._last_perturbed

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of every parameter of the base optimizer."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and so to SAM, which shares its group list)."""
        if not self._delegate_add_param_group:
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict plus SAM's every_k counter."""
        return {
            "base": self.base_optimizer.state_dict(),
            "sam": {"step_calls": self._step_calls, "rho": self.rho, "every_k": self.every_k},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load a dict from :meth:`state_dict`, or a plain state dict of the base optimizer."""
        if "base" in state_dict and "sam" in state_dict:
            self.base_optimizer.load_state_dict(state_dict["base"])
            self._step_calls = int(state_dict["sam"]["step_calls"])
        elif "state" in state_dict and "param_groups" in state_dict:
            self.base_optimizer.load_state_dict(state_dict)
        else:
            raise ValueError(
                "SAM.load_state_dict expects a dict from SAM.state_dict() (keys 'base' and "
                "'sam') or a base optimizer's state dict (keys 'state' and 'param_groups')."
            )
        # Optimizer.load_state_dict builds new group dicts: share the base's list again.
        self.param_groups = self.base_optimizer.param_groups

    def __getstate__(self) -> dict[str, Any]:
        """Everything, so that pickling or deep-copying keeps the wrapped optimizer(s).

        torch's Optimizer pickles only defaults/state/param_groups, which would drop them.
        """
        return self.__dict__.copy()

    def __repr__(self) -> str:
        return (
            f"SAM(rho={self.rho}, adaptive={self.adaptive}, every_k={self.every_k}, "
            f"scoped={self._scope_ids is not None}, clip_grad_norm={self.clip_grad_norm}, "
            f"base={self.base_optimizer!r})"
        )


def _make_base_optimizer(
    params: Any, base: Any, base_kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    if isinstance(params, SAM):
        raise TypeError("SAM cannot wrap another SAM; wrap its base_optimizer instead.")
    if isinstance(params, torch.optim.Optimizer):
        if base is not None or base_kwargs:
            raise TypeError(
                "SAM wraps the given optimizer instance as is: do not also pass base= or base "
                f"optimizer kwargs (got base={base!r}, kwargs={sorted(base_kwargs)})."
            )
        return params
    if isinstance(base, torch.optim.Optimizer):
        raise TypeError(
            "SAM base= must be an optimizer class such as torch.optim.Adam; to wrap an existing "
            "optimizer instance pass it as the first argument: SAM(optimizer, rho=...)."
        )
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(
            "SAM needs base=<a torch.optim.Optimizer class> (e.g. base=torch.optim.Adam, lr=1e-3) "
            f"when given parameters; got base={base!r}."
        )
    return base(params, **base_kwargs)


def _scope_ids(
    scope: Iterable[Tensor] | nn.Module | None, param_groups: list[dict[str, Any]]
) -> set[int] | None:
    if scope is None:
        return None
    if isinstance(scope, Tensor):
        scope = [scope]
    scope_params = list(scope.parameters() if isinstance(scope, nn.Module) else scope)
    if not scope_params:
        raise ValueError("SAM scope is empty; pass scope=None to perturb every parameter.")
    known = {id(p) for group in param_groups for p in group["params"]}
    for i, p in enumerate(scope_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"SAM scope item #{i} is a {type(p).__name__}, not a parameter.")
        if id(p) not in known:
            raise ValueError(
                f"SAM scope parameter #{i} (shape {tuple(p.shape)}) is not among the optimizer's "
                "parameters; scope must be a subset of the parameters the optimizer updates "
                "(e.g. scope=model.dynamics.parameters() with an optimizer over model)."
            )
    return {id(p) for p in scope_params}
