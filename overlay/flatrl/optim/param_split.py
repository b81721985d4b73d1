"""Which parameters Muon gets (the split), and one factory for every optimizer case.

Muon (``torch.optim.Muon``) orthogonalises the momentum of a weight *matrix*, which only makes
sense for hidden linear maps. Everything else (biases, norm scales, embeddings, and by default
the first and last layer, whose shapes are tied to observation/action sizes) goes to an
Adam/AdamW fallback.

Stacked ensembles. An ensemble built with ``tensordict.from_modules`` or
``torch.func.stack_module_state`` (TD-MPC2's Q ensemble) stores each layer's weights as one
``(members, out, in)`` tensor and its biases and norm scales as ``(members, out)``. Shapes alone
cannot tell such a stack from a convolution kernel, or a stacked bias from a real matrix, so the
caller names the stacked parts: ``muon_param_groups(model, stacked=["_Qs"])`` (names of
submodules or parameters, as in ``named_modules()``/``named_parameters()``; ``""`` is the whole
module). Under a stacked name, every parameter has a leading member dimension: a 3-D weight is a
stack of hidden matrices that :class:`flatrl.optim.Muon` orthogonalises member by member; the
first and last stacked weight (the members' input and output layers) and every 2-D or 1-D
tensor (stacked biases, norm scales) go to the fallback, just as for an ordinary MLP.
Parameters with more than two dimensions that are not under a stacked name always go to the
fallback.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flatrl.optim.composite import CompositeOptimizer
from flatrl.optim.muon import Muon

CASES = ("muon", "adam", "adamw")
FALLBACKS = ("adam", "adamw")


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def _edge_linear_names(module: nn.Module, stacked: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of the first and last ``nn.Linear`` in registration order (the default heuristic),
    outside the stacked parts (an ensemble keeps a parameterless template of its member)."""
    linears = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and not _matches(name, stacked)
    ]
    if not linears:
        return [], []
    return [linears[0]], [linears[-1]]


def _check_names(module: nn.Module, names: Sequence[str] | None, what: str) -> None:
    if names is None:
        return
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of module names, e.g. ['{names}'].")
    known = {name for name, _ in module.named_modules()}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"{what} {missing} name no submodule of {type(module).__name__}; use names from "
            "module.named_modules(), e.g. 'encoder.0'."
        )


def _check_stacked(module: nn.Module, stacked: Sequence[str] | None) -> list[str]:
    if stacked is None:
        return []
    if isinstance(stacked, str):
        raise TypeError(f"stacked must be a list of names, e.g. stacked=['{stacked}'].")
    known = {name for name, _ in module.named_modules()} | {
        name for name, _ in module.named_parameters()
    }
    missing = [n for n in stacked if n not in known]
    if missing:
        raise ValueError(
            f"stacked={missing} name no submodule or parameter of {type(module).__name__}; use "
            "names from module.named_modules() or named_parameters() (e.g. '_Qs'), or '' for "
            "the whole module."
        )
    return list(stacked)


def _is_stacked_matrix(p: Tensor) -> bool:
    """A (members, rows, cols) stack whose matrices have both sides > 1 (see _is_proper_matrix)."""
    return p.ndim == 3 and min(p.shape[1:]) > 1


def _stacked_edges(module: nn.Module, stacked: Sequence[str]) -> tuple[list[str], list[str]]:
    """Per stacked name, its first and last stacked weight: the members' input/output layers."""
    first: list[str] = []
    last: list[str] = []
    for entry in stacked:
        weights = [
            name
            for name, p in module.named_parameters()
            if _matches(name, [entry]) and p.ndim == 3 and "bias" not in name.rsplit(".", 1)[-1]
        ]
        if weights:
            first.append(weights[0])
            last.append(weights[-1])
    return first, last


def _is_proper_matrix(p: Tensor) -> bool:
    """2-D with both sides > 1. Newton-Schulz turns a 1xN or Nx1 matrix (and a 1x1 scalar such
    as d3rlpy's ``log_temp``) into ``g / ||g||`` times a constant, a sign-like step of fixed size
    whatever the gradient's scale, so those go to the fallback with the vectors and scalars."""
    return p.ndim == 2 and min(p.shape) > 1


def muon_param_groups(
    module: nn.Module,
    apply_first_layer: bool = False,
    apply_last_layer: bool = False,
    first_layer_names: Sequence[str] | None = None,
    last_layer_names: Sequence[str] | None = None,
    stacked: Sequence[str] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Split ``module``'s trainable parameters into (Muon params, fallback params).

    Muon gets a parameter iff it is 2-D with both dimensions > 1 (so never a scalar, a vector or
    a 1xN / Nx1 / 1x1 matrix such as d3rlpy's ``log_alpha``), not a bias (stacked ensemble biases
    are 2-D), not owned by an embedding, and not in the first/last layer unless
    ``apply_first_layer`` / ``apply_last_layer`` is set. ``first_layer_names`` /
    ``last_layer_names`` are module-name prefixes (e.g. ``["_encoder.state.0"]``); by default the
    first and last ``nn.Linear`` in registration order are the first and last layer.

    ``stacked`` names the stacked ensembles (module or parameter names, ``""`` for all of
    ``module``; see the module doc): their 3-D weights go to Muon, member by member, except the
    first and last stacked weight of each name (unless ``apply_first_layer`` /
    ``apply_last_layer``; explicit ``first_layer_names`` / ``last_layer_names`` replace this
    default too); their 2-D and 1-D tensors go to the fallback.
    """
    _check_names(module, first_layer_names, "first_layer_names")
    _check_names(module, last_layer_names, "last_layer_names")
    stacked = _check_stacked(module, stacked)
    default_first, default_last = _edge_linear_names(module, stacked)
    stacked_first, stacked_last = _stacked_edges(module, stacked)
    default_first += stacked_first
    default_last += stacked_last
    first = list(first_layer_names) if first_layer_names is not None else default_first
    last = list(last_layer_names) if last_layer_names is not None else default_last
    embedding_param_ids = {
        id(p)
        for m in module.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
        for p in m.parameters(recurse=False)
    }

    muon: list[Tensor] = []
    fallback: list[Tensor] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        matrix = _is_stacked_matrix(p) if _matches(name, stacked) else _is_proper_matrix(p)
        hidden_matrix = matrix and "bias" not in leaf and id(p) not in embedding_param_ids
        if hidden_matrix and not apply_first_layer and _matches(name, first):
            hidden_matrix = False
        if hidden_matrix and not apply_last_layer and _matches(name, last):
            hidden_matrix = False
        (muon if hidden_matrix else fallback).append(p)
    return muon, fallback


def build_optimizer(
    module: nn.Module,
    case: str = "adam",
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.95,
    nesterov: bool = True,
    apply_first_layer: bool = False,
    apply_last_layer: bool = False,
    first_layer_names: Sequence[str] | None = None,
    last_layer_names: Sequence[str] | None = None,
    muon_lr: float | None = None,
    fallback: str = "adam",
    adjust_lr_fn: str | None = None,
    eps: float = 1e-8,
    ns_dtype: str | None = None,
    stacked: Sequence[str] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer for one experimental case over ``module``'s parameters.

    ``case="adam"``/``"adamw"`` give a single torch optimizer. ``case="muon"`` gives a
    :class:`CompositeOptimizer` of ``torch.optim.Muon`` (hidden matrices) and the ``fallback``
    Adam/AdamW (the rest). Every group carries ``"optimizer_kind"``.

    Muon's learning rate: with ``muon_lr=None`` Muon reuses ``lr`` and, unless ``adjust_lr_fn``
    says otherwise, torch's ``"match_rms_adamw"`` scaling, which makes Muon's update RMS match
    AdamW's so an Adam-tuned lr carries over; with an explicit ``muon_lr`` the default is
    ``"original"`` (Keller Jordan's scaling, lr around 0.02). Muon's weight decay is decoupled.

    Muon is :class:`flatrl.optim.muon.Muon`, a ``torch.optim.Muon`` whose Newton-Schulz runs
    in bfloat16 on CUDA (as torch's) and in float32 on CPU, where torch's bfloat16 path is about
    30x slower; ``ns_dtype`` overrides the choice. ``stacked`` names stacked ensembles whose
    3-D weights Muon orthogonalises member by member (see :func:`muon_param_groups`).
    """
    if case not in CASES:
        raise ValueError(f"optimizer case must be one of {CASES}, got {case!r}.")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if muon_lr is not None and not muon_lr > 0:
        raise ValueError(f"muon_lr must be None (reuse lr) or > 0, got {muon_lr}.")
    if case != "muon":
        adam_cls = torch.optim.AdamW if case == "adamw" else torch.optim.Adam
        params = [p for p in module.parameters() if p.requires_grad]
        opt = adam_cls(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        for group in opt.param_groups:
            group["optimizer_kind"] = case
        return opt

    muon_params, fallback_params = muon_param_groups(
        module, apply_first_layer, apply_last_layer, first_layer_names, last_layer_names, stacked
    )
    optimizers: list[torch.optim.Optimizer] = []
    if muon_params:
        if adjust_lr_fn is None:
            adjust_lr_fn = "match_rms_adamw" if muon_lr is None else "original"
        optimizers.append(
            Muon(
                muon_params,
                lr=lr if muon_lr is None else muon_lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                adjust_lr_fn=adjust_lr_fn,
                ns_dtype=ns_dtype,
            )
        )
    else:
        warnings.warn(
            f"case='muon' but {type(module).__name__} has no hidden 2-D weight for Muon (first/"
            "last layers are excluded unless apply_first_layer/apply_last_layer, and so is any "
            "matrix with a dimension of size 1); every "
            f"parameter goes to {fallback}.",
            stacklevel=2,
        )
    if fallback_params:
        adam_cls = torch.optim.AdamW if fallback == "adamw" else torch.optim.Adam
        optimizers.append(
            adam_cls(fallback_params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        )
    if not optimizers:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimize.")
    return CompositeOptimizer(optimizers)
