"""Per-update cost of SAM, SAM(every_k=4) and Muon relative to Adam, measured side by side.

A 3x256 MLP regression (batch 256) on CPU with one thread. The variants run interleaved in
rounds (every round times a block of updates of each variant, in a rotated order) so that
machine noise hits them alike; the figure is the median over rounds of the per-round ratio.

Targets from issue 3: SAM <= 2.1x Adam (two forward-backward passes), SAM(every_k=4) <= 1.3x,
Muon <= 1.15x. Scoped SAM (no target; issue 13): ``sam_first`` perturbs the first layer only,
``sam_last`` the last two; the second pass then computes no out-of-scope gradients (SAM's
``freeze_out_of_scope``): for ``sam_first`` it skips the other layers' weight gradients, for
``sam_last`` the whole backward pass below the scope. ``<name>/all-grads`` is the same with that
option off, side by side (``--no-scoped`` drops these four).

    OMP_NUM_THREADS=1 python bench/optim_overhead.py [--rounds 15] [--updates 20] [--batch 256]
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
from flatrl.optim.muon import newton_schulz  # noqa: E402
from torch import nn  # noqa: E402

IN_DIM, HIDDEN, OUT_DIM = 64, 256, 16
TARGETS = {"sam": 2.1, "sam_every4": 1.3, "muon": 1.15}
NO_FREEZE = "/all-grads"
SCOPED = ("sam_first", "sam_first" + NO_FREEZE, "sam_last", "sam_last" + NO_FREEZE)


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

    linears = [m for m in model if isinstance(m, nn.Linear)]
    scope = None
    if name.startswith("sam_first"):
        scope = linears[0]
    elif name.startswith("sam_last"):
        scope = [p for layer in linears[-2:] for p in layer.parameters()]
    sam = SAM(
        model.parameters(),
        base=torch.optim.Adam,
        rho=0.05,
        every_k=4 if "4" in name else 1,
        scope=scope,
        freeze_out_of_scope=not name.endswith(NO_FREEZE),
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


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def muon_breakdown(x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    """Where a Muon update's time goes, next to the FLOPs that explain it."""
    model = make_mlp(0)
    adam = build_optimizer(model, case="adam", lr=1e-3)
    muon = build_optimizer(model, case="muon", lr=1e-3)

    def fwd_bwd() -> None:
        model.zero_grad()
        ((model(x) - y) ** 2).mean().backward()

    fwd_bwd()
    for _ in range(3):
        adam.step()
        muon.step()
    hidden = [g for g in muon.param_groups if g["optimizer_kind"] == "muon"][0]["params"]
    coeffs = (3.4445, -4.7750, 2.0315)

    def ns_only() -> None:
        for p in hidden:
            newton_schulz(p.grad, coeffs, 5, 1e-7, torch.float32)

    parts = {
        "forward+backward": median_ms(fwd_bwd, repeats),
        "Adam step (all params)": median_ms(adam.step, repeats),
        "Muon+Adam composite step": median_ms(muon.step, repeats),
        "  of which Newton-Schulz": median_ms(ns_only, repeats),
    }
    layer_macs = sum(m.in_features * m.out_features for m in model if isinstance(m, nn.Linear))
    fb_flops = 3 * 2 * x.shape[0] * layer_macs  # forward + two backward matmuls per layer
    ns_flops = sum(5 * 3 * 2 * min(p.shape) ** 2 * max(p.shape) for p in hidden)
    print(f"\nwhere Muon's time goes (median of {repeats}):")
    for name, ms in parts.items():
        print(f"  {name:<26} {ms:8.3f} ms")
    print(
        f"  FLOPs: forward+backward {fb_flops / 1e6:.0f} M; Newton-Schulz (5 steps x 3 matmuls "
        f"on {len(hidden)} hidden {HIDDEN}x{HIDDEN} weights) {ns_flops / 1e6:.0f} M "
        f"= {ns_flops / fb_flops:.1f}x forward+backward"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--updates", type=int, default=20, help="updates per variant per round")
    parser.add_argument("--batch", type=int, default=256, help="the targets are for 256")
    parser.add_argument(
        "--no-scoped", action="store_true", help="skip the scoped SAM variants (no targets)"
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the timing breakdown of a Muon update"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, IN_DIM, generator=g)
    y = torch.randn(args.batch, OUT_DIM, generator=g)
    names = ["adam", "sam", "sam_every4", "muon", *([] if args.no_scoped else SCOPED)]
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
        f"3x{HIDDEN} MLP regression, batch {args.batch}, CPU, {torch.get_num_threads()} thread, "
        f"torch {torch.__version__}; {args.rounds} interleaved rounds x {args.updates} updates"
    )
    print(f"{'variant':<18} {'ms/update':>10} {'ratio vs Adam':>14} {'target':>8}  result")
    print(f"{'adam':<18} {1e3 * statistics.median(per_update['adam']):>10.3f} {1.0:>14.2f}")
    all_pass = True
    for n, rs in ratios.items():
        ratio = statistics.median(rs)
        ms = f"{n:<18} {1e3 * statistics.median(per_update[n]):>10.3f} {ratio:>14.2f}"
        if n not in TARGETS:
            print(ms)
            continue
        ok = ratio <= TARGETS[n]
        all_pass &= ok
        print(f"{ms} {'<= ' + str(TARGETS[n]):>8}  {'PASS' if ok else 'FAIL'}")
    if not args.no_breakdown:
        muon_breakdown(x, y, repeats=3 * args.updates)
    print("command: OMP_NUM_THREADS=1 python bench/optim_overhead.py " + " ".join(sys.argv[1:]))
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
