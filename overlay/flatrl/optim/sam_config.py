"""The one SAM settings object: radius, ASAM, every-k, scope and clipping, validated once.

Every integration spells these settings its own way on its command line (TD-MPC2's
``sam_rho``, the SAC agent's ``training.critic_optimizer.sam.rho``, the world-model CLI's
``--sam-rho``, d3rlpy's ``SAMFactory(rho=...)``); all of them build a :class:`SAMConfig`, passing
their own spellings in ``names`` so that an error names the key the user typed.

The meaning of ``rho = 0`` is the same everywhere: a SAM step with a zero-radius perturbation.
It still takes the second forward/backward pass, reports a sharpness of exactly 0, and updates
the parameters exactly as the base optimizer would (the rho -> 0 limit). It is the control arm
of a rho sweep; to train without SAM's extra pass, choose the base optimizer instead.

``variant`` picks a cheaper relative of SAM (see docs/sam_variants.md), with the same radius
and the same rho = 0 meaning (the base optimizer's parameters exactly):

* ``"sam"``: SAM (every ``every_k``-th update, plain base steps between);
* ``"looksam"``: LookSAM (Liu et al., 2022): the SAM gradient every ``every_k``-th update, and
  in between the plain gradient plus ``looksam_alpha`` times the last SAM gradient's component
  orthogonal to the plain one, rescaled to the plain gradient's norm;
* ``"msam"``: Momentum-SAM (Becker et al., 2024): the perturbation is minus the optimizer's
  normalised momentum, applied between updates so that the caller's ordinary pass is the
  perturbed one (no second pass);
* ``"aesam"``: an AE-SAM schedule (Jiang et al., 2023): a SAM step only when ``||g||^2`` exceeds
  its EMA mean + ``aesam_c`` EMA standard deviations (EMA decay ``aesam_decay``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

VARIANTS = ("sam", "looksam", "msam", "aesam")


class SAMConfigError(ValueError):
    """A SAM setting is out of range or of the wrong type; the message names the key and a fix."""


@dataclasses.dataclass(frozen=True)
class SAMConfig:
    """Validated SAM settings.

    Args:
        rho: radius of the perturbation ball, a finite number >= 0 (0: see the module doc).
        adaptive: ASAM (Kwon et al., 2021): the perturbation is scaled element-wise by ``|w|``.
        every_k: a SAM step on every k-th update (the first included), plain base steps between.
        scope: the integration's name for the parameters to perturb (``None``: all of them);
            which names exist is the integration's business, see :meth:`check_scope`.
        clip_grad_norm: clip the gradient the base step applies to this total norm (None: off).
        eps: added to the gradient norm in the perturbation's denominator.
        variant: ``"sam"``, ``"looksam"``, ``"msam"`` or ``"aesam"`` (module doc). For
            ``looksam`` ``every_k`` is LookSAM's k; ``msam`` and ``aesam`` need ``every_k = 1``
            (they schedule themselves), and ``msam`` has no ASAM form.
        looksam_alpha: LookSAM's alpha, a finite number >= 0 (the paper's default 0.7).
        aesam_c: AE-SAM's threshold in EMA standard deviations above the EMA mean of
            ``||g||^2`` (finite; lower: more SAM steps).
        aesam_decay: AE-SAM's EMA decay in [0, 1) (the paper's delta, 0.9).
        names: the user-facing key of each field for error messages, e.g. ``{"rho": "sam_rho"}``.
    """

    rho: float = 0.05
    adaptive: bool = False
    every_k: int = 1
    scope: str | None = None
    clip_grad_norm: float | None = None
    eps: float = 1e-12
    variant: str = "sam"
    looksam_alpha: float = 0.7
    aesam_c: float = 0.0
    aesam_decay: float = 0.9
    names: dataclasses.InitVar[Mapping[str, str] | None] = None

    def __post_init__(self, names: Mapping[str, str] | None) -> None:
        key = dict(names or {})

        def name(field: str) -> str:
            return key.get(field, field)

        rho = self.rho
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not math.isfinite(rho):
            raise SAMConfigError(
                f"{name('rho')} must be a finite number >= 0, got {rho!r}; e.g. {name('rho')}=0.05."
            )
        if rho < 0:
            raise SAMConfigError(
                f"{name('rho')} must be >= 0, got {rho}; use a radius such as "
                f"{name('rho')}=0.05 ({name('rho')}=0 is a zero-radius SAM step that equals the "
                "base optimizer's)."
            )
        if not isinstance(self.adaptive, bool):
            raise SAMConfigError(
                f"{name('adaptive')} must be true or false, got {self.adaptive!r}."
            )
        k = self.every_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SAMConfigError(
                f"{name('every_k')} must be an integer >= 1, got {k!r}; {name('every_k')}=1 "
                f"runs SAM on every update, {name('every_k')}=4 on every 4th (plain steps between)."
            )
        if self.scope is not None and not (isinstance(self.scope, str) and self.scope.strip()):
            raise SAMConfigError(
                f"{name('scope')} must be a scope name or None, got {self.scope!r}."
            )
        clip = self.clip_grad_norm
        if clip is not None and (
            isinstance(clip, bool)
            or not isinstance(clip, int | float)
            or not (math.isfinite(clip) and clip > 0)
        ):
            raise SAMConfigError(
                f"{name('clip_grad_norm')} must be None (no clipping) or a finite number > 0, "
                f"got {clip!r}."
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not self.eps >= 0:
            raise SAMConfigError(f"{name('eps')} must be a number >= 0, got {self.eps!r}.")
        self._check_variant(name)
        object.__setattr__(self, "rho", float(rho))
        object.__setattr__(self, "eps", float(self.eps))
        if clip is not None:
            object.__setattr__(self, "clip_grad_norm", float(clip))
        if self.scope is not None:
            object.__setattr__(self, "scope", self.scope.strip().lower())

    def _check_variant(self, name: Callable[[str], str]) -> None:
        variant = self.variant
        if not isinstance(variant, str) or variant.strip().lower() not in VARIANTS:
            raise SAMConfigError(
                f"{name('variant')}={variant!r} is not one of {', '.join(VARIANTS)}; e.g. "
                f"{name('variant')}=looksam (SAM every k-th update, reused direction between)."
            )
        variant = variant.strip().lower()
        object.__setattr__(self, "variant", variant)
        for field, low, high in (
            ("looksam_alpha", 0.0, math.inf),
            ("aesam_c", -math.inf, math.inf),
            ("aesam_decay", 0.0, 1.0),
        ):
            value = getattr(self, field)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and low <= value and (value < high)):
                bounds = {"looksam_alpha": ">= 0", "aesam_c": "finite", "aesam_decay": "in [0, 1)"}
                raise SAMConfigError(
                    f"{name(field)} must be a number {bounds[field]}, got {value!r}."
                )
            object.__setattr__(self, field, float(value))
        if variant in ("msam", "aesam") and self.every_k != 1:
            raise SAMConfigError(
                f"{name('every_k')}={self.every_k} does not apply to {name('variant')}={variant} "
                f"(it schedules its own steps); leave {name('every_k')}=1, or use "
                f"{name('variant')}=looksam or sam for a SAM step every k-th update."
            )
        if variant == "msam" and self.adaptive:
            raise SAMConfigError(
                f"{name('adaptive')}=true has no Momentum-SAM form; use it with "
                f"{name('variant')}=sam, looksam or aesam."
            )

    def check_scope(self, choices: Iterable[str], key: str = "scope") -> None:
        """Raise SAMConfigError unless ``scope`` is None or one of ``choices``."""
        choices = tuple(choices)
        if self.scope is not None and self.scope not in choices:
            raise SAMConfigError(f"{key}={self.scope} is not one of {', '.join(choices)}.")

    def replace(self, **changes: Any) -> SAMConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for logs, checkpoints and config round trips).

        A variant's options appear only with that variant (``variant="sam"`` gives the keys
        SAMConfig always had), so logs and stored configs of plain SAM runs stay as they were;
        ``SAMConfig(**config.as_dict()) == config`` either way.
        """
        out = dataclasses.asdict(self)
        options = {"looksam": ("looksam_alpha",), "aesam": ("aesam_c", "aesam_decay")}
        for field in ("variant", "looksam_alpha", "aesam_c", "aesam_decay"):
            if field != "variant" and field in options.get(self.variant, ()):
                continue
            if field == "variant" and self.variant != "sam":
                continue
            del out[field]
        return out
