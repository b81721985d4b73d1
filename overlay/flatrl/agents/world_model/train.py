"""The RL training loop: rollouts, A2C/REINFORCE updates, TensorBoard, checkpoints, resume.

Resuming is exact where the environments can be saved (vector envs such as CartPole): a run of
2N epochs and a run of N epochs resumed for N more give the same metrics and parameters on
CPU. The checkpoint then holds the model, the optimizer, every RNG state, the reward normaliser,
the episode statistics, the next rollout's context slots and the pickled environments.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from flatrl.optim import SAM
from flatrl.runtime import seed_everything, set_rng_state

from . import checkpoint
from .a2c import A2CConfig, a2c_update
from .config import TrainConfig
from .envs import make_vector_env
from .evaluate import evaluate
from .rollout import RolloutCollector
from .world_model import ModelConfig, WorldModel


@dataclass
class TrainResult:
    """What a run ends with (the CLI prints it; benchmarks and tests read it)."""

    epochs: int
    env_steps: int
    best_reward: float
    final_mean_reward: float | None
    log_dir: str
    last_checkpoint: str
    eval_returns: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # one dict per epoch this process trained: epoch, env_steps, mean_episode_reward and the
    # update's losses, gradient norms and sharpness (no timings, so runs can be compared)
    history: list[dict[str, float]] = field(default_factory=list)


def model_config(cfg: TrainConfig) -> ModelConfig:
    return ModelConfig(
        z_dim=cfg.resolved_z_dim,
        memory_window=cfg.resolved_window,
        memory_layers=cfg.resolved_layers,
        improved_controller=cfg.use_improved_controller,
        planning_horizon=cfg.planning_horizon,
        plan_weight=cfg.plan_weight,
        gamma=cfg.gamma,
    )


def a2c_config(cfg: TrainConfig) -> A2CConfig:
    """The update's fields of the run's config, taken by name so the two cannot drift apart.

    Without --use-a2c the update is REINFORCE with a baseline: Monte-Carlo returns without
    bootstrapping, one pass per rollout, no clip (config.validate refuses flags asking for more).
    """
    shared = {f.name: getattr(cfg, f.name) for f in fields(A2CConfig) if hasattr(cfg, f.name)}
    for name in ("gae_lambda", "update_epochs", "clip_range"):
        shared[name] = cfg.resolved(name)
    shared["reinforce"] = not cfg.use_a2c
    return A2CConfig(**shared)


def build_optimizer(model: WorldModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or flatrl.optim.SAM around Adam perturbing only --sam-scope (memory by default)."""
    adam = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    if cfg.optimizer == "adam":
        return adam
    scopes = {
        "all": None,
        "memory": list(model.memory.parameters()),
        "vision": list(model.vision.parameters()),
        "controller": list(model.controller.parameters()),
        "world_model": [
            *model.vision.parameters(),
            *model.memory.parameters(),
            *model.reward_predictor.parameters(),
        ],
    }
    return SAM.from_config(adam, cfg.sam_config(), scope=scopes[cfg.scope])


def run_name(cfg: TrainConfig) -> str:
    """TensorBoard run directory: the run tag plus time and process id (unique per process)."""
    return f"{cfg.run_tag()}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}"


def algorithm(cfg: TrainConfig) -> str:
    return "a2c" if cfg.use_a2c else "reinforce"


def train(cfg: TrainConfig) -> TrainResult:
    """Train until --max-epoch (or --max-env-steps); see config.py for what an epoch is."""
    assert cfg.spec is not None, "call config.validate(cfg) first"
    start_time = time.time()
    seed_everything(cfg.seed)
    device = cfg.torch_device()
    model = WorldModel(cfg.spec, model_config(cfg)).to(device)
    if cfg.load_path:
        parts = checkpoint.load_weights(model, cfg.load_path, cfg.env_name)
        tqdm.write(f"loaded {', '.join(parts)} from {cfg.load_path}")
    optimizer = build_optimizer(model, cfg)
    epoch, env_steps, best = 0, 0, -float("inf")
    log_dir = os.path.join(cfg.log_dir, run_name(cfg))
    resume = cfg.resume_path()
    state = None
    if resume is not None:
        state = checkpoint.load(resume, device)
        checkpoint.check_compatible(state, model.cfg, cfg.env_name, resume)
        checkpoint.check_resumable(state, cfg.optimizer, algorithm(cfg), resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, env_steps, best = state["epoch"], state["env_steps"], state["best_reward"]
        log_dir = state["log_dir"]
    # Where the environments could not be saved (e.g. Box2D ones), a resumed run starts fresh
    # episodes, seeded apart from the episodes the first part of the run already played.
    env_seed = cfg.seed + 7919 * epoch
    envs = make_vector_env(cfg.env_name, cfg.num_envs, env_seed)
    collector = RolloutCollector(
        envs, model, cfg.n_steps, device, env_seed, cfg.gamma, cfg.normalize_rewards
    )
    if state is not None:
        exact = collector.load_state_dict(state["collector"])
        set_rng_state(state["rng"])  # last: building the run above drew from the generators
        how = "episodes in flight continue" if exact else "environments start fresh episodes"
        tqdm.write(f"resumed from {resume} at epoch {epoch} ({env_steps} env steps; {how})")
    writer = SummaryWriter(log_dir=log_dir, purge_step=epoch if resume else None)
    hp = a2c_config(cfg)
    steps_per_epoch = cfg.n_steps * cfg.num_envs
    last_path = cfg.checkpoint_path("last")

    def save(path: str) -> None:
        checkpoint.save(
            path,
            checkpoint.run_state(
                model,
                optimizer,
                epoch=epoch,
                env_steps=env_steps,
                best_reward=best,
                collector=collector.state_dict(),
                log_dir=log_dir,
                env_name=cfg.env_name,
                optimizer_name=cfg.optimizer,
                algorithm=algorithm(cfg),
            ),
        )

    bar = tqdm(total=cfg.max_epoch, initial=epoch, disable=not cfg.progress, desc=cfg.env_name)
    history: list[dict[str, float]] = []
    try:
        while epoch < cfg.max_epoch:
            if cfg.max_env_steps is not None and env_steps + steps_per_epoch > cfg.max_env_steps:
                break  # a budget is a cap: never start an epoch that would overrun it
            t0 = time.time()
            rollout = collector.collect(plan=epoch >= cfg.planning_start_epoch)
            env_steps += steps_per_epoch
            metrics = a2c_update(model, optimizer, rollout, hp)
            epoch += 1
            mean_reward = collector.episodes.mean_return()
            history.append(
                {"epoch": epoch, "env_steps": env_steps, "mean_episode_reward": mean_reward}
                | metrics
            )
            _log(writer, metrics, mean_reward, collector, epoch, env_steps, steps_per_epoch, t0)
            if mean_reward is not None and mean_reward > best:
                best = mean_reward
                save(cfg.checkpoint_path("best"))
            if epoch % cfg.save_every == 0:
                save(last_path)
            bar.update(1)
            bar.set_postfix(
                reward=f"{mean_reward:.1f}" if mean_reward is not None else "-", steps=env_steps
            )
        save(last_path)
        result = TrainResult(
            epoch,
            env_steps,
            best,
            collector.episodes.mean_return(),
            log_dir,
            last_path,
            history=history,
        )
        if cfg.eval_episodes > 0:
            result.eval_returns = evaluate(model, cfg.eval_episodes, cfg.seed + 10_000, device)
            writer.add_scalar("eval/mean_return", float(np.mean(result.eval_returns)), epoch)
        result.seconds = time.time() - start_time
        return result
    finally:
        bar.close()
        writer.close()
        envs.close()


def _log(writer, metrics, mean_reward, collector, epoch, env_steps, steps_per_epoch, t0) -> None:
    """TensorBoard scalars: train/* losses and returns, gradients/*_norm per model part."""
    if mean_reward is not None:
        writer.add_scalar("train/mean_episode_reward", mean_reward, epoch)
        writer.add_scalar(
            "train/mean_episode_length", float(np.mean(collector.episodes.lengths)), epoch
        )
    for key in (
        "policy_loss",
        "value_loss",
        "memory_loss",
        "entropy",
        "reward_loss",
        "vision_loss",
        "total_loss",
        "explained_variance",
        "sharpness",
    ):
        if key in metrics:
            writer.add_scalar(f"train/{key}", metrics[key], epoch)
    for key, value in metrics.items():
        if key.startswith("grad/"):
            writer.add_scalar(f"gradients/{key[5:]}_norm", value, epoch)
    writer.add_scalar("train/env_steps", env_steps, epoch)
    writer.add_scalar("train/env_steps_per_second", steps_per_epoch / (time.time() - t0), epoch)
