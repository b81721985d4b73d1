"""SAM through d3rlpy 1.x's ``OptimizerFactory``, with parameters that round-trip params.json.

1.x serialises an algorithm's ``optim_factory`` as ``factory.get_params()`` (``{"optim_cls":
<class name>, **kwargs}``) and loads it back as ``OptimizerFactory(**params)``, which looks the
class name up in ``torch.optim``. The patched ``d3rlpy/models/optimizers.py`` looks names up
through :func:`optimizer_class` instead, which also knows ``"SAM"``: :func:`create_sam`, which
builds the base optimizer and wraps it in :class:`flatrl.optim.SAM` (the one SAM core, shared
with the 2.8.1 series). So a saved ``SAMFactory`` comes back as an ``OptimizerFactory`` that
creates the same SAM, and ``params.json`` holds only strings, numbers and booleans.

This module is imported at the end of the patched ``d3rlpy/models/optimizers.py`` (it needs
``OptimizerFactory`` from there), which re-exports :class:`SAMFactory`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from d3rlpy.models.optimizers import OptimizerFactory
from torch import nn

from flatrl.optim import SAM, SAMConfig

__all__ = ["SAMFactory", "create_sam", "optimizer_class"]

_NAMES = {
    field: f"SAMFactory {field}" for field in ("rho", "adaptive", "every_k", "clip_grad_norm")
}


def _torch_optimizer(name: str) -> type[torch.optim.Optimizer]:
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(
            f"unknown optimizer {name!r}: give the name of a torch.optim optimizer "
            "(e.g. 'Adam', 'SGD', 'RMSprop') or 'SAM'."
        )
    return cls


def create_sam(
    params: Iterable[nn.Parameter],
    lr: float,
    base: str = "Adam",
    base_params: Mapping[str, Any] | None = None,
    rho: float = 0.05,
    adaptive: bool = False,
    every_k: int = 1,
    clip_grad_norm: float | None = None,
) -> SAM:
    """SAM around ``torch.optim.<base>(params, lr=lr, **base_params)``.

    What ``OptimizerFactory.create`` calls for ``optim_cls="SAM"``: every argument is plain
    data, so the factory's parameters serialise as they are.
    """
    optimizer = _torch_optimizer(base)(params, lr=lr, **dict(base_params or {}))
    config = SAMConfig(
        rho=rho,
        adaptive=adaptive,
        every_k=every_k,
        clip_grad_norm=clip_grad_norm,
        names=_NAMES,
    )
    return SAM.from_config(optimizer, config)


create_sam.__name__ = create_sam.__qualname__ = "SAM"  # the optim_cls name in params.json

_REGISTERED = {"SAM": create_sam}


def optimizer_class(name: str) -> Any:
    """The optimizer ``OptimizerFactory(optim_cls=name)`` creates: ``SAM`` or a torch.optim one."""
    return _REGISTERED.get(name) or _torch_optimizer(name)


class SAMFactory(OptimizerFactory):  # type: ignore[misc]
    """Sharpness-Aware Minimization around a base optimizer, for any d3rlpy 1.x algorithm.

    .. code-block:: python

        from d3rlpy.algos import CQL
        from d3rlpy.models.optimizers import AdamFactory, SAMFactory

        cql = CQL(critic_optim_factory=SAMFactory(AdamFactory(), rho=0.05))

    Every update made with it takes a second forward/backward pass at the perturbed weights
    (through the closure the patched implementations pass) and logs ``<name>_sharpness`` =
    L(w+e) - L(w) next to the loss.

    Args:
        base: the base optimizer: an ``OptimizerFactory`` (``AdamFactory(weight_decay=1e-4)``;
            its parameters are used), a ``torch.optim`` class or its name. Default Adam.
        rho: radius of the perturbation, >= 0; 0 is a zero-radius SAM step (two passes,
            sharpness 0, exactly the base optimizer's update: the control arm of a rho sweep).
        adaptive: ASAM (perturbation scaled element-wise by |w|).
        every_k: a SAM step every k-th update, plain base steps in between.
        clip_grad_norm: clip the gradient of the base step (taken at w+e) to this norm.
        base_params: keyword arguments of the base optimizer, when ``base`` is a name/class.
    """

    def __init__(
        self,
        base: OptimizerFactory | type[torch.optim.Optimizer] | str = "Adam",
        rho: float = 0.05,
        adaptive: bool = False,
        every_k: int = 1,
        clip_grad_norm: float | None = None,
        base_params: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(base, OptimizerFactory):
            if base_params:
                raise ValueError(
                    "SAMFactory: give the base optimizer's parameters either in its factory or "
                    "in base_params, not both."
                )
            params = base.get_params(deep=True)
            name = params.pop("optim_cls")
            base_params = params
        elif isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
            name = base.__name__
        elif isinstance(base, str):
            name = base
        else:
            raise TypeError(
                "SAMFactory(base=...) must be an OptimizerFactory such as AdamFactory(), a "
                f"torch.optim class or its name, got {base!r}."
            )
        if name in _REGISTERED:
            raise TypeError("SAMFactory cannot wrap another SAM; give it the base optimizer.")
        _torch_optimizer(name)
        base_params = {
            k: list(v) if isinstance(v, tuple) else v for k, v in (base_params or {}).items()
        }
        SAMConfig(
            rho=rho, adaptive=adaptive, every_k=every_k, clip_grad_norm=clip_grad_norm, names=_NAMES
        )
        super().__init__(
            optim_cls=create_sam,
            base=name,
            base_params=base_params,
            rho=rho,
            adaptive=adaptive,
            every_k=every_k,
            clip_grad_norm=clip_grad_norm,
        )
