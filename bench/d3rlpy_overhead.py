"""Per-update cost of SAM over Adam in the patched d3rlpy, measured side by side.

SAM takes a second forward/backward pass of what the optimizer updates; targets are computed
once and nested temperature/alpha updates are not repeated, so the ratio SAM/Adam should stay
at or below about 1.9x. For each algorithm an Adam copy and a SAM copy (every network optimizer
wrapped; the scalar temperature/alpha stay on Adam) are built on the same random dataset;
blocks of updates alternate between them (Adam, SAM, Adam, ...) on one thread and the ratio is
the median of the per-round ratios. Times are the thread's CPU time (time.thread_time), so a
busy machine slows both sides without skewing the ratio; updates/s are per CPU-second.

    OMP_NUM_THREADS=1 python bench/d3rlpy_overhead.py [--algos SAC CQL] [--rounds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_RATIO = 1.9
OBS_DIM, ACTION_DIM, N_DISCRETE = 17, 6, 6


def make_dataset(discrete: bool, n: int = 20_000) -> Any:
    import d3rlpy

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    if discrete:
        actions = rng.integers(0, N_DISCRETE, size=(n,))
    else:
        actions = rng.uniform(-1, 1, size=(n, ACTION_DIM)).astype(np.float32)
    rewards = rng.normal(size=(n,)).astype(np.float32)
    terminals = np.zeros(n, dtype=np.float32)
    terminals[999::1000] = 1.0
    kwargs = {"action_size": N_DISCRETE} if discrete else {}
    return d3rlpy.dataset.MDPDataset(obs, actions, rewards, terminals, **kwargs)


def configs(batch_size: int) -> dict[str, tuple[Any, bool]]:
    from d3rlpy import algos

    return {
        "SAC": (algos.SACConfig(batch_size=batch_size), False),
        "CQL": (algos.CQLConfig(batch_size=batch_size), False),
        "IQL": (algos.IQLConfig(batch_size=batch_size), False),
        "TD3+BC": (algos.TD3PlusBCConfig(batch_size=batch_size), False),
        "BC": (algos.BCConfig(batch_size=batch_size), False),
        "DQN": (algos.DQNConfig(batch_size=batch_size), True),
    }


def with_sam(config: Any, rho: float) -> Any:
    from d3rlpy.optimizers import SAMFactory

    fields = [f.name for f in dataclasses.fields(config) if f.name.endswith("optim_factory")]
    # SAM is for the networks: SAC's temperature and CQL's alpha (one scalar each) stay on Adam,
    # as in any sensible setup; wrapping them would add a third, pointless closure per update.
    fields = [f for f in fields if not f.startswith(("temp_", "alpha_"))]
    return dataclasses.replace(
        config, **{f: SAMFactory(base=getattr(config, f), rho=rho) for f in fields}
    )


def time_block(algo: Any, batches: list[Any]) -> float:
    """CPU seconds of this thread for the updates: with torch on one thread this is all the
    work, and unlike wall time it does not count the time other processes hold the core."""
    start = time.thread_time()
    for batch in batches:
        algo.update(batch)
    return time.thread_time() - start


def measure(name: str, config: Any, discrete: bool, rounds: int, rho: float) -> dict[str, float]:
    import d3rlpy

    dataset = make_dataset(discrete)
    algos = {}
    for kind, cfg in (("adam", config), ("sam", with_sam(config, rho))):
        d3rlpy.seed(0)
        algo = cfg.create(device="cpu:0")
        algo.build_with_dataset(dataset)
        algos[kind] = algo
    warm = [dataset.sample_transition_batch(config.batch_size) for _ in range(3)]
    # Calibrate a block to about 0.2 s of Adam updates.
    time_block(algos["adam"], warm)
    time_block(algos["sam"], warm)
    per_update = time_block(algos["adam"], warm) / len(warm)
    block = max(2, int(0.2 / per_update))
    ratios, adam_rates, sam_rates = [], [], []
    for _ in range(rounds):
        batches = [dataset.sample_transition_batch(config.batch_size) for _ in range(block)]
        t_adam = time_block(algos["adam"], batches)
        t_sam = time_block(algos["sam"], batches)
        ratios.append(t_sam / t_adam)
        adam_rates.append(block / t_adam)
        sam_rates.append(block / t_sam)
    return {
        "adam_ups": statistics.median(adam_rates),
        "sam_ups": statistics.median(sam_rates),
        "ratio": statistics.median(ratios),
        "block": block,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=None, help="subset, e.g. SAC CQL")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rho", type=float, default=0.05)
    args = parser.parse_args(argv)

    try:
        import d3rlpy
    except ImportError:
        print("d3rlpy is not installed: run `make setup` (the patched tree) first.")
        return 2
    if not hasattr(d3rlpy.optimizers, "SAMFactory"):
        print(f"d3rlpy at {d3rlpy.__file__} is not the patched tree (no SAMFactory).")
        return 2
    torch.set_num_threads(1)
    table = configs(args.batch_size)
    names = args.algos or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown algorithms {unknown}; choose from {list(table)}")

    print(
        f"torch {torch.__version__}, d3rlpy {d3rlpy.__version__}, 1 thread, "
        f"batch {args.batch_size}, rho {args.rho}, {args.rounds} interleaved rounds"
    )
    print(f"{'algo':8s} {'Adam upd/s':>11s} {'SAM upd/s':>10s} {'SAM/Adam':>9s}  target")
    worst = 0.0
    for name in names:
        config, discrete = table[name]
        r = measure(name, config, discrete, args.rounds, args.rho)
        worst = max(worst, r["ratio"])
        verdict = "ok" if r["ratio"] <= TARGET_RATIO else "OVER"
        print(
            f"{name:8s} {r['adam_ups']:11.1f} {r['sam_ups']:10.1f} {r['ratio']:8.2f}x  "
            f"<= {TARGET_RATIO}x {verdict}",
            flush=True,
        )
    command = "OMP_NUM_THREADS=1 python " + " ".join(
        shlex.quote(a) for a in ["bench/d3rlpy_overhead.py", *sys.argv[1:]]
    )
    print(f"worst ratio {worst:.2f}x (target <= {TARGET_RATIO}x)")
    print(f"reproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
