"""A short CarRacing-v3 run of the world-model agent: does the image pipeline (VQ-VAE ->
transformer -> continuous planning controller, A2C) learn something, and how long does one
env step take?

    OMP_NUM_THREADS=1 python bench/world_model_carracing.py --max-env-steps 20000

On CPU the run uses one pass of 2 gradient steps per rollout (--update-flags), since the
VQ-VAE's backward pass on 64x64 frames is what costs; on a GPU pass --update-flags "".

Prints the mean return of finished episodes along the run (the first ones are close to a
random policy's), the time per env step (acting + update, wall clock), and the command. A
return of 200-600 needs ~500 epochs, i.e. a GPU machine; this checks the direction only.
Needs Box2D (gymnasium[box2d] or the `box2d` wheel).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile

import numpy as np


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-env-steps", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--update-flags",
        default="--update-epochs 1 --num-minibatches 2",
        help="on CPU the VQ-VAE backward dominates; one pass of 2 steps keeps it ~1/2 of a step",
    )
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from flatrl.agents.world_model.cli import parse_config
    from flatrl.agents.world_model.envs import box2d_available
    from flatrl.agents.world_model.train import train

    if not box2d_available():
        raise SystemExit('CarRacing needs Box2D: pip install "gymnasium[box2d]==1.0.0" (or box2d)')
    out = args.out or tempfile.mkdtemp(prefix="wm_carracing_")
    argv = [
        "--env-name",
        "CarRacing-v3",
        "--use-improved-controller",
        "--use-a2c",
        "--max-epoch",
        "500",
        "--learning-rate",
        "1e-4",
        "--n-steps",
        "64",
        "--planning-horizon",
        "3",
        *args.update_flags.split(),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--max-env-steps",
        str(args.max_env_steps),
        "--save-path",
        out + "/",
        "--log-dir",
        os.path.join(out, "runs"),
    ]
    result = train(parse_config(argv))
    rewards = scalars(result.log_dir, "train/mean_episode_reward")
    speed = scalars(result.log_dir, "train/env_steps_per_second")
    steps_per_epoch = result.env_steps // max(result.epochs, 1)
    print(
        f"\nCarRacing-v3, {result.env_steps} env steps in {result.epochs} epochs, "
        f"{result.seconds:.0f} s"
    )
    print("epoch  env steps  mean return of finished episodes (last 100)")
    for epoch, value in rewards[:: max(1, len(rewards) // 12)] + rewards[-1:]:
        print(f"{epoch:5d}  {epoch * steps_per_epoch:9d}  {value:8.1f}")
    if speed:
        per_step = 1000.0 / np.mean([v for _, v in speed])
        print(f"time per env step (acting + update): {per_step:.1f} ms")
    print("command:", "OMP_NUM_THREADS=1", shlex.join([sys.executable, *sys.argv]))
    print("run: python -m flatrl.agents.world_model", shlex.join(argv))


if __name__ == "__main__":
    main()
