"""Run configuration and its validation (every check runs before anything is built).

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
from dataclasses import dataclass, field

import torch

from flatrl.optim import SAMConfig
from flatrl.runtime import resolve_device

from .envs import EnvSpec, auto_env_count, describe_env

SAM_SCOPES = ("memory", "all", "vision", "controller", "world_model")
# SAMConfig reports errors under the names the user typed.
SAM_FLAGS = {
    "rho": "--sam-rho",
    "adaptive": "--sam-adaptive",
    "every_k": "--sam-every",
    "scope": "--sam-scope",
    "clip_grad_norm": "--max-grad-norm",
}
# What --use-a2c uses when the flag is not given; REINFORCE (no --use-a2c) takes no such settings.
A2C_DEFAULTS = {"gae_lambda": 0.95, "update_epochs": 4, "clip_range": 0.2}


@dataclass
class TrainConfig:
    """All CLI options. None means "the default for this kind of run" (see the properties)."""

    env_name: str = "CarRacing-v3"
    max_epoch: int = 200
    learning_rate: float = 1e-4
    env_batch_number: str = "auto"
    pretrain_vision: bool = False
    pretrain_memory: bool = False
    load_path: str = ""
    save_path: str = "./saved_models/"
    use_improved_controller: bool = False
    use_a2c: bool = False
    planning_horizon: int = 5
    n_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float | None = None
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    memory_coef: float = 0.1
    max_grad_norm: float = 0.5
    num_minibatches: int = 4
    update_epochs: int | None = None
    clip_range: float | None = None
    plan_weight: float = 0.3
    planning_start_epoch: int = 100
    memory_window: int | None = None
    memory_layers: int | None = None
    z_dim: int | None = None
    normalize_rewards: bool = True
    optimizer: str = "adam"
    sam_rho: float | None = None
    sam_scope: str | None = None
    sam_adaptive: bool = False
    sam_every: int | None = None
    seed: int = 0
    device: str = "auto"
    resume: str | None = None
    log_dir: str = "runs"
    save_every: int = 10
    max_env_steps: int | None = None
    eval_episodes: int = 0
    progress: bool = True
    spec: EnvSpec | None = field(default=None, repr=False)

    @property
    def scope(self) -> str:
        """Parameters SAM perturbs: the memory (dynamics model) unless --sam-scope says."""
        return "memory" if self.sam_scope is None else self.sam_scope

    def sam_config(self) -> SAMConfig:
        """The SAM settings (raises SAMConfigError, a ValueError, naming the flag at fault)."""
        config = SAMConfig(
            rho=0.05 if self.sam_rho is None else self.sam_rho,
            adaptive=self.sam_adaptive,
            every_k=1 if self.sam_every is None else self.sam_every,
            scope=self.scope,
            clip_grad_norm=self.max_grad_norm,
            names=SAM_FLAGS,
        )
        config.check_scope(SAM_SCOPES, "--sam-scope")
        return config

    def resolved(self, name: str) -> float:
        """gae_lambda / update_epochs / clip_range: the flag if given, else the algorithm's.

        REINFORCE (no --use-a2c) has Monte-Carlo returns (lambda 1), one pass, no clip.
        """
        value = getattr(self, name)
        if value is not None:
            return value
        reinforce = {"gae_lambda": 1.0, "update_epochs": 1, "clip_range": 0.0}
        return A2C_DEFAULTS[name] if self.use_a2c else reinforce[name]

    @property
    def num_envs(self) -> int:
        assert self.spec is not None
        if self.env_batch_number == "auto":
            return auto_env_count(self.spec)
        return int(self.env_batch_number)

    @property
    def resolved_window(self) -> int:
        """Auto: 8 steps of history for vector envs (CartPole needs little), 16 for images."""
        assert self.spec is not None
        if self.memory_window is not None:
            return self.memory_window
        return 16 if self.spec.obs_kind == "image" else 8

    @property
    def resolved_layers(self) -> int:
        """Auto: 1 transformer layer for vector envs, 2 for images."""
        assert self.spec is not None
        if self.memory_layers is not None:
            return self.memory_layers
        return 2 if self.spec.obs_kind == "image" else 1

    @property
    def resolved_z_dim(self) -> int:
        assert self.spec is not None
        if self.z_dim is not None:
            return self.z_dim
        return 64 if self.spec.obs_kind == "image" else 32

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def run_tag(self) -> str:
        """What tells runs apart: env, controller, algorithm, optimizer and seed.

        Checkpoint names and TensorBoard run names carry it, so concurrent runs that differ in
        any of these never write the same file.
        """
        ctrl = "improved" if self.use_improved_controller else "legacy"
        algo = "a2c" if self.use_a2c else "reinforce"
        return f"{self.env_name}_{ctrl}_{algo}_{self.optimizer}_s{self.seed}"

    def checkpoint_path(self, kind: str) -> str:
        """`<save-path>/<kind>_<run tag>.pt` (kind: best or last)."""
        return os.path.join(self.save_path, f"{kind}_{self.run_tag()}.pt")

    def resume_path(self) -> str | None:
        if self.resume is None:
            return None
        return self.checkpoint_path("last") if self.resume == "auto" else self.resume


def _fail(msg: str) -> None:
    raise ValueError(msg)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every option, resolve the env spec, and return cfg; raises one ValueError."""
    positive = {
        "--max-epoch": cfg.max_epoch,
        "--n-steps": cfg.n_steps,
        "--num-minibatches": cfg.num_minibatches,
        "--update-epochs": 1 if cfg.update_epochs is None else cfg.update_epochs,
        "--save-every": cfg.save_every,
        "--memory-window": 1 if cfg.memory_window is None else cfg.memory_window,
        "--memory-layers": 1 if cfg.memory_layers is None else cfg.memory_layers,
    }
    for flag, value in positive.items():
        if value < 1:
            _fail(f"{flag} must be >= 1, got {value}.")
    if cfg.learning_rate <= 0:
        _fail(f"--learning-rate must be > 0, got {cfg.learning_rate}.")
    if cfg.planning_start_epoch < 0:
        _fail(f"--planning-start-epoch must be >= 0, got {cfg.planning_start_epoch}.")
    if cfg.planning_horizon < 0:
        _fail(
            f"--planning-horizon must be >= 0 (0 turns planning off), got {cfg.planning_horizon}."
        )
    if not 0 < cfg.gamma <= 1:
        _fail(f"--gamma must be in (0, 1], got {cfg.gamma}.")
    if cfg.gae_lambda is not None and not 0 <= cfg.gae_lambda <= 1:
        _fail(f"--gae-lambda must be in [0, 1], got {cfg.gae_lambda}.")
    for flag, value in {
        "--value-coef": cfg.value_coef,
        "--entropy-coef": cfg.entropy_coef,
        "--memory-coef": cfg.memory_coef,
        "--eval-episodes": cfg.eval_episodes,
    }.items():
        if value < 0:
            _fail(f"{flag} must be >= 0, got {value}.")
    if cfg.clip_range is not None and not 0 <= cfg.clip_range < 1:
        _fail(f"--clip-range must be in [0, 1) (0: plain A2C surrogate), got {cfg.clip_range}.")
    if cfg.max_grad_norm <= 0:
        _fail(f"--max-grad-norm must be > 0, got {cfg.max_grad_norm}.")
    if not 0 <= cfg.plan_weight <= 1:
        _fail(f"--plan-weight must be in [0, 1], got {cfg.plan_weight}.")
    if cfg.max_env_steps is not None and cfg.max_env_steps < 1:
        _fail(f"--max-env-steps must be >= 1, got {cfg.max_env_steps}.")
    if cfg.env_batch_number != "auto":
        try:
            n = int(cfg.env_batch_number)
        except ValueError:
            n = 0
        if n < 1:
            _fail(
                "--env-batch-number must be 'auto' or an integer >= 1, "
                f"got {cfg.env_batch_number!r}."
            )
    if cfg.optimizer not in ("adam", "sam"):
        _fail(f"--optimizer must be adam or sam, got {cfg.optimizer!r}.")
    sam_flags = {
        "--sam-rho": cfg.sam_rho is not None,
        "--sam-scope": cfg.sam_scope is not None,
        "--sam-adaptive": cfg.sam_adaptive,
        "--sam-every": cfg.sam_every is not None,
    }
    given = [flag for flag, set_ in sam_flags.items() if set_]
    if cfg.optimizer != "sam" and given:
        _fail(
            f"{'/'.join(given)} only apply with --optimizer sam; add --optimizer sam or drop them."
        )
    if cfg.optimizer == "sam":
        cfg.sam_config()  # SAMConfigError (a ValueError) names the flag and a fix
    try:
        resolve_device(cfg.device)
    except ValueError as err:
        _fail(f"--device {cfg.device}: {err}")
    if cfg.pretrain_vision and cfg.pretrain_memory:
        _fail(
            "--pretrain-vision and --pretrain-memory are separate stages; "
            "run them one after the other."
        )
    pretrain = cfg.pretrain_vision or cfg.pretrain_memory
    if pretrain and cfg.use_a2c:
        _fail(
            "--use-a2c trains the controller end to end; "
            "drop it for --pretrain-vision/--pretrain-memory."
        )
    a2c_only = {
        "--gae-lambda": cfg.gae_lambda is not None,
        "--clip-range": cfg.clip_range is not None and cfg.clip_range > 0,
        "--update-epochs": cfg.update_epochs is not None and cfg.update_epochs > 1,
    }
    asked = [flag for flag, set_ in a2c_only.items() if set_]
    if asked and pretrain:
        _fail(f"{'/'.join(asked)} tune the RL update; pre-training does not use them, drop them.")
    if asked and not cfg.use_a2c:
        _fail(
            f"{'/'.join(asked)} need --use-a2c: without it the update is REINFORCE with a value "
            "baseline (Monte-Carlo returns, one pass per rollout, no clip). Add --use-a2c or drop "
            f"{'/'.join(asked)}."
        )
    if pretrain and cfg.resume is not None:
        _fail("--resume continues an RL run; pre-training stages are short, rerun them instead.")
    if cfg.resume is not None and cfg.load_path:
        _fail("--resume restores the whole run (weights, optimizer, counters); drop --load-path.")
    if cfg.load_path and not os.path.isfile(cfg.load_path):
        _fail(f"--load-path {cfg.load_path!r} does not exist.")
    cfg.spec = describe_env(cfg.env_name)
    if cfg.pretrain_memory and cfg.spec.obs_kind == "image" and not cfg.load_path:
        _fail(
            f"--pretrain-memory on the image env {cfg.env_name} needs a pre-trained VQ-VAE: run "
            "--pretrain-vision first and pass "
            f"--load-path {cfg.save_path}pretrainedV_{cfg.env_name}.pt."
        )
    resume = cfg.resume_path()
    if resume is not None and not os.path.isfile(resume):
        _fail(f"--resume: no checkpoint at {resume!r}; train once with --save-path first.")
    return cfg
