"""Run configuration: nested sections, one field per CLI flag, and their validation.

Each field is declared once, here, with its default, its help text and (where a range applies)
its rule; `cli.py` generates the command line from these fields, so a new option is one new
field. Every check runs in `validate`, before anything is built.

One *epoch* is one rollout of `n_steps` vector steps in each of the `env_batch_number`
environments (n_steps x n_envs env steps) followed by `update_epochs` passes over it in
`num_minibatches` gradient steps each.

With --use-a2c (GAE, bootstrapped returns) the defaults reuse each rollout for 4 passes and keep
the later steps near the behaviour policy with PPO's ratio clip (0.2): --update-epochs 1
--num-minibatches 1 --clip-range 0 is exactly one A2C update per epoch, but a 100k-step budget
then buys only ~50 updates, too few to solve CartPole. Without --use-a2c the update is plain
REINFORCE with a value baseline: Monte-Carlo returns (no bootstrapping), one pass per rollout, no
clip; asking for rollout reuse, a clip or a GAE lambda there is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields
from typing import Any

import torch

from flatrl.optim import SAMConfig
from flatrl.optim.sam_config import VARIANTS as SAM_VARIANTS
from flatrl.runtime import resolve_device

from .envs import EnvSpec, auto_env_count, describe_env

SAM_SCOPES = ("memory", "all", "vision", "controller", "world_model")
OPTIMIZERS = ("adam", "sam")
# What --use-a2c uses when the flag is not given; REINFORCE (no --use-a2c) takes no such settings.
A2C_DEFAULTS = {"gae_lambda": 0.95, "update_epochs": 4, "clip_range": 0.2}
REINFORCE_SETTINGS = {"gae_lambda": 1.0, "update_epochs": 1, "clip_range": 0.0}

# A rule is (what the value must be, test that is true for a bad value); validate() reports
# "<flag> must be <what>, got <value>." The tests are written as the failing condition so that
# a value is refused exactly when it always was.
Rule = tuple[str, Callable[[Any], bool]]
AT_LEAST_1: Rule = (">= 1", lambda v: v < 1)
NON_NEGATIVE: Rule = (">= 0", lambda v: v < 0)
POSITIVE: Rule = ("> 0", lambda v: v <= 0)
UNIT_INTERVAL: Rule = ("in [0, 1]", lambda v: not 0 <= v <= 1)


def option(
    default: Any,
    help: str,
    *,
    rule: Rule | None = None,
    choices: tuple[str, ...] | None = None,
    const: str | None = None,
    sam: str | None = None,
) -> Any:
    """A config field that is also a CLI flag (`--field-name`; `--no-field-name` for a bool that
    defaults to True). `const` makes the value optional on the command line (`--resume [PATH]`);
    `sam` names the SAMConfig field it feeds."""
    meta = {"help": help, "rule": rule, "choices": choices, "const": const, "sam": sam}
    return field(default=default, metadata=meta)


def flag(f: Field) -> str:
    """The flag of a field: what the user types, and what every error message names."""
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


@dataclass
class EnvConfig:
    """environment and rollouts"""

    env_name: str = option("CarRacing-v3", "gymnasium environment id")
    env_batch_number: str = option(
        "auto", "parallel envs: 'auto' (16 for vector, 4 for image envs) or an int"
    )
    n_steps: int = option(128, "steps per env in one rollout (one epoch)", rule=AT_LEAST_1)
    normalize_rewards: bool = option(
        True,
        "train on raw rewards instead of rewards / running std of the return (RL and "
        "pre-training alike)",
    )


@dataclass
class AgentConfig:
    """controller, algorithm and model sizes"""

    use_improved_controller: bool = option(
        False,
        "MLP policy and value networks that blend in the planner; without it: the legacy "
        "linear layers, no planning",
    )
    use_a2c: bool = option(
        False,
        "A2C with GAE and bootstrapped returns (rollouts reused, see --update-epochs); "
        "without it: REINFORCE with a value baseline (Monte-Carlo returns, no bootstrapping, one "
        "pass per rollout, no clip)",
    )
    memory_window: int | None = option(
        None, "history length of the transformer (8 vector, 16 image)", rule=AT_LEAST_1
    )
    memory_layers: int | None = option(
        None, "transformer layers (1 vector, 2 image)", rule=AT_LEAST_1
    )
    z_dim: int | None = option(None, "latent size (32 vector, 64 image)")


@dataclass
class PlanningConfig:
    """planning"""

    planning_horizon: int = option(
        5,
        "imagined steps per planned action; 0 turns planning off",
        rule=(">= 0 (0 turns planning off)", lambda v: v < 0),
    )
    plan_weight: float = option(
        0.3, "share of the planner in the blended policy (default 0.3)", rule=UNIT_INTERVAL
    )
    planning_start_epoch: int = option(
        100,
        "act with the policy alone before this epoch (a planner on an untrained world "
        "model only adds noise); evaluation always plans",
        rule=NON_NEGATIVE,
    )


@dataclass
class UpdateConfig:
    """update hyperparameters (None: the algorithm's choice, see A2C_DEFAULTS)"""

    gamma: float = option(0.99, "discount", rule=("in (0, 1]", lambda v: not 0 < v <= 1))
    gae_lambda: float | None = option(
        None, "GAE lambda, --use-a2c only (default 0.95)", rule=UNIT_INTERVAL
    )
    value_coef: float = option(0.5, "weight of the value loss", rule=NON_NEGATIVE)
    entropy_coef: float = option(0.01, "weight of the entropy bonus", rule=NON_NEGATIVE)
    memory_coef: float = option(
        0.1, "weight of the memory (next latent) and reward losses", rule=NON_NEGATIVE
    )
    num_minibatches: int = option(4, "gradient steps per pass over a rollout", rule=AT_LEAST_1)
    update_epochs: int | None = option(
        None,
        "passes over each rollout: 4 with --use-a2c (1, with --num-minibatches 1 and "
        "--clip-range 0: plain A2C); REINFORCE takes exactly 1",
        rule=AT_LEAST_1,
    )
    clip_range: float | None = option(
        None,
        "PPO ratio clip for the steps after the first on a rollout, --use-a2c only "
        "(default 0.2; 0: none)",
        rule=("in [0, 1) (0: plain A2C surrogate)", lambda v: not 0 <= v < 1),
    )


@dataclass
class OptimConfig:
    """optimizer; the sam_* fields apply with --optimizer sam only"""

    optimizer: str = option("adam", "adam, or SAM around adam", choices=OPTIMIZERS)
    learning_rate: float = option(1e-4, "Adam learning rate", rule=POSITIVE)
    max_grad_norm: float = option(
        0.5, "clip the update's gradient to this total norm", rule=POSITIVE, sam="clip_grad_norm"
    )
    sam_rho: float | None = option(
        None,
        "SAM radius, >= 0 (default 0.05; 0: a zero-radius SAM step, which still takes the "
        "second pass and updates exactly as Adam does)",
        sam="rho",
    )
    sam_scope: str | None = option(
        None,
        "parameters SAM perturbs (default memory: the dynamics model)",
        choices=SAM_SCOPES,
        sam="scope",
    )
    sam_adaptive: bool = option(
        False, "ASAM: scale the perturbation element-wise by |w|", sam="adaptive"
    )
    sam_every: int | None = option(
        None,
        "a SAM step on every k-th update, plain Adam steps between (default 1; LookSAM's k)",
        sam="every_k",
    )
    sam_variant: str | None = option(
        None,
        "sam (default), or a cheaper relative (docs/sam_variants.md): looksam (SAM gradient "
        "every --sam-every updates, its orthogonal part reused between), msam (Momentum-SAM: "
        "the perturbation comes from Adam's momentum, no second pass), aesam (SAM only on "
        "updates with a high gradient norm)",
        choices=SAM_VARIANTS,
        sam="variant",
    )
    sam_looksam_alpha: float | None = option(
        None, "LookSAM's alpha, >= 0 (default 0.7)", sam="looksam_alpha"
    )
    sam_aesam_c: float | None = option(
        None,
        "AE-SAM threshold in EMA std devs above the EMA mean of |g|^2 (default 0)",
        sam="aesam_c",
    )
    sam_aesam_decay: float | None = option(
        None, "AE-SAM's EMA decay, in [0, 1) (default 0.9)", sam="aesam_decay"
    )

    @property
    def scope(self) -> str:
        """Parameters SAM perturbs: the memory (dynamics model) unless --sam-scope says."""
        return "memory" if self.sam_scope is None else self.sam_scope

    def sam_given(self) -> list[str]:
        """The flags of the sam_* fields set away from their defaults."""
        return [flag(f) for f in fields(self) if f.name.startswith("sam_") and _changed(self, f)]

    def sam_config(self) -> SAMConfig:
        """The SAM settings (raises SAMConfigError, a ValueError, naming the flag at fault)."""
        config = SAMConfig(
            rho=0.05 if self.sam_rho is None else self.sam_rho,
            adaptive=self.sam_adaptive,
            every_k=1 if self.sam_every is None else self.sam_every,
            scope=self.scope,
            clip_grad_norm=self.max_grad_norm,
            **{
                key: value
                for key, value in (
                    ("variant", self.sam_variant),
                    ("looksam_alpha", self.sam_looksam_alpha),
                    ("aesam_c", self.sam_aesam_c),
                    ("aesam_decay", self.sam_aesam_decay),
                )
                if value is not None  # unset: SAMConfig's default
            },
            names={f.metadata["sam"]: flag(f) for f in fields(self) if f.metadata["sam"]},
        )
        config.check_scope(SAM_SCOPES, "--sam-scope")
        return config


@dataclass
class RunConfig:
    """run: stage, budget, files, device"""

    pretrain_vision: bool = option(False, "pre-train the vision model on random rollouts")
    pretrain_memory: bool = option(
        False, "pre-train the memory and reward predictor on random rollouts"
    )
    max_epoch: int = option(200, "epochs to train (rollout + update each)", rule=AT_LEAST_1)
    max_env_steps: int | None = option(None, "stop early at this many env steps", rule=AT_LEAST_1)
    seed: int = option(0, "random seed of the networks, the updates and the environments")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    load_path: str = option("", "start from the weights in this file (pre-training or a run)")
    save_path: str = option("./saved_models/", "checkpoint directory (prefix of file names)")
    resume: str | None = option(
        None,
        "continue from a checkpoint (default: <save-path>/last_<env>_<controller>_"
        "<algorithm>_<optimizer>_s<seed>.pt); with environments that can be saved "
        "(e.g. CartPole) the continued run is exactly the uninterrupted one",
        const="auto",
    )
    log_dir: str = option("runs", "TensorBoard root (runs/)")
    save_every: int = option(10, "periodic checkpoint, epochs", rule=AT_LEAST_1)
    eval_episodes: int = option(
        0, "deterministic evaluation episodes after training (0: none)", rule=NON_NEGATIVE
    )
    progress: bool = option(True, "hide the progress bar")


# attribute name on TrainConfig -> section class, in --help order
SECTIONS: dict[str, type] = {
    "env": EnvConfig,
    "agent": AgentConfig,
    "planning": PlanningConfig,
    "update": UpdateConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
# flat field name -> its section, for the old flat spelling `cfg.max_grad_norm` (read only)
FIELD_SECTION = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}
assert len(FIELD_SECTION) == sum(len(fields(c)) for c in SECTIONS.values()), "names must differ"


def _changed(section: Any, f: Field) -> bool:
    return getattr(section, f.name) != f.default


@dataclass
class TrainConfig:
    """All options, by section (`cfg.optim.sam_rho`). `cfg.sam_rho` reads the same field; set
    it through its section. None means "the default for this kind of run" (see the properties).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    spec: EnvSpec | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: the flat names of the fields
        section = FIELD_SECTION.get(name)
        if section is None or section not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.__dict__[section], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FIELD_SECTION:
            raise AttributeError(f"set cfg.{FIELD_SECTION[name]}.{name}, not cfg.{name}")
        super().__setattr__(name, value)

    def options(self) -> Iterator[tuple[Any, Field]]:
        """(section, field) of every option, in --help order."""
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                yield section, f

    def sam_config(self) -> SAMConfig:
        return self.optim.sam_config()

    @property
    def algorithm(self) -> str:
        return "a2c" if self.agent.use_a2c else "reinforce"

    @property
    def pretraining(self) -> bool:
        return self.run.pretrain_vision or self.run.pretrain_memory

    @property
    def num_envs(self) -> int:
        assert self.spec is not None
        if self.env.env_batch_number == "auto":
            return auto_env_count(self.spec)
        return int(self.env.env_batch_number)

    def _by_obs_kind(self, value: int | None, vector: int, image: int) -> int:
        assert self.spec is not None
        if value is not None:
            return value
        return image if self.spec.obs_kind == "image" else vector

    @property
    def resolved_window(self) -> int:
        """Auto: 8 steps of history for vector envs (CartPole needs little), 16 for images."""
        return self._by_obs_kind(self.agent.memory_window, 8, 16)

    @property
    def resolved_layers(self) -> int:
        """Auto: 1 transformer layer for vector envs, 2 for images."""
        return self._by_obs_kind(self.agent.memory_layers, 1, 2)

    @property
    def resolved_z_dim(self) -> int:
        return self._by_obs_kind(self.agent.z_dim, 32, 64)

    def torch_device(self) -> torch.device:
        return resolve_device(self.run.device)

    def run_tag(self) -> str:
        """What tells runs apart: env, controller, algorithm, optimizer and seed.

        Checkpoint names and TensorBoard run names carry it, so concurrent runs that differ in
        any of these never write the same file.
        """
        ctrl = "improved" if self.agent.use_improved_controller else "legacy"
        return (
            f"{self.env.env_name}_{ctrl}_{self.algorithm}_{self.optim.optimizer}_s{self.run.seed}"
        )

    def checkpoint_path(self, kind: str) -> str:
        """`<save-path>/<kind>_<run tag>.pt` (kind: best or last)."""
        return os.path.join(self.run.save_path, f"{kind}_{self.run_tag()}.pt")

    def resume_path(self) -> str | None:
        if self.run.resume is None:
            return None
        return self.checkpoint_path("last") if self.run.resume == "auto" else self.run.resume


def _fail(msg: str) -> None:
    raise ValueError(msg)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every option, resolve the env spec, and return cfg; raises one ValueError."""
    for section, f in cfg.options():
        value, rule = getattr(section, f.name), f.metadata["rule"]
        if rule is not None and value is not None and rule[1](value):
            _fail(f"{flag(f)} must be {rule[0]}, got {value}.")
    _check_choices(cfg)
    _check_combinations(cfg)
    _check_files(cfg)
    return cfg


def _check_choices(cfg: TrainConfig) -> None:
    """Values with a fixed set of spellings, and the SAM settings as SAMConfig sees them."""
    batch = cfg.env.env_batch_number
    if batch != "auto":
        try:
            n = int(batch)
        except ValueError:
            n = 0
        if n < 1:
            _fail(f"--env-batch-number must be 'auto' or an integer >= 1, got {batch!r}.")
    if cfg.optim.optimizer not in OPTIMIZERS:
        _fail(f"--optimizer must be adam or sam, got {cfg.optim.optimizer!r}.")
    given = cfg.optim.sam_given()
    if cfg.optim.optimizer != "sam" and given:
        _fail(
            f"{'/'.join(given)} only apply with --optimizer sam; add --optimizer sam or drop them."
        )
    if cfg.optim.optimizer == "sam":
        cfg.optim.sam_config()  # SAMConfigError (a ValueError) names the flag and a fix
    try:
        resolve_device(cfg.run.device)
    except ValueError as err:
        _fail(f"--device {cfg.run.device}: {err}")


def _check_combinations(cfg: TrainConfig) -> None:
    """Flags that contradict each other: pre-training stages, REINFORCE vs A2C, resume."""
    run, update = cfg.run, cfg.update
    if run.pretrain_vision and run.pretrain_memory:
        _fail(
            "--pretrain-vision and --pretrain-memory are separate stages; "
            "run them one after the other."
        )
    if cfg.pretraining and cfg.agent.use_a2c:
        _fail(
            "--use-a2c trains the controller end to end; "
            "drop it for --pretrain-vision/--pretrain-memory."
        )
    a2c_only = {
        "--gae-lambda": update.gae_lambda is not None,
        "--clip-range": update.clip_range is not None and update.clip_range > 0,
        "--update-epochs": update.update_epochs is not None and update.update_epochs > 1,
    }
    asked = "/".join(name for name, set_ in a2c_only.items() if set_)
    if asked and cfg.pretraining:
        _fail(f"{asked} tune the RL update; pre-training does not use them, drop them.")
    if asked and not cfg.agent.use_a2c:
        _fail(
            f"{asked} need --use-a2c: without it the update is REINFORCE with a value "
            "baseline (Monte-Carlo returns, one pass per rollout, no clip). Add --use-a2c or drop "
            f"{asked}."
        )
    if cfg.pretraining and run.resume is not None:
        _fail("--resume continues an RL run; pre-training stages are short, rerun them instead.")
    if run.resume is not None and run.load_path:
        _fail("--resume restores the whole run (weights, optimizer, counters); drop --load-path.")


def _check_files(cfg: TrainConfig) -> None:
    """The environment exists (sets cfg.spec) and the files to read are there."""
    run, env_name = cfg.run, cfg.env.env_name
    if run.load_path and not os.path.isfile(run.load_path):
        _fail(f"--load-path {run.load_path!r} does not exist.")
    cfg.spec = describe_env(env_name)
    if run.pretrain_memory and cfg.spec.obs_kind == "image" and not run.load_path:
        _fail(
            f"--pretrain-memory on the image env {env_name} needs a pre-trained VQ-VAE: run "
            "--pretrain-vision first and pass "
            f"--load-path {run.save_path}pretrainedV_{env_name}.pt."
        )
    resume = cfg.resume_path()
    if resume is not None and not os.path.isfile(resume):
        _fail(f"--resume: no checkpoint at {resume!r}; train once with --save-path first.")
