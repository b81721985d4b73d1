"""The RL training loop: rollouts, A2C/REINFORCE updates, TensorBoard, checkpoints, resume.

Resuming is exact where the environments can be saved (vector envs such as CartPole): a run of
2N epochs and a run of N epochs resumed for N more give the same metrics and parameters on
CPU. The checkpoint then holds the model, the optimizer, every RNG state, the reward normaliser,
the episode statistics, the next rollout's context slots and the pickled environments.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from flatrl.optim import SAM, unperturbed
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
    """The network sizes and planning settings (saved in checkpoints; see world_model.py)."""
    return ModelConfig(
        z_dim=cfg.resolved_z_dim,
        memory_window=cfg.resolved_window,
        memory_layers=cfg.resolved_layers,
        improved_controller=cfg.agent.use_improved_controller,
        planning_horizon=cfg.planning.planning_horizon,
        plan_weight=cfg.planning.plan_weight,
        gamma=cfg.update.gamma,
    )


def a2c_config(cfg: TrainConfig) -> A2CConfig:
    """The update section with the algorithm's settings filled in (A2C with --use-a2c, else
    REINFORCE with a baseline: Monte-Carlo returns, one pass per rollout, no clip)."""
    return A2CConfig.from_options(cfg.update, cfg.agent.use_a2c, cfg.optim.max_grad_norm)


def build_optimizer(model: WorldModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or flatrl.optim.SAM around Adam perturbing only --sam-scope (memory by default)."""
    adam = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate, eps=1e-5)
    if cfg.optim.optimizer == "adam":
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
    return SAM.from_config(adam, cfg.optim.sam_config(), scope=scopes[cfg.optim.scope])


def run_name(cfg: TrainConfig) -> str:
    """TensorBoard run directory: the run tag plus time and process id (unique per process)."""
    return f"{cfg.run_tag()}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}"


def _resume(
    cfg: TrainConfig, model: WorldModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict | None:
    """--resume: the saved run state, its weights and optimizer state already loaded (after
    checking that the checkpoint fits this model, optimizer and algorithm); None without it."""
    path = cfg.resume_path()
    if path is None:
        return None
    state = checkpoint.load(path, device)
    checkpoint.check_compatible(state, model.cfg, cfg.env.env_name, path)
    checkpoint.check_resumable(
        state,
        cfg.optim.optimizer,
        cfg.algorithm,
        path,
        optimizer.variant if isinstance(optimizer, SAM) else None,
    )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def train(cfg: TrainConfig) -> TrainResult:
    """Train until --max-epoch (or --max-env-steps); see config.py for what an epoch is."""
    assert cfg.spec is not None, "call config.validate(cfg) first"
    env, run = cfg.env, cfg.run
    start_time = time.time()
    seed_everything(run.seed)
    device = cfg.torch_device()
    model = WorldModel(cfg.spec, model_config(cfg)).to(device)
    if run.load_path:
        parts = checkpoint.load_weights(model, run.load_path, env.env_name)
        tqdm.write(f"loaded {', '.join(parts)} from {run.load_path}")
    optimizer = build_optimizer(model, cfg)
    epoch, env_steps, best = 0, 0, -float("inf")
    log_dir = os.path.join(run.log_dir, run_name(cfg))
    state = _resume(cfg, model, optimizer, device)
    if state is not None:
        epoch, env_steps, best = state["epoch"], state["env_steps"], state["best_reward"]
        log_dir = state["log_dir"]
    # Where the environments could not be saved (e.g. Box2D ones), a resumed run starts fresh
    # episodes, seeded apart from the episodes the first part of the run already played.
    env_seed = run.seed + 7919 * epoch
    envs = make_vector_env(env.env_name, cfg.num_envs, env_seed)
    collector = RolloutCollector(
        envs, model, env.n_steps, device, env_seed, cfg.update.gamma, env.normalize_rewards
    )
    if state is not None:
        exact = collector.load_state_dict(state["collector"])
        set_rng_state(state["rng"])  # last: building the run above drew from the generators
        how = "episodes in flight continue" if exact else "environments start fresh episodes"
        tqdm.write(
            f"resumed from {cfg.resume_path()} at epoch {epoch} ({env_steps} env steps; {how})"
        )
    writer = SummaryWriter(log_dir=log_dir, purge_step=epoch if state is not None else None)
    hp = a2c_config(cfg)
    steps_per_epoch = env.n_steps * cfg.num_envs
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
                env_name=env.env_name,
                optimizer_name=cfg.optim.optimizer,
                algorithm=cfg.algorithm,
            ),
        )

    bar = tqdm(total=run.max_epoch, initial=epoch, disable=not run.progress, desc=env.env_name)
    history: list[dict[str, float]] = []
    try:
        while epoch < run.max_epoch:
            if run.max_env_steps is not None and env_steps + steps_per_epoch > run.max_env_steps:
                break  # a budget is a cap: never start an epoch that would overrun it
            t0 = time.time()
            # Momentum-SAM keeps the weights perturbed between updates: act at the trained w
            # (for every other optimizer `unperturbed` does nothing).
            with unperturbed(optimizer):
                rollout = collector.collect(plan=epoch >= cfg.planning.planning_start_epoch)
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
            if epoch % run.save_every == 0:
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
        if run.eval_episodes > 0:
            with unperturbed(optimizer):  # evaluate the trained weights w, not Momentum-SAM's w~
                result.eval_returns = evaluate(model, run.eval_episodes, run.seed + 10_000, device)
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
