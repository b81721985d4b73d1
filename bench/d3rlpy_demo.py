"""Demo: offline RL on Pendulum-v1 with Adam and with SAM, side by side (the `make demo` script).

1. Collects a small offline dataset from gymnasium's Pendulum-v1 with a noisy, partly working
   controller (an energy-pumping swing-up with Gaussian noise and random actions mixed in), so
   the data holds both good and bad behaviour. Nothing is downloaded.
2. Trains the same offline algorithm (IQL by default, or CQL) twice from the same seed: once
   with Adam, once with SAM (SAMFactory around the same Adam) on every optimizer.
3. Prints per-epoch loss, sharpness (L(w+e) - L(w), logged by the patched d3rlpy) and the
   evaluation return, Adam next to SAM, and writes CSV + TensorBoard logs.

    OMP_NUM_THREADS=1 python bench/d3rlpy_demo.py [--algo iql|cql] [--steps 3000]
    tensorboard --logdir <printed log dir>/tensorboard
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def swing_up_action(obs: np.ndarray) -> float:
    """A hand-written Pendulum-v1 controller: pump energy, then balance with a PD law."""
    cos_th, sin_th, th_dot = obs
    theta = math.atan2(sin_th, cos_th)  # 0 = upright
    if cos_th > 0.85:
        return float(np.clip(-10.0 * theta - 2.0 * th_dot, -2.0, 2.0))
    energy = 0.5 * th_dot**2 + 10.0 * (cos_th - 1.0)  # 0 when upright and still
    return float(np.clip(-2.0 * np.sign(th_dot * energy) if th_dot != 0 else 2.0, -2.0, 2.0))


def collect_dataset(
    n_episodes: int, noise: float, random_prob: float, seed: int
) -> tuple[Any, float]:
    """Roll out the noisy controller; return the d3rlpy dataset and the mean episode return."""
    import d3rlpy
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    observations, actions, rewards, terminals, timeouts = [], [], [], [], []
    returns = []
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            if rng.random() < random_prob:
                action = rng.uniform(-2.0, 2.0)
            else:
                action = swing_up_action(obs) + rng.normal(0.0, noise)
            action = np.array([np.clip(action, -2.0, 2.0)], dtype=np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminals.append(float(terminated))
            timeouts.append(float(truncated))
            total += float(reward)
            obs, done = next_obs, terminated or truncated
        returns.append(total)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=np.asarray(observations, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminals=np.asarray(terminals, dtype=np.float32),
        timeouts=np.asarray(timeouts, dtype=np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )
    return dataset, float(np.mean(returns))


def make_config(algo: str, batch_size: int, hidden: int) -> Any:
    import d3rlpy
    from d3rlpy.models import VectorEncoderFactory

    encoder = VectorEncoderFactory(hidden_units=[hidden, hidden])
    common = {
        "batch_size": batch_size,
        "actor_encoder_factory": encoder,
        "critic_encoder_factory": encoder,
        "action_scaler": d3rlpy.preprocessing.MinMaxActionScaler(minimum=-2.0, maximum=2.0),
        # Pendulum's rewards reach -16 per step; scaled down, Q-values stay small enough to fit
        # in a few thousand steps.
        "reward_scaler": d3rlpy.preprocessing.MultiplyRewardScaler(0.1),
    }
    if algo == "iql":
        return d3rlpy.algos.IQLConfig(
            value_encoder_factory=encoder, expectile=0.7, weight_temp=3.0, **common
        )
    return d3rlpy.algos.CQLConfig(n_action_samples=4, conservative_weight=5.0, **common)


def with_sam(config: Any, rho: float) -> Any:
    from d3rlpy.optimizers import SAMFactory

    fields = [f.name for f in dataclasses.fields(config) if f.name.endswith("optim_factory")]
    # The scalar temperature/alpha of CQL stay on plain Adam: SAM is for the networks.
    fields = [f for f in fields if not f.startswith(("temp_", "alpha_"))]
    return dataclasses.replace(
        config, **{f: SAMFactory(base=getattr(config, f), rho=rho) for f in fields}
    )


def train(
    name: str, config: Any, dataset: Any, args: argparse.Namespace, log_root: Path
) -> tuple[list[tuple[int, dict[str, float]]], float]:
    import d3rlpy
    import gymnasium as gym
    from d3rlpy.logging import (
        CombineAdapterFactory,
        FileAdapterFactory,
        TensorboardAdapterFactory,
    )

    d3rlpy.seed(args.seed)
    algo = config.create(device="cpu:0")
    eval_env = gym.make("Pendulum-v1")
    eval_env.reset(seed=args.seed + 10_000)
    start = time.perf_counter()
    results = algo.fit(
        dataset,
        n_steps=args.steps,
        n_steps_per_epoch=args.steps // args.epochs,
        experiment_name=name,
        with_timestamp=False,
        logger_adapter=CombineAdapterFactory(
            [
                FileAdapterFactory(root_dir=str(log_root / "csv")),
                TensorboardAdapterFactory(root_dir=str(log_root / "tensorboard")),
            ]
        ),
        evaluators={
            "return": d3rlpy.metrics.EnvironmentEvaluator(eval_env, n_trials=args.eval_episodes)
        },
        show_progress=False,
        save_interval=args.epochs,
    )
    return results, time.perf_counter() - start


def print_table(algo: str, adam: list[Any], sam: list[Any], steps_per_epoch: int) -> None:
    keys = ["critic_loss", "critic_sharpness", "actor_loss", "actor_sharpness", "return"]
    width = 21

    def cell(value: float | None) -> str:
        return f"{'-' if value is None else f'{value:.4g}':>10s}"

    print(f"{'epoch':>5s} {'step':>6s} |" + "|".join(f"{k:>{width}s}" for k in keys))
    print(f"{'':12s} |" + "|".join(f"{'Adam':>10s} {'SAM':>10s}" for _ in keys))
    for (epoch, m_adam), (_, m_sam) in zip(adam, sam, strict=True):
        cells = [f"{cell(m_adam.get(k))} {cell(m_sam.get(k))}" for k in keys]
        print(f"{epoch:5d} {epoch * steps_per_epoch:6d} |" + "|".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=["iql", "cql"], default="iql")
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps per optimizer")
    parser.add_argument("--epochs", type=int, default=5, help="evaluations during training")
    parser.add_argument("--episodes", type=int, default=40, help="dataset episodes (200 steps)")
    parser.add_argument("--noise", type=float, default=0.3, help="controller action noise std")
    parser.add_argument("--random-prob", type=float, default=0.1, help="share of random actions")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", type=Path, default=Path("d3rlpy_logs/demo"))
    args = parser.parse_args(argv)
    if args.steps < args.epochs or args.epochs < 1:
        parser.error("--steps must be >= --epochs >= 1")
    if not 0 < args.rho:
        parser.error("--rho must be > 0")
    import logging

    import structlog

    # d3rlpy logs every build and epoch through structlog; the table below is the output.
    # Configured before d3rlpy is imported, whose own configure() keeps this filter.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        import d3rlpy
    except ImportError:
        print("d3rlpy is not installed: run `make setup` first (it builds the patched tree).")
        return 2
    if not hasattr(d3rlpy.optimizers, "SAMFactory"):
        print(f"d3rlpy at {d3rlpy.__file__} is not the patched tree (no SAMFactory).")
        return 2
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    dataset, behaviour_return = collect_dataset(
        args.episodes, noise=args.noise, random_prob=args.random_prob, seed=args.seed
    )
    print(
        f"dataset: Pendulum-v1, {dataset.transition_count} transitions from {args.episodes} "
        f"episodes of a noisy swing-up controller (mean return {behaviour_return:.1f}), "
        f"{time.perf_counter() - t0:.1f}s"
    )
    config = make_config(args.algo, args.batch_size, args.hidden)
    runs = {}
    for label, cfg in (("adam", config), ("sam", with_sam(config, args.rho))):
        results, seconds = train(f"{args.algo}_{label}", cfg, dataset, args, args.logdir)
        runs[label] = results
        print(f"{args.algo.upper()} + {label.upper()}: {args.steps} steps in {seconds:.1f}s")
    print()
    print(
        f"{args.algo.upper()} on offline Pendulum-v1, Adam vs SAM(rho={args.rho}) "
        f"(per-epoch means; 'return' = evaluation return over {args.eval_episodes} episodes)"
    )
    print_table(args.algo, runs["adam"], runs["sam"], args.steps // args.epochs)
    print()
    print(f"logs: {args.logdir}/csv (CSV), {args.logdir}/tensorboard (TensorBoard)")
    print(f"view: tensorboard --logdir {args.logdir}/tensorboard")
    command = "OMP_NUM_THREADS=1 python " + " ".join(
        shlex.quote(a) for a in ["bench/d3rlpy_demo.py", *sys.argv[1:]]
    )
    print(f"reproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
