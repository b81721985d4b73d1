"""Update-time overhead of SAM over Adam in the patched TD-MPC2, measured side by side.

For each (model_size, batch_size) the script builds agents of the patched tree on the same
synthetic batches: ``optimizer=Adam``, ``optimizer=SAM`` for each ``--scopes`` entry, and
``optimizer=SAM sam_every=4`` (default scope), and times their ``_update`` in interleaved rounds
(Adam, SAM, ..., Adam, ...; the order rotates), so that machine load hits all alike; the figure
is the ratio of the median round times. Only the world-model pass is repeated by SAM (TD targets
and the policy update run once), so SAM should cost well under 2x; a scoped SAM's second pass
computes no out-of-scope gradients (SAM's ``freeze_out_of_scope``), so it costs less still.
``--freeze both`` adds each scope with that option off (``<scope>/all-grads``): before and after,
side by side; ``--t0-reuse both`` adds ``dynamics/recompute-t0``, a dynamics-scope second pass
that re-runs the encoder and the t=0 reward/Q heads instead of reusing the first pass's (the
agent's ``_sam_reuses_t0``). Targets: dynamics and encoder_dynamics <= 1.35x, world_model <= 1.5x,
sam_every=4 <= 1.15x.

    python bench/tdmpc2_overhead.py                       # CPU, one thread
    python bench/tdmpc2_overhead.py --scopes dynamics encoder_dynamics world_model --freeze both
    python bench/tdmpc2_overhead.py --device cuda --compile   # or: device=cuda compile=true

Needs the patched tree (``apply_patches.py apply tdmpc2``) and the tdmpc2 environment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TREE = REPO / "build" / "tdmpc2" / "tdmpc2"
OBS_DIM, ACTION_DIM, EPISODE_LENGTH = 5, 1, 500
SCOPE_TARGETS = {"dynamics": 1.35, "encoder_dynamics": 1.35, "world_model": 1.5}
EVERY4 = "sam_every4"
TARGETS = {**SCOPE_TARGETS, EVERY4: 1.15}
NO_FREEZE = "/all-grads"  # suffix of a case with SAM's freeze_out_of_scope off
NO_T0_REUSE = "/recompute-t0"  # suffix of a dynamics case whose second pass recomputes t=0


Case = tuple[str, dict[str, Any], bool, bool]


def cases(args: argparse.Namespace) -> list[Case]:
    """``(name, config overrides, freeze_out_of_scope, reuse_t0)`` of every agent to time, Adam
    first. ``reuse_t0``: with sam_scope=dynamics the second pass takes z_0 and the t=0 head
    terms from the first (the patched agent's ``_sam_reuses_t0``); off recomputes them."""
    out: list[Case] = [("adam", {"optimizer": "Adam"}, True, True)]
    for scope in args.scopes:
        sam = {"optimizer": "SAM", "sam_rho": 0.05, "sam_scope": scope}
        if args.freeze in ("on", "both"):
            out.append((scope, sam, True, True))
            if scope == "dynamics" and args.t0_reuse == "both":
                out.append((scope + NO_T0_REUSE, sam, True, False))
        if args.freeze in ("off", "both"):
            out.append((scope + NO_FREEZE, sam, False, False))
    if args.every4:
        out.append((EVERY4, {"optimizer": "SAM", "sam_rho": 0.05, "sam_every": 4}, True, True))
    return out


def _hydra_style(argv: list[str]) -> list[str]:
    """Accept TD-MPC2 spelling too: ``device=cuda compile=true`` = ``--device cuda --compile``."""
    out: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "device":
            out += ["--device", value]
        elif sep and key == "compile":
            out += ["--compile"] if value.lower() in ("true", "1", "yes") else []
        else:
            out.append(arg)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=DEFAULT_TREE, help="patched tdmpc2/ folder")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    parser.add_argument("--compile", action="store_true", help="compile=true (CUDA only)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5], help="model sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 64], help="batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--updates", type=int, default=4, help="updates per round (multiple of 4)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed updates per agent")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--scopes",
        nargs="+",
        default=["encoder_dynamics"],
        choices=sorted(SCOPE_TARGETS),
        help="sam_scope of each full-SAM agent (default: the default scope)",
    )
    parser.add_argument(
        "--freeze",
        choices=("on", "off", "both"),
        default="on",
        help="SAM's freeze_out_of_scope for the scoped agents; both: each scope twice",
    )
    parser.add_argument(
        "--t0-reuse",
        choices=("on", "both"),
        default="on",
        help="sam_scope=dynamics: both adds a case whose second pass recomputes z_0 and t=0",
    )
    parser.add_argument(
        "--no-every4", dest="every4", action="store_false", help="skip the sam_every=4 agent"
    )
    args = parser.parse_args(_hydra_style(sys.argv[1:]))
    if args.updates % 4:
        parser.error("--updates must be a multiple of 4 so that sam_every=4 rounds are alike")
    if not (args.tree / "train.py").is_file():
        parser.error(
            f"no patched TD-MPC2 tree at {args.tree}; build it with "
            "`python3 apply_patches.py apply tdmpc2` or pass --tree."
        )
    return args


def import_tree(tree: Path) -> None:
    """Make the tree's top-level modules (common, tdmpc2, ...) importable, as train.py does."""
    os.chdir(tree)
    sys.path.insert(0, str(tree))


def make_agent(
    size: int,
    batch: int,
    case: dict[str, Any],
    freeze: bool,
    reuse_t0: bool,
    args: argparse.Namespace,
) -> Any:
    import hydra.utils
    from common.parser import parse_cfg
    from common.seed import set_seed
    from flatrl.tdmpc2.runtime import configure_runtime
    from omegaconf import OmegaConf
    from tdmpc2 import TDMPC2

    hydra.utils.get_original_cwd = lambda: str(args.tree)  # parse_cfg outside a Hydra app
    cfg = OmegaConf.load("config.yaml")
    cfg.pop("defaults", None)
    settings = dict(task="cartpole-swingup", model_size=size, batch_size=batch, seed=1)
    settings.update(device=args.device, compile=args.compile, enable_wandb=False, **case)
    for key, value in settings.items():
        cfg[key] = value
    cfg = configure_runtime(parse_cfg(cfg))
    cfg.obs_shape, cfg.action_dim = {"state": (OBS_DIM,)}, ACTION_DIM
    cfg.episode_length, cfg.seed_steps = EPISODE_LENGTH, EPISODE_LENGTH
    set_seed(cfg.seed)
    agent = TDMPC2(cfg)
    if hasattr(agent.optim, "freeze_out_of_scope"):  # a SAM
        agent.optim.freeze_out_of_scope = freeze
    if not reuse_t0:
        agent._sam_reuses_t0 = False
    return agent


def make_batch(agent: Any, seed: int) -> tuple[Any, ...]:
    import torch

    g = torch.Generator().manual_seed(seed)
    h, b, dev = agent.cfg.horizon, agent.cfg.batch_size, agent.device
    obs = torch.randn(h + 1, b, OBS_DIM, generator=g).to(dev)
    action = (torch.rand(h, b, ACTION_DIM, generator=g) * 2 - 1).to(dev)
    reward = torch.randn(h, b, 1, generator=g).to(dev)
    return obs, action, reward, torch.zeros(h, b, 1, device=dev)


def run_updates(agent: Any, batch: tuple[Any, ...], n: int) -> float:
    import torch

    # CPU: this process's CPU time (one thread), which other processes' load barely moves;
    # CUDA: wall time with synchronisation.
    cuda = agent.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    for _ in range(n):
        torch.compiler.cudagraph_mark_step_begin()
        agent._update(*batch)
    if cuda:
        torch.cuda.synchronize()
    return (clock() - start) / n


def measure(size: int, batch: int, args: argparse.Namespace) -> dict[str, float]:
    agents = {
        name: make_agent(size, batch, case, freeze, reuse_t0, args)
        for name, case, freeze, reuse_t0 in cases(args)
    }
    data = make_batch(agents["adam"], seed=size * 1000 + batch)
    for agent in agents.values():
        run_updates(agent, data, args.warmup)
    times: dict[str, list[float]] = {name: [] for name in agents}
    names = list(agents)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            times[name].append(run_updates(agents[name], data, args.updates))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("MUJOCO_GL", "disable")
    import torch

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    import_tree(args.tree)
    import io
    from contextlib import redirect_stdout

    rows = []
    for size in args.sizes:
        for batch in args.batches:
            with redirect_stdout(io.StringIO()):  # the agents' construction chatter
                med = measure(size, batch, args)
            rows.append((size, batch, med))
            print(f"measured model_size={size} batch={batch}", file=sys.stderr, flush=True)

    device = f"{args.device}{' compile' if args.compile else ''}"
    threads = f", {args.threads} thread(s), process CPU time" if args.device == "cpu" else ""
    print(f"\nTD-MPC2 update time vs Adam ({device}{threads}; median of {args.rounds} rounds)")
    header = f"{'size':>5} {'batch':>6} {'case':<30} {'ms/update':>10} {'vs adam':>8}"
    print(header)
    print("-" * len(header))
    worst: dict[str, float] = {}
    for size, batch, med in rows:
        for name, ms in med.items():
            ratio = ms / med["adam"]
            worst[name] = max(worst.get(name, 0.0), ratio)
            print(f"{size:>5} {batch:>6} {name:<30} {ms * 1e3:>10.1f} {ratio:>7.2f}x")
    for name, ratio in worst.items():
        target = TARGETS.get(name)
        if target is not None:
            verdict = "met" if ratio <= target else "NOT met"
            print(f"target {name}: worst {ratio:.2f}x <= {target}x: {verdict}")
        elif name != "adam":
            what = "freeze_out_of_scope off" if name.endswith(NO_FREEZE) else "t=0 recomputed"
            print(f"{name}: worst {ratio:.2f}x ({what}, for comparison)")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
