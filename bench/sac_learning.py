"""Does the SAC pipeline learn? AdamW vs Muon on DMC cartpole-balance, several seeds, CPU.

Each run trains SAC from scratch through the same code path as
``python -m flatrl.agents.sac.train`` (same Hydra configs, same validation) and reports the final
evaluation return (deterministic policy, ``--eval-episodes`` episodes). The table gives mean ±
std over seeds per case; the sanity target is >= 800 for both cases. Runs are printed as they
finish, so a partial table is still informative if the benchmark is stopped early.

Environment steps are frames: 20k steps with action repeat 8 (the usual cartpole setting) is
2.5k agent steps, i.e. about 2.4k SAC updates after the random-action warm-up.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _config(args: argparse.Namespace, case: str, seed: int, root: str) -> dict:
    import flatrl.agents.sac.train as sac_train
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [
        f"method_name=bench_{case}",
        f"seed={seed}",
        "threads=1",
        "device=cpu",
        f"env.task={args.task}",
        f"env.action_repeat={args.action_repeat}",
        f"model.hidden_dim={args.hidden}",
        f"training.batch_size={args.batch}",
        f"training.total_env_steps={args.env_steps}",
        f"training.seed_steps={args.seed_steps}",
        f"training.replay_capacity={max(args.env_steps, args.batch)}",
        f"training.eval_every_steps={args.env_steps}",
        f"training.eval_episodes={args.eval_episodes}",
        f"training.checkpoint_every_steps={args.env_steps}",
        "training.save_replay=false",
        "training.progress_bar=false",
        f"training.checkpoint_dir={root}/ckpt",
        f"training.replay_dir={root}/replay",
        f"training.actor_optimizer.case={case}",
        f"training.critic_optimizer.case={case}",
        f"training.actor_optimizer.lr={args.lr}",
        f"training.critic_optimizer.lr={args.lr}",
        f"training.tau={args.tau}",
        # The README's figures are Muon on hidden matrices only; --muon-edges adds the first and
        # last layers (the agent's default).
        f"training.actor_optimizer.muon.apply_first_layer={str(args.muon_edges).lower()}",
        f"training.actor_optimizer.muon.apply_last_layer={str(args.muon_edges).lower()}",
        f"training.critic_optimizer.muon.apply_first_layer={str(args.muon_edges).lower()}",
        f"training.critic_optimizer.muon.apply_last_layer={str(args.muon_edges).lower()}",
    ]
    config_dir = str(Path(sac_train.__file__).parent / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name="sac_dmc", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run_one(
    args: argparse.Namespace, case: str, seed: int, root: str
) -> tuple[str, int, float, float]:
    import torch
    from flatrl.agents.sac.train import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    result = train(_config(args, case, seed, root))
    return case, seed, result["eval/return_mean"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cartpole-balance")
    parser.add_argument("--cases", default="adamw,muon")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=20_000)
    parser.add_argument("--action-repeat", type=int, default=8)
    parser.add_argument("--seed-steps", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="actor and critic (and Muon) lr")
    parser.add_argument("--tau", type=float, default=0.01, help="target-critic update rate")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, 1 thread each")
    parser.add_argument(
        "--muon-edges", action="store_true", help="Muon on first/last layers too (agent default)"
    )
    args = parser.parse_args()

    cases = args.cases.split(",")
    runs = [(case, seed) for seed in range(args.seeds) for case in cases]
    results: dict[str, list[float]] = {case: [] for case in cases}
    print(
        f"{len(runs)} runs: {args.task}, {args.env_steps} env steps, action repeat "
        f"{args.action_repeat}, width {args.hidden}, batch {args.batch}, lr {args.lr}, "
        f"tau {args.tau}, CPU, 1 thread each",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as root:
        if args.jobs == 1:
            outcomes = (run_one(args, case, seed, root) for case, seed in runs)
        else:
            pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"))
            outcomes = pool.map(run_one, *zip(*[(args, c, s, root) for c, s in runs], strict=True))
        for case, seed, ret, seconds in outcomes:
            results[case].append(ret)
            print(
                f"  {case:6s} seed {seed}: final eval return {ret:7.1f}  ({seconds:.0f} s)",
                flush=True,
            )

    print("\n| case | final eval return (mean ± std) | seeds | target |")
    print("|---|---|---|---|")
    for case, rets in results.items():
        std = statistics.stdev(rets) if len(rets) > 1 else 0.0
        ok = "ok" if statistics.mean(rets) >= 800 else "below 800"
        print(f"| {case} | {statistics.mean(rets):.1f} ± {std:.1f} | {len(rets)} | >= 800: {ok} |")
    print("\ncommand: " + shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
