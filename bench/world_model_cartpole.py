"""CartPole-v1 benchmark of the world-model agent: improved controller + A2C, SAM on the memory,
the legacy (linear) controller with the same update, and plain REINFORCE; mean return over
deterministic evaluation episodes.

Target (issue 7): >= 475 mean return over 100 evaluation episodes for at least 4 of 5 seeds,
within 100k env steps each, on CPU.

    OMP_NUM_THREADS=1 python bench/world_model_cartpole.py                  # 5 seeds, 3 variants
    OMP_NUM_THREADS=1 python bench/world_model_cartpole.py --seeds 0 1 --variants improved

Every run is the agent's own CLI command (printed below the table) plus --max-env-steps and
--eval-episodes; runs go to a process pool of --workers processes, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

BASE = [
    "--env-name",
    "CartPole-v1",
    "--max-epoch",
    "200",
    "--learning-rate",
    "3e-4",
    "--n-steps",
    "128",
]
VARIANTS = {
    "improved": [*BASE, "--use-improved-controller", "--use-a2c", "--planning-horizon", "5"],
    # the legacy head with the A2C update and Monte-Carlo advantages (GAE lambda 1); before plain
    # REINFORCE existed, runs without --use-a2c took exactly this update
    "legacy": [*BASE, "--use-a2c", "--gae-lambda", "1"],
    # plain REINFORCE with a value baseline: one pass per rollout, no clip, no bootstrapping
    "reinforce": list(BASE),
    "sam": [
        *BASE,
        "--use-improved-controller",
        "--use-a2c",
        "--planning-horizon",
        "5",
        "--optimizer",
        "sam",
        "--sam-rho",
        "0.05",
        "--sam-scope",
        "memory",
    ],
}
TARGET = 475.0


def run_one(variant: str, seed: int, max_env_steps: int, episodes: int, out: str) -> dict:
    """One training run + evaluation in this process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from flatrl.agents.world_model.cli import parse_config
    from flatrl.agents.world_model.train import train

    argv = [
        *VARIANTS[variant],
        "--seed",
        str(seed),
        "--max-env-steps",
        str(max_env_steps),
        "--eval-episodes",
        str(episodes),
        "--no-progress",
        "--device",
        "cpu",
        "--save-path",
        os.path.join(out, f"{variant}_s{seed}") + "/",
        "--log-dir",
        os.path.join(out, "runs"),
    ]
    result = train(parse_config(argv))
    return {
        "variant": variant,
        "seed": seed,
        "eval_mean": float(np.mean(result.eval_returns)),
        "train_mean": result.final_mean_reward,
        "env_steps": result.env_steps,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "argv": argv,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["improved", "sam", "legacy"]
    )
    p.add_argument("--max-env-steps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="where runs and results.json go (default: tmp)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = args.out or tempfile.mkdtemp(prefix="wm_cartpole_")
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    start = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [
            pool.submit(run_one, v, s, args.max_env_steps, args.eval_episodes, out) for v, s in jobs
        ]
        rows = []
        for f in futures:
            row = f.result()
            rows.append(row)
            print(
                f"  {row['variant']:9s} seed {row['seed']}: eval {row['eval_mean']:6.1f}  "
                f"({row['env_steps']} env steps, {row['seconds']:.0f} s)",
                flush=True,
            )
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    print(
        f"\nCartPole-v1, mean return over {args.eval_episodes} deterministic evaluation "
        f"episodes, <= {args.max_env_steps} env steps, CPU, seeds {args.seeds}"
    )
    print(f"{'variant':10s} {'mean ± std over seeds':>24s} {'seeds >= 475':>13s}  per seed")
    for v in args.variants:
        vals = np.array([r["eval_mean"] for r in rows if r["variant"] == v])
        solved = int((vals >= TARGET).sum())
        per = " ".join(f"{x:.0f}" for x in vals)
        print(f"{v:10s} {vals.mean():14.1f} ± {vals.std():6.1f} {solved:>9d}/{len(vals)}  {per}")
    print(f"wall clock {time.time() - start:.0f} s with {args.workers} workers; results in {out}")
    print("command:", "OMP_NUM_THREADS=1", shlex.join([sys.executable, *sys.argv]))
    print(
        "each run: python -m flatrl.agents.world_model",
        shlex.join(VARIANTS[args.variants[0]]),
        "--seed S --max-env-steps",
        args.max_env_steps,
        "--eval-episodes",
        args.eval_episodes,
    )


if __name__ == "__main__":
    main()
