"""The SAC agent's config: every key, its default and its meaning, in one place.

The dataclasses below are Hydra *structured configs*: :func:`store_schema` registers
:class:`Settings` in Hydra's ConfigStore as ``sac_schema``, and ``configs/sac_dmc.yaml`` only
composes it (plus Hydra's output directories). So Hydra rejects an unknown key, OmegaConf
rejects a value of the wrong type (its message names the key, e.g. ``full_key:
training.batch_size``), and :meth:`Settings.__post_init__` rejects values of the right type that
would only blow up (or silently mislead) hours into a run: an unknown optimizer case, a negative
learning rate, a momentum outside [0, 1), a third "beta". All of it runs before any environment,
network or file is created, and each error names the key and how to fix it.

Each key's one-line meaning is its ``help`` metadata; the README's key table is generated from it
(``python -m flatrl.agents.sac.settings``) and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from flatrl.agents.sac.models import NORMS, MLPConfig
from flatrl.optim import SAMConfig, SAMConfigError
from flatrl.runtime import DEVICE_CHOICES, is_device_name

CASES = ("adam", "adamw", "muon")
FALLBACKS = ("adam", "adamw")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
SCHEMA_NAME = "sac_schema"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def knob(default: Any, help: str) -> Any:
    """A config key: its default and the meaning shown in the README's key table."""
    return field(default=default, metadata={"help": help})


def block(cls: type) -> Any:
    """A nested config block (documented by its class docstring)."""
    return field(default_factory=cls)


@dataclass
class MuonSettings:
    """Muon: hidden 2-D weights, plus the first and last layers unless excluded.

    A weight with a size-1 dimension (e.g. a Q head's ``(1, hidden)``) stays on the fallback
    whatever the toggle: the core's split leaves vectors to Adam, where orthogonalisation is
    meaningless.
    """

    momentum: float = knob(0.95, "Muon momentum, in [0, 1)")
    nesterov: bool = knob(True, "Nesterov momentum")
    lr: float | None = knob(None, "`null` reuses the case's `lr` with AdamW-matched update RMS")
    adjust_lr_fn: str | None = knob(None, "`null` \\| `original` \\| `match_rms_adamw`")
    apply_first_layer: bool = knob(
        True,
        "`true`: the first layer (actor `fcs.0`; critic `q1.fcs.0`, `q2.fcs.0`) is on Muon; "
        "`false` puts it on the fallback",
    )
    apply_last_layer: bool = knob(
        True,
        "`true`: the actor heads `mean` and `log_std` are on Muon; `false` puts them on the "
        "fallback. The critic's Q heads `q1.out`/`q2.out` are `(1, hidden)` and stay on the "
        "fallback either way, and so do the actor's heads on a 1-D action space (e.g. cartpole)",
    )


@dataclass
class SAMSettings:
    """SAM (ASAM) on the critic only; off while ``rho`` is null.

    ``rho = 0`` is a zero-radius SAM step (the second pass runs, the sharpness is 0 and the
    parameters are exactly the base optimizer's), the control arm of a rho sweep, as everywhere
    in flatrl; see :mod:`flatrl.optim.sam_config`.
    """

    rho: float | None = knob(
        None,
        "`null` = off; e.g. `0.05` turns SAM on; `0` = a zero-radius SAM step (second pass runs, "
        "sharpness 0, parameters exactly the base optimizer's). `training.grad_clip` clips the "
        "gradient SAM's base step applies",
    )
    adaptive: bool = knob(False, "ASAM (scale-invariant perturbation)")
    every_k: int = knob(
        1, "SAM step every k-th critic update, plain steps in between (LookSAM's k)"
    )
    variant: str = knob(
        "sam",
        "`sam` \\| `looksam` (SAM gradient every `every_k`-th update, its orthogonal part "
        "reused between) \\| `msam` (Momentum-SAM: perturbation from the optimizer's momentum, "
        "no second pass; the actor and the target update see the unperturbed critic) \\| "
        "`aesam` (SAM only on updates with a high gradient norm); see docs/sam_variants.md",
    )
    looksam_alpha: float = knob(0.7, "LookSAM's alpha (weight of the reused direction)")
    aesam_c: float = knob(
        0.0, "AE-SAM threshold: EMA standard deviations above the EMA mean of |g|^2"
    )
    aesam_decay: float = knob(0.9, "AE-SAM's EMA decay, in [0, 1)")

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
            "variant": f"{key}.sam.variant",
            "looksam_alpha": f"{key}.sam.looksam_alpha",
            "aesam_c": f"{key}.sam.aesam_c",
            "aesam_decay": f"{key}.sam.aesam_decay",
        }
        try:
            return SAMConfig(
                rho=self.rho,
                adaptive=self.adaptive,
                every_k=self.every_k,
                clip_grad_norm=clip_grad_norm,
                variant=self.variant,
                looksam_alpha=self.looksam_alpha,
                aesam_c=self.aesam_c,
                aesam_decay=self.aesam_decay,
                names=names,
            )
        except SAMConfigError as err:
            raise ConfigError(str(err)) from err


@dataclass
class OptimizerSettings:
    """One network's optimizer (``case: muon`` = Muon on hidden matrices + ``fallback``)."""

    case: str = knob("adamw", "`adam`: all Adam; `adamw`: all AdamW; `muon`: Muon + `fallback`")
    lr: float = knob(3e-4, "learning rate (of Muon too, unless `muon.lr` is set)")
    betas: tuple[float, float] = knob(
        (0.9, 0.999), "Adam/AdamW `[beta1, beta2]`; beta1 is Adam's momentum"
    )
    weight_decay: float = knob(0.0, "weight decay, passed to each optimizer")
    eps: float = knob(1e-8, "Adam/AdamW epsilon")
    fallback: str = knob(
        "adamw", "optimizer of the non-Muon params in case `muon`: `adam` \\| `adamw`"
    )
    muon: MuonSettings = block(MuonSettings)
    sam: SAMSettings = block(SAMSettings)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # OmegaConf hands lists over

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
        _check_betas(f"{key}.betas", self.betas)
        _check_unit_interval(f"{key}.muon.momentum", self.muon.momentum)
        if self.muon.adjust_lr_fn not in ADJUST_LR_FNS:
            raise ConfigError(
                f"{key}.muon.adjust_lr_fn={self.muon.adjust_lr_fn!r} must be null, 'original' "
                "or 'match_rms_adamw'."
            )
        if self.sam.enabled:
            self.sam.config(key)
        elif self.sam.every_k < 1:
            raise ConfigError(f"{key}.sam.every_k={self.sam.every_k} must be >= 1.")


@dataclass
class ScheduleSettings:
    """Delayed momentum: Muon momentum / Adam beta1 are 0 for the first ``start_step`` updates
    of that network, then the optimizer's configured value."""

    enabled: bool = knob(False, "turn the delay on")
    start_step: int = knob(0, "updates of that network (not environment steps) before momentum")


@dataclass
class RankLoggingSettings:
    """Effective rank and top-k singular-value mass of each Q network's penultimate features."""

    enabled: bool = knob(False, "log `repr/*` (the probe has its own generator: no side effects)")
    every_n_updates: int = knob(1000, "critic updates between probes")
    max_samples: int = knob(512, "replay samples per probe (>= 2)")
    top_k: int = knob(5, "k of `repr/*_top{k}_sv_mass`")


@dataclass
class EnvSettings:
    """The DeepMind Control task."""

    task: str = knob(
        "cheetah-run",
        "DMC `domain-task`, e.g. `cartpole-swingup`, `walker-walk`, `ball_in_cup-catch`",
    )
    action_repeat: int = knob(1, "frames per agent step; rewards are summed over repeats")


@dataclass
class ModelSettings:
    """Actor and critic trunks (the same architecture for both)."""

    hidden_dim: int = knob(256, "units per hidden layer")
    num_layers: int = knob(2, "hidden layers per network (`fcs.0` is the first layer)")
    residual: bool = knob(False, "residual connections on the hidden-to-hidden layers")
    norm: str = knob("none", "`none` \\| `layernorm` \\| `l2`, on each hidden pre-activation")
    spectral_norm: bool = knob(False, "spectral normalisation of the hidden-to-hidden layers")
    log_std_min: float = knob(-5.0, "lower bound of the actor's log std")
    log_std_max: float = knob(2.0, "upper bound of the actor's log std")

    def mlp(self) -> MLPConfig:
        return MLPConfig(
            self.hidden_dim, self.num_layers, self.residual, self.norm, self.spectral_norm
        )


@dataclass
class TrainingSettings:
    """The training loop. Step counts are environment steps (frames = agent steps x
    ``env.action_repeat``) unless a key says updates."""

    total_env_steps: int = knob(1_000_000, "length of the run")
    seed_steps: int = knob(5000, "uniform random actions before the first update")
    batch_size: int = knob(256, "transitions per update")
    replay_capacity: int = knob(1_000_000, "replay buffer size (>= batch_size)")
    updates_per_step: int = knob(1, "updates per agent step (update-to-data ratio)")
    gamma: float = knob(0.99, "discount, in [0, 1)")
    tau: float = knob(0.005, "target-critic Polyak rate, in (0, 1]")
    actor_update_freq: int = knob(1, "actor and temperature update every N critic updates")
    target_update_freq: int = knob(1, "target critic update every N critic updates")
    init_temperature: float = knob(0.1, "initial entropy temperature alpha")
    alpha_lr: float = knob(3e-4, "Adam learning rate of log alpha")
    alpha_betas: tuple[float, float] = knob((0.9, 0.999), "Adam betas of log alpha")
    target_entropy: float | None = knob(None, "`null` = -action_dim")
    grad_clip: float | None = knob(
        None, "max total grad norm per network (with SAM: of the step it applies); `null` = off"
    )
    eval_every_steps: int = knob(10_000, "evaluation interval")
    eval_episodes: int = knob(10, "episodes per evaluation")
    log_every_steps: int = knob(
        1000, "`train/*` scalars are means over the updates of each interval"
    )
    checkpoint_every_steps: int = knob(
        50_000, "checkpoint at the first episode end after each multiple"
    )
    checkpoint_dir: str = knob("checkpoints", "relative paths are taken from the launch directory")
    replay_dir: str = knob("replay", "where the replay dumps go (relative: launch directory)")
    save_replay: bool = knob(True, "`false`: smaller checkpoints, but no exact resume")
    progress_bar: bool = knob(True, "tqdm bar with the last episode return and steps/s")
    actor_optimizer: OptimizerSettings = block(OptimizerSettings)
    critic_optimizer: OptimizerSettings = block(OptimizerSettings)
    actor_momentum_schedule: ScheduleSettings = block(ScheduleSettings)
    critic_momentum_schedule: ScheduleSettings = block(ScheduleSettings)
    rank_logging: RankLoggingSettings = block(RankLoggingSettings)

    def __post_init__(self) -> None:
        self.alpha_betas = tuple(self.alpha_betas)  # OmegaConf hands lists over


@dataclass
class Settings:
    """The whole run (the config root). Built from the composed config, it validates itself."""

    method_name: str = knob("SAC", "names the run's checkpoint folder; give each sweep run its own")
    seed: int = knob(0, "seed of torch, numpy, python, the task and the replay sampler")
    device: str = knob("auto", "`auto` \\| `cpu` \\| `cuda` \\| `cuda:N`")
    resume: bool = knob(
        False, "`true`: continue from `<checkpoint_dir>/<method>/<task>/seed_<seed>`"
    )
    threads: int | None = knob(None, "`torch.set_num_threads`; `null` keeps torch's default")
    env: EnvSettings = block(EnvSettings)
    model: ModelSettings = block(ModelSettings)
    training: TrainingSettings = block(TrainingSettings)

    def __post_init__(self) -> None:
        self.validate()

    def advisories(self) -> list[str]:
        """Settings that are valid but probably not what was meant, each with its fix.

        Why: ``case: adamw`` with the default ``weight_decay: 0`` is Adam's update exactly, so
        an "AdamW" arm silently duplicates an Adam arm (it did in our first SAC/Muon study).
        """
        notes = []
        for key in ("actor_optimizer", "critic_optimizer"):
            opt: OptimizerSettings = getattr(self.training, key)
            if opt.case == "adamw" and opt.weight_decay == 0:
                notes.append(
                    f"training.{key}: case=adamw with weight_decay=0 is Adam's update exactly; "
                    f"set training.{key}.weight_decay (torch's AdamW default is 0.01) for "
                    "AdamW, or case=adam to say Adam."
                )
        return notes

    def validate(self) -> None:
        """Every semantic check, each naming its key; types were checked by OmegaConf."""
        s, t, r = self, self.training, self.training.rank_logging
        t.actor_optimizer.validate("training.actor_optimizer")
        t.critic_optimizer.validate("training.critic_optimizer")
        if t.actor_optimizer.sam.enabled:
            raise ConfigError(
                "training.actor_optimizer.sam.rho is set, but SAM is supported on the critic "
                "only; set training.critic_optimizer.sam.rho instead."
            )
        if not is_device_name(s.device):
            raise ConfigError(f"device={s.device!r} must be one of {', '.join(DEVICE_CHOICES)}.")
        if s.model.norm not in NORMS:
            raise ConfigError(f"model.norm={s.model.norm!r} must be one of {', '.join(NORMS)}.")
        _check_at_least(s.model, "model", ("hidden_dim", "num_layers"), 1)
        _check_at_least(s.env, "env", ("action_repeat",), 1)
        at_least_one = (
            *("total_env_steps", "batch_size", "replay_capacity", "updates_per_step"),
            *("actor_update_freq", "target_update_freq", "eval_every_steps", "log_every_steps"),
            "checkpoint_every_steps",
        )
        _check_at_least(t, "training", at_least_one, 1)
        _check_at_least(t, "training", ("seed_steps", "eval_episodes"), 0)
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
        _check_betas("training.alpha_betas", t.alpha_betas)
        if t.grad_clip is not None:
            _check_positive("training.grad_clip", t.grad_clip)
        for key in ("actor_momentum_schedule", "critic_momentum_schedule"):
            if getattr(t, key).start_step < 0:
                raise ConfigError(f"training.{key}.start_step must be >= 0.")
        if r.every_n_updates < 1 or r.max_samples < 2 or r.top_k < 1:
            raise ConfigError(
                "training.rank_logging needs every_n_updates >= 1, max_samples >= 2 and "
                f"top_k >= 1; got {r.every_n_updates}, {r.max_samples}, {r.top_k}."
            )
        if not s.method_name or "/" in s.method_name:
            raise ConfigError(
                f"method_name={s.method_name!r} must be a non-empty name without '/', it names "
                "the run's checkpoint folder."
            )
        if s.threads is not None and s.threads < 1:
            raise ConfigError(f"threads={s.threads} must be null (torch default) or >= 1.")


def _check_unit_interval(key: str, value: float) -> None:
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{key}={value} must be in [0, 1) (0 turns momentum off).")


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be a finite number {bound}.")


def _check_betas(key: str, betas: tuple[float, ...]) -> None:
    # Never truncate: a third "beta" the user meant for something would vanish silently.
    if len(betas) != 2:
        raise ConfigError(
            f"{key}={list(betas)} must have exactly 2 elements, e.g. [0.9, 0.999] "
            "for [beta1, beta2]."
        )
    _check_unit_interval(f"{key}[0]", betas[0])
    _check_unit_interval(f"{key}[1]", betas[1])


def _check_at_least(obj: Any, prefix: str, keys: tuple[str, ...], low: int) -> None:
    for key in keys:
        if getattr(obj, key) < low:
            raise ConfigError(f"{prefix}.{key}={getattr(obj, key)} must be >= {low}.")


def store_schema() -> None:
    """Register :class:`Settings` as ``sac_schema``, which ``configs/sac_dmc.yaml`` composes."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Settings)


def load_settings(config: Mapping[str, Any]) -> Settings:
    """Type-check ``config`` (a plain, resolved mapping) against the schema and validate it.

    OmegaConf's type and unknown-key errors are re-raised as :class:`ConfigError` with its
    message, which names the key; Hydra's own ``hydra`` node, if present, is ignored.
    """
    values = {k: v for k, v in config.items() if k != "hydra"}
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Settings), values)
    except (ValidationError, ConfigKeyError) as err:
        raise ConfigError(f"{err}\n(fix the value's type or the key's spelling)") from err
    return OmegaConf.to_object(typed)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each schema key it lacks set to its default (values are not checked).

    Configs saved in checkpoints by earlier versions lack keys the schema gained since (e.g.
    ``training.actor_optimizer.sam.every_k``); filling them in keeps a resume from reporting
    them as changes.
    """

    def merge(base: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in values.items():
            both = isinstance(out.get(key), dict) and isinstance(value, Mapping)
            out[key] = merge(out[key], value) if both else value
        return out

    return merge(OmegaConf.to_container(OmegaConf.structured(Settings)), config)


def _blocks(cls: type, paths: list[str]) -> Iterator[tuple[list[str], type]]:
    """(paths, class) of every block under ``cls``; same-class siblings share one entry."""
    yield paths, cls
    hints = typing.get_type_hints(cls)
    children: dict[type, list[str]] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            children.setdefault(hints[f.name], []).append(f.name)
    for child, names in children.items():
        sub = [f"{p}.{n}" if p else n for p in paths for n in names]
        yield from _blocks(child, sub)


def _yaml(value: Any) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def key_table() -> str:
    """The README's key table, one section per config block, from the dataclasses."""
    lines = []
    for paths, cls in _blocks(Settings, [""]):
        heading = ", ".join(f"`{p}.*`" for p in paths) if paths != [""] else "root"
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")
        lines += [f"**{heading}**: {doc}", "", "| key | default | meaning |", "|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            default = _yaml(f.default)
            lines.append(f"| `{f.name}` | `{default}` | {f.metadata['help']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


README = Path(__file__).with_name("README.md")
TABLE_BEGIN = "<!-- key table: generated by `python -m flatrl.agents.sac.settings` -->"
TABLE_END = "<!-- end of key table -->"


def readme_with_table(text: str) -> str:
    """``text`` with the part between the table markers replaced by :func:`key_table`."""
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}\n{key_table()}{TABLE_END}{tail}"


store_schema()

if __name__ == "__main__":
    # Regenerate the README's key table after changing a dataclass field.
    README.write_text(readme_with_table(README.read_text()))
