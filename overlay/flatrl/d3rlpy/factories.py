"""d3rlpy optimizer factories for SAM and Muon, registered next to upstream's.

They are ordinary d3rlpy ``OptimizerFactory`` dataclasses, so an algorithm config that uses them
round-trips through ``params.json``, ``from_json``, ``save``/``load_learnable`` like
``AdamFactory`` does. The optimizers themselves come from :mod:`flatrl.optim`.

This module is imported by the patched ``d3rlpy/optimizers/optimizers.py`` after upstream's
factories exist (it needs ``OptimizerFactory`` and ``make_optimizer_field`` from there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from d3rlpy.optimizers.optimizers import (
    OptimizerFactory,
    OptimizerWrapper,
    make_optimizer_field,
)
from torch import nn
from torch.optim import Optimizer

from flatrl.d3rlpy.unperturbed import register
from flatrl.optim import SAM, SAMConfig, build_optimizer

__all__ = ["SAMFactory", "MuonFactory"]

_SAM_FIELDS = (
    "rho",
    "adaptive",
    "every_k",
    "clip_grad_norm",
    "variant",
    "looksam_alpha",
    "aesam_c",
    "aesam_decay",
)
_SAM_FACTORY_NAMES = {field: f"SAMFactory {field}" for field in _SAM_FIELDS}


def _unique_params(named_modules: Iterable[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    seen: dict[nn.Parameter, None] = {}
    for _, module in named_modules:
        for p in module.parameters():
            seen.setdefault(p, None)
    return list(seen)


@dataclasses.dataclass()
class SAMFactory(OptimizerFactory):
    """Sharpness-Aware Minimization around another optimizer factory.

    .. code-block:: python

        from d3rlpy.optimizers import AdamFactory, SAMFactory

        factory = SAMFactory(base=AdamFactory(), rho=0.05)
        cheaper = SAMFactory(base=AdamFactory(), rho=0.05, variant="looksam", every_k=5)

    Every update of an algorithm using it takes two forward/backward passes (the second at the
    perturbed weights, through a closure the patched implementations provide) and reports
    ``<name>_sharpness`` = L(w+e) - L(w) next to the loss.

    Args:
        clip_grad_norm: clip the gradient the base step applies (the one taken at w+e) to this
            norm; the ascent direction uses the unclipped gradient.
        lr_scheduler_factory: LR scheduler, stepped once per update.
        base: the factory of the base optimizer (Adam by default). Its ``clip_grad_norm`` and
            ``lr_scheduler_factory`` are used when the SAMFactory's own are unset, so an
            algorithm's default factory can be wrapped as is; setting one on both is an error.
        rho: radius of the perturbation, >= 0; 0 is a zero-radius SAM step (two passes,
            sharpness 0, the base optimizer's update: the control arm of a rho sweep).
        adaptive: ASAM (perturbation scaled element-wise by |w|).
        every_k: a SAM step every k-th update, plain base steps in between (LookSAM's k).
        variant: ``"sam"``, or a cheaper relative (docs/sam_variants.md): ``"looksam"``
            (SAM gradient every ``every_k``-th update, its orthogonal part reused between),
            ``"msam"`` (Momentum-SAM: perturbation from the optimizer's momentum, no second
            pass; ``<name>_sharpness`` is then not logged, there is no pass at w), ``"aesam"``
            (SAM only on updates with a high gradient norm).
        looksam_alpha: LookSAM's alpha.
        aesam_c: AE-SAM's threshold (EMA standard deviations above the EMA mean of |g|^2).
        aesam_decay: AE-SAM's EMA decay.
    """

    base: OptimizerFactory = make_optimizer_field()
    rho: float = 0.05
    adaptive: bool = False
    every_k: int = 1
    variant: str = "sam"
    looksam_alpha: float = 0.7
    aesam_c: float = 0.0
    aesam_decay: float = 0.9

    def __post_init__(self) -> None:
        _check_sam_arguments(self)

    def create(
        self, named_modules: Iterable[tuple[str, nn.Module]], lr: float, compiled: bool
    ) -> OptimizerWrapper:
        if compiled:
            raise ValueError(
                "SAMFactory does not support compile_graph=True on CUDA: CUDA-graph replay "
                "overwrites the first pass's outputs that the SAM closure needs. Set "
                "compile_graph=False in the algorithm config (or drop SAMFactory)."
            )
        named_modules = list(named_modules)
        optim = self.create_optimizer(named_modules, lr)
        scheduler_factory = self.lr_scheduler_factory or self.base.lr_scheduler_factory
        return OptimizerWrapper(
            params=_unique_params(named_modules),
            optim=optim,
            compiled=compiled,
            clip_grad_norm=self._clip_grad_norm(),
            lr_scheduler=scheduler_factory.create(optim) if scheduler_factory else None,
        )

    def create_optimizer(self, named_modules: Iterable[tuple[str, nn.Module]], lr: float) -> SAM:
        base = self.base.create_optimizer(list(named_modules), lr)
        optim = SAM.from_config(base, self.sam_config())
        register(optim)  # Momentum-SAM: acting and target syncs put its weights back at w
        return optim

    def sam_config(self) -> SAMConfig:
        """The validated SAM settings (errors name the SAMFactory field)."""
        return SAMConfig(
            rho=self.rho,
            adaptive=self.adaptive,
            every_k=self.every_k,
            clip_grad_norm=self._clip_grad_norm(),
            variant=self.variant,
            looksam_alpha=self.looksam_alpha,
            aesam_c=self.aesam_c,
            aesam_decay=self.aesam_decay,
            names=_SAM_FACTORY_NAMES,
        )

    def _clip_grad_norm(self) -> float | None:
        # Like OptimizerWrapper, a clip of 0/None means no clipping.
        return (self.clip_grad_norm or self.base.clip_grad_norm) or None

    @staticmethod
    def get_type() -> str:
        return "sam"


def _check_sam_arguments(factory: SAMFactory) -> None:
    if not isinstance(factory.base, OptimizerFactory):
        raise TypeError(
            "SAMFactory(base=...) must be a d3rlpy optimizer factory such as AdamFactory(), "
            f"got {factory.base!r}."
        )
    if isinstance(factory.base, SAMFactory):
        raise TypeError("SAMFactory cannot wrap another SAMFactory; give it the base factory.")
    for field in ("clip_grad_norm", "lr_scheduler_factory"):
        if getattr(factory, field) and getattr(factory.base, field):
            raise ValueError(
                f"SAMFactory: {field} is set on both the SAMFactory and its base; set it on "
                f"one of them only, e.g. SAMFactory(base=AdamFactory(), {field}=...)."
            )
    factory.sam_config()


@dataclasses.dataclass()
class MuonFactory(OptimizerFactory):
    """Muon for hidden weight matrices, Adam/AdamW for everything else.

    .. code-block:: python

        from d3rlpy.optimizers import MuonFactory, SAMFactory

        factory = MuonFactory(weight_decay=1e-4)
        sam_muon = SAMFactory(base=MuonFactory(), rho=0.05)

    The split is made per network: each module handed to the factory (each member of an
    ensemble ``ModuleList`` separately) keeps its first ``nn.Linear`` and its output heads (its
    last ``nn.Linear`` and the ``nn.Linear`` layers that are its direct children, e.g. a Q
    function's ``_fc`` or a policy's ``_mu``) on the fallback, unless ``apply_first_layer`` /
    ``apply_last_layer`` is set. Biases, norms, embeddings, non-2-D parameters and matrices with
    a side of 1 (e.g. the 1x1 ``log_temp``/``log_alpha``) always use the fallback.

    Args:
        clip_grad_norm: maximum gradient norm.
        lr_scheduler_factory: LR scheduler.
        momentum: Muon momentum.
        nesterov: Nesterov momentum for Muon.
        weight_decay: decoupled weight decay for both parts.
        betas: Adam/AdamW betas of the fallback.
        eps: Adam/AdamW eps of the fallback.
        fallback: ``"adam"`` or ``"adamw"``.
        muon_lr: Muon's learning rate; None reuses the algorithm's lr with torch's
            ``match_rms_adamw`` scaling, so Adam-tuned learning rates carry over.
        apply_first_layer: give the first layer to Muon too.
        apply_last_layer: give the output layers to Muon too.
    """

    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fallback: str = "adam"
    muon_lr: float | None = None
    apply_first_layer: bool = False
    apply_last_layer: bool = False

    def __post_init__(self) -> None:
        if self.fallback not in ("adam", "adamw"):
            raise ValueError(
                f"MuonFactory fallback must be 'adam' or 'adamw', got {self.fallback!r}."
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"MuonFactory momentum must be in [0, 1), got {self.momentum}.")
        if self.weight_decay < 0:
            raise ValueError(f"MuonFactory weight_decay must be >= 0, got {self.weight_decay}.")
        if self.muon_lr is not None and not self.muon_lr > 0:
            raise ValueError(
                f"MuonFactory muon_lr must be None (reuse the algorithm's lr) or > 0, "
                f"got {self.muon_lr}."
            )
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives a list

    def create_optimizer(
        self, named_modules: Iterable[tuple[str, nn.Module]], lr: float
    ) -> Optimizer:
        named_modules = list(named_modules)
        units = _network_units(named_modules)
        container = nn.ModuleList(units)
        first: list[str] = []
        last: list[str] = []
        for i, unit in enumerate(units):
            unit_first, unit_last = _edge_layers(unit)
            first += [f"{i}.{n}" if n else str(i) for n in unit_first]
            last += [f"{i}.{n}" if n else str(i) for n in unit_last]
        expected = set(_unique_params(named_modules))
        covered = set(container.parameters())
        if expected != covered:
            raise ValueError(
                "MuonFactory could not find the networks owning every parameter it was given; "
                "pass whole modules (module.named_modules()) to the factory."
            )
        return build_optimizer(
            container,
            case="muon",
            lr=lr,
            weight_decay=self.weight_decay,
            betas=self.betas,
            momentum=self.momentum,
            nesterov=self.nesterov,
            apply_first_layer=self.apply_first_layer,
            apply_last_layer=self.apply_last_layer,
            first_layer_names=first,
            last_layer_names=last,
            muon_lr=self.muon_lr,
            fallback=self.fallback,
            eps=self.eps,
        )

    @staticmethod
    def get_type() -> str:
        return "muon"


def _network_units(named_modules: list[tuple[str, nn.Module]]) -> list[nn.Module]:
    """The networks behind ``named_modules``: each root module, ensembles split per member."""
    roots = [m for name, m in named_modules if name == ""] or [m for _, m in named_modules]
    units: list[nn.Module] = []
    for root in roots:
        members = list(root) if isinstance(root, nn.ModuleList) else [root]
        for member in members:
            if not any(member is u for u in units):
                units.append(member)
    return units


def _edge_layers(unit: nn.Module) -> tuple[list[str], list[str]]:
    linears = [name for name, m in unit.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return [], []
    heads = [name for name in linears if name and "." not in name]
    last = sorted({linears[-1], *heads})
    return [linears[0]], last
