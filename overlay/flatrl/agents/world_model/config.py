"""Run configuration and its validation (every check runs before anything is built).

One *epoch* is one rollout of `n_steps` vector steps in each of the `env_batch_number`
environments (n_steps x n_envs env steps) followed by `update_epochs` passes over it in
`num_minibatches` gradient steps each. With --update-epochs 1 --num-minibatches 1
--clip-range 0 that is exactly one A2C update per epoch. A 100k-step budget then buys only ~50
updates, too few to solve CartPole, so the defaults reuse each rollout for 4 x 4 steps and
keep the later ones near the behaviour policy with PPO's ratio clip (0.2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .envs import EnvSpec, auto_env_count, describe_env

SAM_SCOPES = ("memory", "all", "vision", "controller", "world_model")


@dataclass
class TrainConfig:
    """All CLI options; defaults are the seed's unless noted."""

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
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    memory_coef: float = 0.1
    max_grad_norm: float = 0.5
    # ours
    num_minibatches: int = 4
    update_epochs: int = 4
    clip_range: float = 0.2
    plan_weight: float = 0.3
    planning_start_epoch: int = 100
    memory_window: int | None = None
    memory_layers: int | None = None
    z_dim: int | None = None
    normalize_rewards: bool = True
    optimizer: str = "adam"
    sam_rho: float | None = None
    sam_scope: str | None = None
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
    def rho(self) -> float:
        return 0.05 if self.sam_rho is None else self.sam_rho

    @property
    def scope(self) -> str:
        return "memory" if self.sam_scope is None else self.sam_scope

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
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def checkpoint_path(self, kind: str) -> str:
        return os.path.join(self.save_path, f"{kind}_{self.env_name}.pt")

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
        "--update-epochs": cfg.update_epochs,
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
    if not 0 < cfg.gamma <= 1 or not 0 <= cfg.gae_lambda <= 1:
        _fail(
            f"--gamma must be in (0, 1] and --gae-lambda in [0, 1], "
            f"got {cfg.gamma}, {cfg.gae_lambda}."
        )
    for flag, value in {
        "--value-coef": cfg.value_coef,
        "--entropy-coef": cfg.entropy_coef,
        "--memory-coef": cfg.memory_coef,
        "--eval-episodes": cfg.eval_episodes,
    }.items():
        if value < 0:
            _fail(f"{flag} must be >= 0, got {value}.")
    if not 0 <= cfg.clip_range < 1:
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
    if cfg.optimizer != "sam" and (cfg.sam_rho is not None or cfg.sam_scope is not None):
        _fail(
            "--sam-rho/--sam-scope only apply with --optimizer sam; "
            "add --optimizer sam or drop them."
        )
    if cfg.sam_rho is not None and cfg.sam_rho <= 0:
        _fail(f"--sam-rho must be > 0, got {cfg.sam_rho}.")
    if cfg.sam_scope is not None and cfg.sam_scope not in SAM_SCOPES:
        _fail(f"--sam-scope must be one of {SAM_SCOPES}, got {cfg.sam_scope!r}.")
    if cfg.device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {cfg.device!r}.")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        _fail(
            "--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto."
        )
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
