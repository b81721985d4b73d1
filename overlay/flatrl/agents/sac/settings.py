"""Typed, validated view of the Hydra config.

Hydra already rejects keys that do not exist in the YAML; this module rejects *values* that
would only blow up (or silently mislead) hours into a run: an unknown optimizer case, a
negative learning rate, a momentum outside [0, 1), an unknown DMC task. Everything is checked
in :func:`load_settings`, before any environment, network or file is created, and each error
names the config key and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flatrl.agents.sac.models import NORMS, MLPConfig
from flatrl.optim import SAMConfig, SAMConfigError

CASES = ("adam", "adamw", "muon")
FALLBACKS = ("adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def _check_unit_interval(key: str, value: float) -> None:
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{key}={value} must be in [0, 1) (0 turns momentum off).")


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be a finite number {bound}.")


@dataclass(frozen=True)
class MuonSettings:
    """Muon knobs; ``lr=None`` reuses the case's ``lr`` with AdamW-matched update RMS.

    The first and last layers go to Muon unless excluded (``apply_*_layer: false``), as in the
    seed's ablation "Muon everywhere vs without the heads". A weight with a size-1 dimension
    (e.g. a Q head's ``(1, hidden)``) stays on the fallback whatever the toggle: the core's
    split leaves vectors to Adam, where orthogonalisation is meaningless.
    """

    momentum: float = 0.95
    nesterov: bool = True
    lr: float | None = None
    adjust_lr_fn: str | None = None
    apply_first_layer: bool = True
    apply_last_layer: bool = True


@dataclass(frozen=True)
class SAMSettings:
    """SAM on the critic: off when ``rho`` is None (the default).

    ``rho = 0`` is a zero-radius SAM step (the second pass runs, the sharpness is 0 and the
    parameters are exactly the base optimizer's), the control arm of a rho sweep, as everywhere
    in flatrl; see :mod:`flatrl.optim.sam_config`.
    """

    rho: float | None = None
    adaptive: bool = False
    every_k: int = 1

    @property
    def enabled(self) -> bool:
        return self.rho is not None

    def config(self, key: str, clip_grad_norm: float | None = None) -> SAMConfig:
        """The core's :class:`SAMConfig`; errors name ``<key>.sam.*`` (and training.grad_clip).

        Raises ConfigError when SAM is off (``rho`` None) or a value is out of range.
        """
        if self.rho is None:
            raise ConfigError(f"{key}.sam.rho is null (SAM off); there is no SAM config to build.")
        names = {
            "rho": f"{key}.sam.rho",
            "adaptive": f"{key}.sam.adaptive",
            "every_k": f"{key}.sam.every_k",
            "clip_grad_norm": "training.grad_clip",
        }
        try:
            return SAMConfig(
                rho=self.rho,
                adaptive=self.adaptive,
                every_k=self.every_k,
                clip_grad_norm=clip_grad_norm,
                names=names,
            )
        except SAMConfigError as err:
            raise ConfigError(str(err)) from err


@dataclass(frozen=True)
class OptimizerSettings:
    case: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    fallback: str = "adamw"
    muon: MuonSettings = field(default_factory=MuonSettings)
    sam: SAMSettings = field(default_factory=SAMSettings)

    def validate(self, key: str) -> None:
        if self.case not in CASES:
            raise ConfigError(
                f"{key}.case={self.case!r} is unknown; use one of {', '.join(CASES)} "
                "('muon' = Muon on hidden matrices plus the fallback for the rest)."
            )
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"{key}.fallback={self.fallback!r} must be 'adam' or 'adamw'.")
        _check_positive(f"{key}.lr", self.lr)
        if self.muon.lr is not None:
            _check_positive(f"{key}.muon.lr", self.muon.lr)
        _check_positive(f"{key}.weight_decay", self.weight_decay, allow_zero=True)
        _check_positive(f"{key}.eps", self.eps)
        _check_unit_interval(f"{key}.betas[0]", self.betas[0])
        _check_unit_interval(f"{key}.betas[1]", self.betas[1])
        _check_unit_interval(f"{key}.muon.momentum", self.muon.momentum)
        if self.muon.adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ConfigError(
                f"{key}.muon.adjust_lr_fn={self.muon.adjust_lr_fn!r} must be null, 'original' "
                "or 'match_rms_adamw'."
            )
        if self.sam.enabled:
            self.sam.config(key)
        elif self.sam.every_k < 1:
            raise ConfigError(f"{key}.sam.every_k={self.sam.every_k} must be >= 1.")


@dataclass(frozen=True)
class ScheduleSettings:
    """Delayed momentum: 0 for the first ``start_step`` updates of that network, then default."""

    enabled: bool = False
    start_step: int = 0


@dataclass(frozen=True)
class RankLoggingSettings:
    enabled: bool = False
    every_n_updates: int = 1000
    max_samples: int = 512
    top_k: int = 5


@dataclass(frozen=True)
class EnvSettings:
    task: str = "cheetah-run"
    action_repeat: int = 1


@dataclass(frozen=True)
class ModelSettings:
    hidden_dim: int = 256
    num_layers: int = 2
    residual: bool = False
    norm: str = "none"
    spectral_norm: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def mlp(self) -> MLPConfig:
        return MLPConfig(
            self.hidden_dim, self.num_layers, self.residual, self.norm, self.spectral_norm
        )


@dataclass(frozen=True)
class TrainingSettings:
    """Step counts are environment steps (frames, i.e. agent steps x action_repeat)."""

    total_env_steps: int = 1_000_000
    seed_steps: int = 5000
    batch_size: int = 256
    replay_capacity: int = 1_000_000
    updates_per_step: int = 1
    gamma: float = 0.99
    tau: float = 0.005
    actor_update_freq: int = 1
    target_update_freq: int = 1
    init_temperature: float = 0.1
    alpha_lr: float = 3e-4
    alpha_betas: tuple[float, float] = (0.9, 0.999)
    target_entropy: float | None = None
    grad_clip: float | None = None
    eval_every_steps: int = 10_000
    eval_episodes: int = 10
    log_every_steps: int = 1000
    checkpoint_every_steps: int = 50_000
    checkpoint_dir: str = "checkpoints"
    replay_dir: str = "replay"
    save_replay: bool = True
    progress_bar: bool = True
    actor_optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    critic_optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    actor_momentum_schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    critic_momentum_schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    rank_logging: RankLoggingSettings = field(default_factory=RankLoggingSettings)


@dataclass(frozen=True)
class Settings:
    method_name: str = "SAC"
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    threads: int | None = None
    env: EnvSettings = field(default_factory=EnvSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a plain config value to the annotated type, or raise a ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. [0.9, 0.999].")
        if len(value) != len(args):
            # Never truncate: a third "beta" the user meant for something would vanish silently.
            raise ConfigError(
                f"{key}={list(value)} must have exactly {len(args)} elements, e.g. [0.9, 0.999] "
                "for [beta1, beta2]."
            )
        return tuple(
            _coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string.")
        return value
    raise TypeError(f"unsupported settings type {tp} for {key}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - {"hydra"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} under {prefix or 'the config root'}; known: {sorted(names)}."
        )
    kwargs = {}
    for name in names & set(values):
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], values[name], key)
    return cls(**kwargs)


def load_settings(config: Mapping[str, Any]) -> Settings:
    """Build and fully validate the settings from a plain (resolved) config mapping."""
    s = _build(Settings, config, "")
    t = s.training
    t.actor_optimizer.validate("training.actor_optimizer")
    t.critic_optimizer.validate("training.critic_optimizer")
    if t.actor_optimizer.sam.enabled:
        raise ConfigError(
            "training.actor_optimizer.sam.rho is set, but SAM is supported on the critic only; "
            "set training.critic_optimizer.sam.rho instead."
        )
    if s.device not in DEVICES:
        raise ConfigError(f"device={s.device!r} must be one of {', '.join(DEVICES)}.")
    if s.model.norm not in NORMS:
        raise ConfigError(f"model.norm={s.model.norm!r} must be one of {', '.join(NORMS)}.")
    for key in ("hidden_dim", "num_layers"):
        if getattr(s.model, key) < 1:
            raise ConfigError(f"model.{key}={getattr(s.model, key)} must be >= 1.")
    if s.env.action_repeat < 1:
        raise ConfigError(f"env.action_repeat={s.env.action_repeat} must be >= 1.")
    for key in (
        "total_env_steps",
        "batch_size",
        "replay_capacity",
        "updates_per_step",
        "actor_update_freq",
        "target_update_freq",
        "eval_every_steps",
        "log_every_steps",
        "checkpoint_every_steps",
    ):
        if getattr(t, key) < 1:
            raise ConfigError(f"training.{key}={getattr(t, key)} must be >= 1.")
    for key in ("seed_steps", "eval_episodes"):
        if getattr(t, key) < 0:
            raise ConfigError(f"training.{key}={getattr(t, key)} must be >= 0.")
    if t.replay_capacity < t.batch_size:
        raise ConfigError(
            f"training.replay_capacity={t.replay_capacity} is below training.batch_size="
            f"{t.batch_size}; raise the capacity."
        )
    _check_unit_interval("training.gamma", t.gamma)
    if not 0.0 < t.tau <= 1.0:
        raise ConfigError(f"training.tau={t.tau} must be in (0, 1].")
    _check_positive("training.init_temperature", t.init_temperature)
    _check_positive("training.alpha_lr", t.alpha_lr)
    _check_unit_interval("training.alpha_betas[0]", t.alpha_betas[0])
    _check_unit_interval("training.alpha_betas[1]", t.alpha_betas[1])
    if t.grad_clip is not None:
        _check_positive("training.grad_clip", t.grad_clip)
    for key in ("actor_momentum_schedule", "critic_momentum_schedule"):
        if getattr(t, key).start_step < 0:
            raise ConfigError(f"training.{key}.start_step must be >= 0.")
    r = t.rank_logging
    if r.every_n_updates < 1 or r.max_samples < 2 or r.top_k < 1:
        raise ConfigError(
            "training.rank_logging needs every_n_updates >= 1, max_samples >= 2 and top_k >= 1; "
            f"got {r.every_n_updates}, {r.max_samples}, {r.top_k}."
        )
    if not s.method_name or "/" in s.method_name:
        raise ConfigError(
            f"method_name={s.method_name!r} must be a non-empty name without '/', it names the "
            "run's checkpoint folder."
        )
    if s.threads is not None and s.threads < 1:
        raise ConfigError(f"threads={s.threads} must be null (torch default) or >= 1.")
    return s
