"""Per-update cost of SAM, SAM(every_k=4) and Muon relative to Adam, measured side by side.

A 3x256 MLP regression (batch 256) on CPU with one thread. The variants run interleaved in
rounds (every round times a block of updates of each variant, in a rotated order) so that
machine noise hits them alike; the figure is the median over rounds of the per-round ratio.

Targets from issue 3: SAM <= 2.1x Adam (two forward-backward passes), SAM(every_k=4) <= 1.3x,
Muon <= 1.15x.

    python bench/optim_overhead.py [--rounds 15] [--updates 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from flatrl.optim import SAM, build_optimizer  # noqa: E402
from torch import nn  # noqa: E402

IN_DIM, HIDDEN, OUT_DIM, BATCH = 64, 256, 16, 256
TARGETS = {"sam": 2.1, "sam_every4": 1.3, "muon": 1.15}


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_DIM, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, OUT_DIM),
    )


def make_update(name: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training update of the named variant, the way a training loop writes it."""
    model = make_mlp(0)

    def loss_fn() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    if name in ("adam", "muon"):
        opt = build_optimizer(model, case=name, lr=1e-3)

        def update() -> None:
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

        return update

    sam = SAM(
        model.parameters(),
        base=torch.optim.Adam,
        rho=0.05,
        every_k=4 if "4" in name else 1,
        lr=1e-3,
    )

    def closure() -> torch.Tensor:
        sam.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    def sam_update() -> None:
        sam.zero_grad()
        loss = loss_fn()
        loss.backward()
        sam.step(closure, loss=loss)

    return sam_update


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--updates", type=int, default=20, help="updates per variant per round")
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, IN_DIM, generator=g), torch.randn(BATCH, OUT_DIM, generator=g)
    names = ["adam", "sam", "sam_every4", "muon"]
    updates = {n: make_update(n, x, y) for n in names}
    for n in names:  # warm-up: lazy imports, allocator, optimizer state
        for _ in range(8):
            updates[n]()

    per_update: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names if n != "adam"}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        round_time = {}
        for n in order:
            t0 = time.perf_counter()
            for _ in range(args.updates):
                updates[n]()
            round_time[n] = (time.perf_counter() - t0) / args.updates
            per_update[n].append(round_time[n])
        for n in ratios:
            ratios[n].append(round_time[n] / round_time["adam"])

    print(
        f"3x{HIDDEN} MLP regression, batch {BATCH}, CPU, {torch.get_num_threads()} thread, "
        f"torch {torch.__version__}; {args.rounds} interleaved rounds x {args.updates} updates"
    )
    print(f"{'variant':<12} {'ms/update':>10} {'ratio vs Adam':>14} {'target':>8}  result")
    print(f"{'adam':<12} {1e3 * statistics.median(per_update['adam']):>10.3f} {1.0:>14.2f}")
    all_pass = True
    for n, rs in ratios.items():
        ratio = statistics.median(rs)
        ok = ratio <= TARGETS[n]
        all_pass &= ok
        print(
            f"{n:<12} {1e3 * statistics.median(per_update[n]):>10.3f} {ratio:>14.2f} "
            f"{'<= ' + str(TARGETS[n]):>8}  {'PASS' if ok else 'FAIL'}"
        )
    print("command: OMP_NUM_THREADS=1 python bench/optim_overhead.py " + " ".join(sys.argv[1:]))
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
