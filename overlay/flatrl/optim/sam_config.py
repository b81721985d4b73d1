"""The one SAM settings object: radius, ASAM, every-k, scope and clipping, validated once.

Every integration spells these settings its own way on its command line (TD-MPC2's
``sam_rho``, the SAC agent's ``training.critic_optimizer.sam.rho``, the world-model CLI's
``--sam-rho``, d3rlpy's ``SAMFactory(rho=...)``); all of them build a :class:`SAMConfig`, passing
their own spellings in ``names`` so that an error names the key the user typed.

The meaning of ``rho = 0`` is the same everywhere: a SAM step with a zero-radius perturbation.
It still takes the second forward/backward pass, reports a sharpness of exactly 0, and updates
the parameters exactly as the base optimizer would (the rho -> 0 limit). It is the control arm
of a rho sweep; to train without SAM's extra pass, choose the base optimizer instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any


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
        names: the user-facing key of each field for error messages, e.g. ``{"rho": "sam_rho"}``.
    """

    rho: float = 0.05
    adaptive: bool = False
    every_k: int = 1
    scope: str | None = None
    clip_grad_norm: float | None = None
    eps: float = 1e-12
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
        object.__setattr__(self, "rho", float(rho))
        object.__setattr__(self, "eps", float(self.eps))
        if clip is not None:
            object.__setattr__(self, "clip_grad_norm", float(clip))
        if self.scope is not None:
            object.__setattr__(self, "scope", self.scope.strip().lower())

    def check_scope(self, choices: Iterable[str], key: str = "scope") -> None:
        """Raise SAMConfigError unless ``scope`` is None or one of ``choices``."""
        choices = tuple(choices)
        if self.scope is not None and self.scope not in choices:
            raise SAMConfigError(f"{key}={self.scope} is not one of {', '.join(choices)}.")

    def replace(self, **changes: Any) -> SAMConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for logs, checkpoints and config round trips)."""
        return dataclasses.asdict(self)
