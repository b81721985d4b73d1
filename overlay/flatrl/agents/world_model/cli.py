"""Command line of the world-model agent: model and algorithm, hyperparameters, optimizer/SAM,
run control. Every option is validated (config.validate) before anything is built."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .config import SAM_SCOPES, TrainConfig, validate


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m flatrl.agents.world_model",
        description="World-model agent: VQ-VAE + temporal transformer + planning controller, "
        "trained with A2C/GAE (--use-a2c) or REINFORCE with a value baseline. One epoch = one "
        "rollout of n_steps x n_envs env steps, then --update-epochs passes over it in "
        "--num-minibatches gradient steps each.",
    )
    seed_flags = p.add_argument_group("model, algorithm and files")
    seed_flags.add_argument("--env-name", default=d.env_name)
    seed_flags.add_argument("--max-epoch", type=int, default=d.max_epoch)
    seed_flags.add_argument("--learning-rate", type=float, default=d.learning_rate)
    seed_flags.add_argument(
        "--env-batch-number",
        default=d.env_batch_number,
        help="parallel envs: 'auto' (16 for vector, 4 for image envs) or an int",
    )
    seed_flags.add_argument("--pretrain-vision", action="store_true")
    seed_flags.add_argument("--pretrain-memory", action="store_true")
    seed_flags.add_argument("--load-path", default=d.load_path)
    seed_flags.add_argument("--save-path", default=d.save_path)
    seed_flags.add_argument("--use-improved-controller", action="store_true")
    seed_flags.add_argument(
        "--use-a2c",
        action="store_true",
        help="A2C with GAE and bootstrapped returns (rollouts reused, see --update-epochs); "
        "without it: REINFORCE with a value baseline (Monte-Carlo returns, no bootstrapping, one "
        "pass per rollout, no clip)",
    )
    seed_flags.add_argument(
        "--planning-horizon",
        type=int,
        default=d.planning_horizon,
        help="imagined steps per planned action; 0 turns planning off",
    )
    seed_flags.add_argument("--n-steps", type=int, default=d.n_steps)
    hp = p.add_argument_group("update hyperparameters")
    hp.add_argument("--gamma", type=float, default=d.gamma)
    hp.add_argument(
        "--gae-lambda",
        type=float,
        default=None,
        help="GAE lambda, --use-a2c only (default 0.95)",
    )
    hp.add_argument("--value-coef", type=float, default=d.value_coef)
    hp.add_argument("--entropy-coef", type=float, default=d.entropy_coef)
    hp.add_argument("--memory-coef", type=float, default=d.memory_coef)
    hp.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    hp.add_argument(
        "--num-minibatches",
        type=int,
        default=d.num_minibatches,
        help="gradient steps per pass over a rollout",
    )
    hp.add_argument(
        "--update-epochs",
        type=int,
        default=None,
        help="passes over each rollout: 4 with --use-a2c (1, with --num-minibatches 1 and "
        "--clip-range 0: plain A2C); REINFORCE takes exactly 1",
    )
    hp.add_argument(
        "--clip-range",
        type=float,
        default=None,
        help="PPO ratio clip for the steps after the first on a rollout, --use-a2c only "
        "(default 0.2; 0: none)",
    )
    hp.add_argument(
        "--planning-start-epoch",
        type=int,
        default=d.planning_start_epoch,
        help="act with the policy alone before this epoch (a planner on an untrained world "
        "model only adds noise); evaluation always plans",
    )
    hp.add_argument(
        "--plan-weight",
        type=float,
        default=d.plan_weight,
        help="share of the planner in the blended policy (default 0.3)",
    )
    hp.add_argument(
        "--memory-window",
        type=int,
        default=None,
        help="history length of the transformer (8 vector, 16 image)",
    )
    hp.add_argument(
        "--memory-layers", type=int, default=None, help="transformer layers (1 vector, 2 image)"
    )
    hp.add_argument("--z-dim", type=int, default=None, help="latent size (32 vector, 64 image)")
    hp.add_argument(
        "--no-normalize-rewards",
        dest="normalize_rewards",
        action="store_false",
        help="train on raw rewards instead of rewards / running std of the return (RL and "
        "pre-training alike)",
    )
    opt = p.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=("adam", "sam"), default=d.optimizer)
    opt.add_argument(
        "--sam-rho",
        type=float,
        default=None,
        help="SAM radius, >= 0 (default 0.05; 0: a zero-radius SAM step, which still takes the "
        "second pass and updates exactly as Adam does)",
    )
    opt.add_argument(
        "--sam-scope",
        choices=SAM_SCOPES,
        default=None,
        help="parameters SAM perturbs (default memory: the dynamics model)",
    )
    opt.add_argument(
        "--sam-adaptive",
        action="store_true",
        help="ASAM: scale the perturbation element-wise by |w|",
    )
    opt.add_argument(
        "--sam-every",
        type=int,
        default=None,
        help="a SAM step on every k-th update, plain Adam steps between (default 1)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a checkpoint (default: <save-path>/last_<env>_<controller>_"
        "<algorithm>_<optimizer>_s<seed>.pt); with environments that can be saved "
        "(e.g. CartPole) the continued run is exactly the uninterrupted one",
    )
    run.add_argument("--log-dir", default=d.log_dir, help="TensorBoard root (runs/)")
    run.add_argument(
        "--save-every", type=int, default=d.save_every, help="periodic checkpoint, epochs"
    )
    run.add_argument(
        "--max-env-steps", type=int, default=None, help="stop early at this many env steps"
    )
    run.add_argument(
        "--eval-episodes",
        type=int,
        default=d.eval_episodes,
        help="deterministic evaluation episodes after training (0: none)",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse and validate; bad input raises ValueError before anything is built."""
    ns = build_parser().parse_args(argv)
    return validate(TrainConfig(**vars(ns)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if cfg.pretrain_vision or cfg.pretrain_memory:
        from .pretrain import pretrain

        pretrain(cfg)
    else:
        from .train import train

        train(cfg)
    return 0
