"""``torch.optim.Muon`` with its Newton-Schulz iteration in a dtype that suits the device.

torch's Muon always orthogonalises in bfloat16. That is the fast choice on GPUs, but CPUs
without native bf16 matrix units emulate it: on the development machines (AVX2, no AVX512-BF16)
one 256x256 Newton-Schulz takes about 0.9 s in bf16 against about 0.03 s in float32, which makes
torch's Muon unusable for CPU training and tests. This subclass keeps torch's hyperparameters,
group layout, state (``momentum_buffer``) and update rule, and only picks the Newton-Schulz
dtype: bfloat16 on CUDA (as torch), float32 elsewhere, or whatever ``ns_dtype`` says. With
``ns_dtype=torch.bfloat16`` it reproduces ``torch.optim.Muon`` bit for bit (tested).

Two additions to torch's rule, neither of which changes a result beyond float rounding:

* **Batched Newton-Schulz.** torch orthogonalises one matrix at a time. Here every matrix of a
  step with the same shape (and Newton-Schulz settings) is stacked and orthogonalised in one
  chain of batched products (``torch.bmm``/``torch.baddbmm``), across param groups: one kernel
  call per product instead of one per matrix. Each member keeps its own normalisation, so the
  result is that of the per-matrix iteration (bit for bit on the CPUs we test; tested within
  float tolerance). By default this is done on GPUs always and on CPUs for matrices under
  256x256 (see ``CPU_BATCH_MAX_ELEMENTS``); ``Muon(..., batched=False)`` keeps torch's
  one-at-a-time loop, ``batched=True`` batches everything.
* **Stacked (3-D) weights.** A parameter of shape ``(members, rows, cols)`` is a stack of
  ``members`` matrices along its first dimension, the layout of an ensemble built with
  ``tensordict.from_modules`` or ``torch.func.stack_module_state`` (TD-MPC2's Q ensemble).
  Each member is orthogonalised on its own and gets the learning-rate scaling of its own
  ``(rows, cols)`` shape, exactly as if it were a separate 2-D parameter. torch's Muon rejects
  such parameters. Which parameters of a module are stacked is said with
  ``muon_param_groups(module, stacked=[...])`` (see :mod:`flatrl.optim.param_split`).

``torch.optim.Muon`` exists from torch 2.9 on. On an older torch this module (and so
``flatrl.optim``, whose SAM and Adam paths do not need Muon) still imports; only constructing
:class:`Muon` raises :class:`MuonUnavailableError`, naming the torch found and the one needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: The first torch release with ``torch.optim.Muon``.
MIN_TORCH_FOR_MUON = "2.9"

_TorchMuon: type[torch.optim.Optimizer] | None = getattr(torch.optim, "Muon", None)


class MuonUnavailableError(RuntimeError):
    """This torch has no ``torch.optim.Muon``, which :class:`Muon` builds on."""


def _muon_unavailable() -> MuonUnavailableError:
    return MuonUnavailableError(
        f"flatrl.optim.Muon needs torch.optim.Muon, which torch >= {MIN_TORCH_FOR_MUON} provides, "
        f"but this is torch {torch.__version__}. Install torch >= {MIN_TORCH_FOR_MUON} (the "
        "project's environments pin it in requirements/constraints.txt), or pick an optimizer "
        "without Muon (e.g. case='adam')."
    )


if _TorchMuon is None:

    class _MuonBase(torch.optim.Optimizer):
        """Stand-in base on a torch without Muon, so that importing this module still works."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise _muon_unavailable()

else:
    _MuonBase = _TorchMuon  # type: ignore[misc]


def newton_schulz(
    grad: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> Tensor:
    """Quintic Newton-Schulz orthogonalisation of a 2-D matrix, as in ``torch.optim.Muon``.

    The same sequence of operations as torch's private ``_zeropower_via_newtonschulz``, with the
    working dtype as a parameter instead of a hard-coded bfloat16.
    """
    if grad.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(grad.shape)}.")
    a, b, c = coefficients
    # Always a copy: ``grad`` may be the momentum buffer itself (nesterov=False), and the
    # normalisation below is in place.
    x = grad.to(dtype, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def newton_schulz_batched(
    stack: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> Tensor:
    """:func:`newton_schulz` of every matrix of a ``(members, rows, cols)`` stack, in one go.

    The same operations as the 2-D iteration, batched: each member is divided by its own
    Frobenius norm, then ``steps`` rounds of three batched products. The result is the stack of
    the members' own Newton-Schulz results (the members do not mix); what is saved is the
    per-matrix kernel launches and Python overhead, which dominate for small matrices and on
    GPUs. Never modifies ``stack``.
    """
    if stack.ndim != 3:
        raise ValueError(
            f"Batched Newton-Schulz needs a (members, rows, cols) stack, got shape "
            f"{tuple(stack.shape)}; use newton_schulz for a single 2-D matrix."
        )
    return _newton_schulz_owned(stack.to(dtype, copy=True), coefficients, steps, eps)


def _newton_schulz_owned(
    x: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """The batched iteration on a stack this function may overwrite (normalised in place)."""
    a, b, c = coefficients
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x.div_(x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if tall else x


def newton_schulz_flops(shape: tuple[int, ...] | torch.Size, steps: int = 5) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of Newton-Schulz on a 2-D or stacked 3-D shape.

    Per step on an ``m x n`` matrix (``m <= n`` after the transpose of a tall one): the Gram
    matrix ``x x^T`` (2 m^2 n), its square (2 m^3) and the product with ``x`` (2 m^2 n). The
    arithmetic model the benches print next to measured time; elementwise work is left out.
    """
    *members, rows, cols = shape
    m, n = min(rows, cols), max(rows, cols)
    return math.prod(members) * steps * (4 * m * m * n + 2 * m**3)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's shape-dependent learning-rate scaling (same rules as torch.optim.Muon).

    ``shape`` is a matrix's ``(rows, cols)``; for a stacked ``(members, rows, cols)`` weight
    pass ``shape[-2:]``, the shape of one member.
    """
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


#: With ``Muon(batched=None)`` on a CPU, matrices with at least this many elements are
#: orthogonalised one at a time (measured: batched 256x256 Newton-Schulz ~5% slower there).
CPU_BATCH_MAX_ELEMENTS = 256 * 256

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _resolve_dtype(ns_dtype: str | None, device: torch.device) -> torch.dtype:
    if ns_dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[ns_dtype]


class Muon(_MuonBase):
    """``torch.optim.Muon`` with a device-suited Newton-Schulz dtype, batched Newton-Schulz and
    stacked 3-D weights (see module doc).

    Args:
        params, **kwargs: exactly as ``torch.optim.Muon`` (validated by torch's constructor),
            except that a parameter may also be a ``(members, rows, cols)`` stack of matrices.
        ns_dtype: ``None`` (bfloat16 on CUDA, float32 elsewhere), ``"float32"``,
            ``"bfloat16"`` or ``"float64"``. Stored per param group.
        batched: ``True``: orthogonalise same-shape matrices together; ``False``: one
            Newton-Schulz per matrix, as torch does (same results); ``None`` (default): batch
            on GPUs always, and on CPUs only matrices under ``CPU_BATCH_MAX_ELEMENTS`` (there a
            batched product of large matrices runs ~5% slower than one product per matrix, while
            for small ones the saved per-call overhead wins: 4x at 8 matrices of 32x32).

    Raises:
        MuonUnavailableError: on a torch without ``torch.optim.Muon`` (before torch 2.9).
        ValueError: a parameter that is neither a 2-D matrix nor a 3-D stack of matrices.
    """

    def __init__(
        self,
        params: Any,
        *args: Any,
        ns_dtype: str | None = None,
        batched: bool | None = None,
        **kwargs: Any,
    ):
        if _TorchMuon is None:
            raise _muon_unavailable()
        if ns_dtype is not None and ns_dtype not in _DTYPES:
            raise ValueError(
                f"ns_dtype must be None or one of {sorted(_DTYPES)}, got {ns_dtype!r}."
            )
        self._default_ns_dtype = ns_dtype  # read by add_param_group during __init__
        self.batched = batched
        # torch's constructor checks the hyperparameters and fills the defaults, but refuses
        # stacked 3-D weights; let it do both on a placeholder matrix, then register the real
        # parameters with those defaults (our add_param_group checks their shapes).
        placeholder = torch.zeros(2, 2, requires_grad=True)
        defaults = dict(_TorchMuon([placeholder], *args, **kwargs).defaults, ns_dtype=ns_dtype)
        torch.optim.Optimizer.__init__(self, params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        """torch's state (defaults, state, groups) plus the two settings kept outside groups."""
        state = super().__getstate__()
        state["_default_ns_dtype"] = self._default_ns_dtype
        state["batched"] = self.batched
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`__getstate__` kept (``load_state_dict`` passes neither: keep)."""
        defaults = state.get("defaults", getattr(self, "defaults", {}))
        default_ns_dtype = state.pop(
            "_default_ns_dtype", getattr(self, "_default_ns_dtype", defaults.get("ns_dtype"))
        )
        batched = state.pop("batched", getattr(self, "batched", None))
        super().__setstate__(state)
        self._default_ns_dtype = default_ns_dtype
        self.batched = batched

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus the ``ns_dtype`` default and the shape check (2-D or stacked 3-D)."""
        param_group.setdefault("ns_dtype", self._default_ns_dtype)
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim not in (2, 3):
                raise ValueError(
                    "Muon only supports 2D weight matrices and 3-D stacks of them (members, "
                    f"rows, cols), but got a parameter of size {tuple(p.shape)}; give vectors, "
                    "scalars and other tensors to Adam (flatrl.optim.muon_param_groups splits "
                    "a module's parameters this way)."
                )

    def _batches(self, p: Tensor) -> bool:
        """Whether ``p``'s matrices join a batched Newton-Schulz (see ``batched``)."""
        if self.batched is not None:
            return self.batched
        return p.device.type != "cpu" or p.shape[-2] * p.shape[-1] < CPU_BATCH_MAX_ELEMENTS

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Muon update: torch's rule, Newton-Schulz in the group's dtype, same-shape
        matrices (stack members included) orthogonalised together."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Momentum first, per parameter; then one Newton-Schulz per bucket of matrices that
        # share a shape and Newton-Schulz settings (across groups: the settings, not the learning
        # rate, decide the orthogonalisation); then each parameter's own update.
        buckets: dict[tuple[Any, ...], list[tuple[Tensor, dict[str, Any], Tensor]]] = {}
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon supports neither complex parameters nor sparse grads.")
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        grad, memory_format=torch.preserve_format
                    )
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                key = (
                    tuple(p.shape[-2:]),
                    p.device,
                    _resolve_dtype(group.get("ns_dtype"), p.device),
                    tuple(group["ns_coefficients"]),
                    group["ns_steps"],
                    group["eps"],
                )
                if not self._batches(p):
                    key += (len(buckets),)  # every matrix in a bucket of its own
                buckets.setdefault(key, []).append((p, group, update))
        for (_, _, dtype, coefficients, steps, eps, *_), items in buckets.items():
            updates = [update for _, _, update in items]
            batched = len(items) > 1 or (updates[0].ndim == 3 and self._batches(items[0][0]))
            orthos = _orthogonalise(updates, coefficients, steps, eps, dtype, batched)
            for (p, group, _), ortho in zip(items, orthos, strict=True):
                lr = group["lr"]
                lr = float(lr) if isinstance(lr, Tensor) else lr
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape[-2:]))
        return loss


def _orthogonalise(
    updates: list[Tensor],
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
    batched: bool,
) -> list[Tensor]:
    """Newton-Schulz of each update (2-D, or 3-D stacked members), each shaped as its update.

    One 2-D matrix alone takes the 2-D path (torch's exact sequence of operations); anything
    else is stacked into one ``(members, rows, cols)`` tensor and orthogonalised in one batched
    chain, unless ``batched`` is off (then a loop, one matrix or member at a time).
    """
    if not batched:
        return [
            newton_schulz(u, coefficients, steps, eps, dtype)
            if u.ndim == 2
            else torch.stack([newton_schulz(m, coefficients, steps, eps, dtype) for m in u])
            for u in updates
        ]
    if len(updates) == 1 and updates[0].ndim == 2:
        return [newton_schulz(updates[0], coefficients, steps, eps, dtype)]
    members = [u.to(dtype).reshape(-1, *u.shape[-2:]) for u in updates]
    # torch.cat makes the one copy the in-place normalisation needs (the inputs may be the
    # momentum buffers themselves).
    stack = members[0].clone() if len(members) == 1 else torch.cat(members)
    out = _newton_schulz_owned(stack, coefficients, steps, eps)
    sizes = [m.shape[0] for m in members]
    return [o.view(u.shape) for o, u in zip(out.split(sizes), updates, strict=True)]
