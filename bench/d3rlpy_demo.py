"""`make demo`: offline TD3+BC on Pendulum-v1, Adam vs SAM, 3 seeds, with intervals and a figure.

The honest picture in a few minutes on one CPU core:

1. builds (or loads from ``$FLATRL_CACHE/datasets``) an offline dataset: 40 episodes of a noisy
   Pendulum-v1 swing-up controller, 8,000 transitions, behaviour return about -400. Nothing is
   downloaded.
2. trains TD3+BC (2x64 nets, batch 64, 5,000 steps) with Adam and with SAM around the same Adam
   (``SAMFactory``, every network optimizer), from the same seeds, through
   ``bench/d3rlpy_study.py`` (the study entry point; one process, runs one after another).
3. scores each run by the mean evaluation return of its last 2 evaluations (5 episodes each,
   every 500 steps) and prints, per arm, the mean and IQM with 95% stratified-bootstrap
   intervals (rliable, via ``flatrl.study.report``) and P(SAM > Adam).
4. draws ``<out>/demo.png``: evaluation return (mean and 95% bootstrap band over seeds) and
   SAM's sharpness L(w+e) - L(w) of critic and actor, against the gradient step.

rho 0.01: the rho the d3rlpy study chose, i.e. the SAM arm with the highest IQM of TD3+BC on this
dataset in ``studies/d3rlpy-offline-cpu.yaml`` (5 seeds, 5,000 steps, 2x64 nets, batch 256,
score = mean of the last 3 evaluations; rliable IQM [95% CI]): Adam -368.5 [-534, -235], SAM
0.01 -359 [-513, -251], 0.05 -372 [-410, -305], 0.1 -553 [-611, -446], ASAM 0.5 -536 [-596,
-416]; P(SAM 0.01 > Adam) 0.52 [0.12, 0.92]. No rho helped; 0.1 and ASAM 0.5 hurt. The demo
shows that picture, not a win.

    OMP_NUM_THREADS=1 .venv/current/bin/python bench/d3rlpy_demo.py [--seeds 0 1 2] [--rho R]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import d3rlpy_study as study  # noqa: E402
import numpy as np  # noqa: E402

RHO = 0.01
NAMES = {"iql": "IQL", "cql": "CQL", "td3plusbc": "TD3+BC"}
RHO_NOTE = (
    "the d3rlpy study's choice, its best SAM IQM for TD3+BC on this dataset (5 seeds, batch 256; "
    "IQM [95% CI]: Adam -368 [-534, -235], SAM 0.01 -359 [-513, -251], 0.05 -372 [-410, -305], "
    "0.1 -553 [-611, -446], ASAM 0.5 -536 [-596, -416]): no rho helped, 0.1 and ASAM hurt; "
    "docs/results.md"
)


def arm_argv(args: argparse.Namespace, arm: str, seed: int, log_dir: Path) -> list[str]:
    argv = ["--algo", args.algo, "--dataset", args.dataset, "--seed", str(seed)]
    argv += ["--steps", str(args.steps), "--eval-every", str(args.eval_every)]
    argv += ["--eval-episodes", str(args.eval_episodes), "--hidden", str(args.hidden)]
    argv += ["--batch-size", str(args.batch_size), "--log-dir", str(log_dir)]
    if arm != "adam":
        argv += ["--optimizer", "sam", "--rho", str(args.rho)]
    return argv


def curves(log_dir: Path, name: str) -> Any:
    from flatrl.study.metrics import read_d3rlpy_csv

    found = sorted(log_dir.glob(f"*/{name}.csv"))
    return read_d3rlpy_csv(found[0]) if found else None


def plot(series: dict[str, dict[str, list[Any]]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from flatrl.study.report import curve_band

    fig, (ax_ret, ax_sharp) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, by_metric in series.items():
        grid, mean, lo, hi = curve_band(by_metric["eval_return"])
        (line,) = ax_ret.plot(grid, mean, marker="o", label=f"{arm} (n={len(args.seeds)})")
        ax_ret.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        for metric, style in (("critic_sharpness", "-"), ("actor_sharpness", "--")):
            runs = [s for s in by_metric.get(metric, []) if s is not None]
            if not runs:
                continue
            grid, mean, lo, hi = curve_band(runs)
            label = f"{arm} {metric.split('_')[0]}"
            (line,) = ax_sharp.plot(grid, mean, style, label=label)
            ax_sharp.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    env_id = study.DATASETS[args.dataset].env_id
    ax_ret.set_title(f"{NAMES[args.algo]} on offline {env_id}: evaluation return")
    ax_ret.set_xlabel("gradient step")
    ax_ret.set_ylabel(f"return ({args.eval_episodes} episodes; mean, 95% CI over seeds)")
    ax_ret.legend()
    ax_sharp.set_title("SAM sharpness L(w+e) - L(w) (Adam has no second pass)")
    ax_sharp.set_xlabel("gradient step")
    ax_sharp.set_ylabel("mean over the steps since the last point")
    ax_sharp.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(summary: dict[str, dict[str, Any]], sam: str) -> str:
    """Say what the intervals support, and no more."""
    lo, hi = summary[sam]["mean_ci"]
    a_lo, a_hi = summary["adam"]["mean_ci"]
    if lo > a_hi:
        return f"{sam} scores higher than Adam: the 95% intervals of the means do not overlap."
    if hi < a_lo:
        return f"{sam} scores LOWER than Adam: the 95% intervals of the means do not overlap."
    return (
        f"no detectable difference between {sam} and Adam: the 95% intervals overlap "
        f"({len(summary['adam'].get('scores', []))} seeds are few; run the study for more)."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=study.ALGOS, default="td3plusbc")
    p.add_argument("--dataset", choices=tuple(study.DATASETS), default="pendulum")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--last-k", type=int, default=2, help="score = mean of the last k evals")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rho", type=float, default=RHO)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates")
    args = p.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds needs at least 2 distinct seeds for an interval")
    if not args.rho > 0:
        p.error("--rho must be > 0 (the demo compares SAM with Adam)")

    from flatrl.study.report import aggregate

    t0, cpu0 = time.perf_counter(), time.process_time()
    sam = f"sam{args.rho:g}"
    arms = ("adam", sam)
    series: dict[str, dict[str, list[Any]]] = {a: {} for a in arms}
    scores: dict[str, list[float]] = {a: [] for a in arms}
    print(
        f"{NAMES[args.algo]} on offline {args.dataset}: Adam vs SAM(rho={args.rho:g}), seeds "
        f"{args.seeds}, {args.steps} steps each; one process, one thread"
    )
    for seed in args.seeds:
        for arm in arms:
            log_dir = args.out / arm / f"seed_{seed}"
            run_args = study.parse_args(arm_argv(args, arm, seed, log_dir))
            info = study.run(run_args)
            for metric in ("eval_return", "critic_sharpness", "actor_sharpness"):
                series[arm].setdefault(metric, []).append(curves(log_dir, metric))
            ret = series[arm]["eval_return"][-1]
            score = float(np.mean(ret.values[-args.last_k :]))
            scores[arm].append(score)
            print(
                f"  seed {seed} {arm:>8s}: score {score:8.1f} (evals "
                f"{' '.join(f'{v:.0f}' for v in ret.values)}), {info['train_seconds']:.0f}s"
            )
    summary = aggregate({a: np.asarray(s) for a, s in scores.items()}, "adam", reps=args.reps)
    png = args.out / "demo.png"
    plot(series, args, png)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0

    print(f"\nscore = mean return of the last {args.last_k} evaluations; 95% CIs: rliable")
    print(f"stratified bootstrap over {len(args.seeds)} seeds ({args.reps} replicates)")
    print(f"{'arm':>8s} | {'mean [95% CI]':>28s} | {'IQM [95% CI]':>28s} | last sharpness")
    for arm in arms:
        s = summary[arm]
        mean = f"{s['mean']:.1f} [{s['mean_ci'][0]:.1f}, {s['mean_ci'][1]:.1f}]"
        iqm = f"{s['iqm']:.1f} [{s['iqm_ci'][0]:.1f}, {s['iqm_ci'][1]:.1f}]"
        sharp = [c for c in series[arm]["critic_sharpness"] if c is not None]
        last = f"critic {np.mean([c.values[-1] for c in sharp]):.3g}" if sharp else "-"
        print(f"{arm:>8s} | {mean:>28s} | {iqm:>28s} | {last}")
    poi, (plo, phi) = summary[sam]["poi"], summary[sam]["poi_ci"]
    summary["adam"]["scores"] = scores["adam"]
    print(f"P({sam} > adam) = {poi:.2f} [{plo:.2f}, {phi:.2f}]")
    diff = np.asarray(scores[sam]) - np.asarray(scores["adam"])
    print(
        f"paired by seed (same data and seed): {sam} higher on "
        f"{int((diff > 0.5).sum())}, lower on {int((diff < -0.5).sum())}, within 0.5 on "
        f"{int((abs(diff) <= 0.5).sum())} of {len(diff)} seeds (mean difference {diff.mean():+.1f})"
    )
    print(f"\nresult: {verdict(summary, sam)}")
    print(f"rho {args.rho:g}: {RHO_NOTE}")
    print(f"time: {wall:.0f}s wall, {cpu:.0f}s CPU")
    print(f"figure: {png}   (open it in any image viewer)")
    print(f"logs: {args.out}/<arm>/seed_<s>/<experiment>/*.csv (d3rlpy: epoch,step,value)")
    study_run = "python -m flatrl.study run studies/d3rlpy-offline-cpu.yaml"
    print(f"more seeds, algorithms and rhos: {study_run}")
    reproduce = shlex.join(["bench/d3rlpy_demo.py", *(sys.argv[1:] if argv is None else argv)])
    python = os.path.relpath(sys.executable)  # the environment this ran in, e.g. .venv/current
    print(f"reproduce: OMP_NUM_THREADS=1 {python} {reproduce}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
