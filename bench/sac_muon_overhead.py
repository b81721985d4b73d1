"""Per-update time of SAC with Muon vs AdamW (actor and critic), width 256, batch 256, CPU.

Both agents are the real :class:`flatrl.agents.sac.sac.SACAgent` (critic, actor and temperature
update, target update), fed the same synthetic batch with cheetah-run's sizes (17-D
observations, 6-D actions). Timings are interleaved (AdamW, Muon, AdamW, ...) in one process
with one thread, so machine load hits both alike; the figure is the ratio of the medians.
Target: Muon/AdamW <= 1.15x.

Muon's cost is fixed per weight matrix: 5 Newton-Schulz iterations of 3 matrix products each on
every hidden 256x256 matrix, whatever the batch size. The table therefore also prints the
ratio with the optimizer step alone, to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from flatrl.agents.sac.sac import SACAgent  # noqa: E402
from flatrl.agents.sac.settings import load_settings  # noqa: E402

OBS_DIM, ACTION_DIM = 17, 6


def make_agent(case: str, width: int, layers: int, device: str, edges: bool) -> SACAgent:
    # edges=False: Muon on the hidden matrices only (how the README's figure was measured);
    # True: also on the first and last layers (the agent's default).
    muon = {"apply_first_layer": edges, "apply_last_layer": edges}
    settings = load_settings(
        {
            "model": {"hidden_dim": width, "num_layers": layers},
            "training": {
                "actor_optimizer": {"case": case, "muon": muon},
                "critic_optimizer": {"case": case, "muon": muon},
            },
        }
    )
    return SACAgent(OBS_DIM, ACTION_DIM, settings.model, settings.training, device)


def make_batch(batch: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "obs": torch.randn(batch, OBS_DIM, generator=g),
        "action": torch.rand(batch, ACTION_DIM, generator=g) * 2 - 1,
        "reward": torch.rand(batch, 1, generator=g),
        "next_obs": torch.randn(batch, OBS_DIM, generator=g),
        "not_done": torch.ones(batch, 1),
    }
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_updates(agent: SACAgent, batch: dict[str, torch.Tensor], n: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        agent.update(batch)
    _sync(device)
    return (time.perf_counter() - start) / n


def time_optimizer_steps(agent: SACAgent, n: int, device: str) -> float:
    """Actor + critic optimizer steps alone, on the gradients the last update left behind."""
    for p in list(agent.actor.parameters()) + list(agent.critic.parameters()):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        agent.critic_opt.optimizer.step()
        agent.actor_opt.optimizer.step()
    _sync(device)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--updates-per-round", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--muon-edges",
        action="store_true",
        help="Muon on first/last layers too (agent default); off: hidden matrices only",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batch = make_batch(args.batch, args.device)
    agents = {
        case: make_agent(case, args.width, args.layers, args.device, args.muon_edges)
        for case in ("adamw", "muon")
    }
    for agent in agents.values():  # warm-up: allocate optimizer state, caches
        time_updates(agent, batch, 3, args.device)
    update = {case: [] for case in agents}
    step = {case: [] for case in agents}
    for _ in range(args.rounds):
        for case, agent in agents.items():
            update[case].append(time_updates(agent, batch, args.updates_per_round, args.device))
            step[case].append(time_optimizer_steps(agent, args.updates_per_round, args.device))

    med = {case: statistics.median(v) for case, v in update.items()}
    med_step = {case: statistics.median(v) for case, v in step.items()}
    muon_mats = len(agents["muon"].actor_opt.base.optimizers[0].param_groups[0]["params"]) + len(
        agents["muon"].critic_opt.base.optimizers[0].param_groups[0]["params"]
    )
    print(
        f"SAC update, width {args.width} x {args.layers} hidden layers, batch {args.batch}, "
        f"{args.device}, {args.threads} thread(s), {args.rounds} interleaved rounds of "
        f"{args.updates_per_round} updates; Muon on {muon_mats} matrices"
    )
    print("\n| case | ms / SAC update (median) | ms / optimizer steps (median) |")
    print("|---|---|---|")
    for case in agents:
        print(f"| {case} | {1e3 * med[case]:.2f} | {1e3 * med_step[case]:.2f} |")
    ratio = med["muon"] / med["adamw"]
    verdict = "meets" if ratio <= 1.15 else "misses"
    print(f"\nMuon/AdamW update-time ratio: {ratio:.2f}x ({verdict} the <= 1.15x target)")
    print(
        "Muon optimizer-step cost minus AdamW's: "
        f"{1e3 * (med_step['muon'] - med_step['adamw']):.2f} ms per update"
    )
    print("\ncommand: " + shlex.join(["OMP_NUM_THREADS=1", Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
