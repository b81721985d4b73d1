"""Muon vs Adam per update, next to the Newton-Schulz arithmetic that explains the difference.

Three workloads, each timed side by side in interleaved rounds (the order rotates every round,
so machine load hits all cases alike; the figure is the median of the per-round ratios):

* ``mlp``: the 3x256 MLP regression of ``bench/optim_overhead.py`` (batch 256);
* ``sac``: the SAC critic update of ``flatrl.agents.sac`` (width 256, 2 hidden layers, batch 256;
  Muon on the hidden matrices, as in ``bench/sac_muon_overhead.py``; its baseline is AdamW);
* ``tdmpc2``: the patched TD-MPC2 ``_update`` (world model incl. the stacked Q ensemble, whose
  hidden layer Muon now orthogonalises member by member, plus the policy), model_size 1 and 5.

Cases: ``adam``, ``muon`` (``flatrl.optim.Muon``'s default: same-shape matrices and stack
members in one ``bmm`` chain on GPUs, and on CPUs for matrices under 256x256, where batching
wins) and ``muon/per-matrix`` (``Muon(batched=False)``: one Newton-Schulz per matrix, as
``torch.optim.Muon``), all on the same batch.

The arithmetic model. Newton-Schulz does ``5 x (4 m^2 n + 2 m^3)`` FLOPs on an ``m x n``
matrix (m <= n); ``NS GFLOP`` sums that over Muon's matrices. Two more cases run in the same
interleaved rounds as the updates, so that the model sees the same machine load:
``ns-products``, exactly Newton-Schulz's matrix products on stacks of Muon's shapes and nothing
else (the machine's matrix-product rate for that work: ``GEMM GFLOP/s``), and ``ns-alone``, the
real Newton-Schulz of those stacks outside any update. Muon should cost ``t_adam +
t_products``: ``model`` is that over ``t_adam`` (the per-round median), and ``meas/model`` is
the measured Muon/Adam over it (1.0: Muon costs exactly its arithmetic; target on CPU <= 1.1).
``NS alone`` over ``model`` splits the gap: Newton-Schulz's own element-wise work (the
normalisation, ``addmm``'s scaled copies) against what the update around it adds (momentum,
the learning-rate step, caches the forward and backward passes left cold). ``FLOP ratio`` is
the update's FLOPs with Newton-Schulz over those without (torch's per-op FLOP formulas): how
much arithmetic Muon adds.

    OMP_NUM_THREADS=1 .venv/tdmpc2/bin/python bench/muon_batched.py            # CPU, all
    .venv/tdmpc2/bin/python bench/muon_batched.py --quick                      # a few minutes
    .venv/tdmpc2/bin/python bench/muon_batched.py --device cuda --workloads mlp sac tdmpc2
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from flatrl.optim import Muon, build_optimizer  # noqa: E402
from flatrl.optim.muon import _orthogonalise, newton_schulz_flops  # noqa: E402

WORKLOADS = ("mlp", "sac", "tdmpc2")
CASES = ("adam", "muon", "muon/per-matrix")
TARGET_MEASURED_OVER_MODEL = 1.1


@dataclasses.dataclass
class Workload:
    """The updates of one workload's cases, and the Muon optimizer whose matrices it steps."""

    name: str
    updates: dict[str, Callable[[], None]]
    muon: Muon
    adam_update_flops: float = 0.0


def find_muon(opt: Any) -> Muon:
    """The :class:`Muon` inside an optimizer (a composite, a SAM, an agent's wrapper)."""
    if isinstance(opt, Muon):
        return opt
    for attr in ("optimizers", "base_optimizer", "base", "optimizer"):
        inner = getattr(opt, attr, None)
        for child in inner if isinstance(inner, list) else [inner]:
            if child is not None and child is not opt:
                try:
                    return find_muon(child)
                except LookupError:
                    continue
    raise LookupError(f"no Muon inside {type(opt).__name__}")


def _unbatched(muon: Muon) -> Muon:
    muon.batched = False
    return muon


def mlp_workload(device: str) -> Workload:
    from optim_overhead import IN_DIM, OUT_DIM, make_mlp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, IN_DIM, generator=g).to(device)
    y = torch.randn(256, OUT_DIM, generator=g).to(device)
    updates, muons = {}, {}
    for case in CASES:
        model = make_mlp(0).to(device)
        opt = build_optimizer(model, case=case.split("/")[0], lr=1e-3)
        if case != "adam":
            muons[case] = find_muon(opt)
        if case == "muon/per-matrix":
            _unbatched(muons[case])

        def update(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

        updates[case] = update
    return Workload("MLP 3x256, batch 256", updates, muons["muon"])


def sac_workload(device: str) -> Workload:
    from sac_muon_overhead import make_agent, make_batch

    batch = make_batch(256, device)
    updates, muons = {}, {}
    for case in CASES:
        agent = make_agent("adamw" if case == "adam" else "muon", 256, 2, device, edges=False)
        if case != "adam":
            muons[case] = find_muon(agent.critic_opt)
        if case == "muon/per-matrix":
            _unbatched(muons[case])
        updates[case] = lambda agent=agent: agent.update_critic(batch)
    return Workload("SAC critic 2x256, batch 256", updates, muons["muon"])


def tdmpc2_workload(device: str, size: int, batch: int) -> Workload:
    import tdmpc2_overhead as td

    args = argparse.Namespace(tree=td.DEFAULT_TREE, device=device, compile=False)
    if str(td.DEFAULT_TREE) not in sys.path:
        td.import_tree(td.DEFAULT_TREE)
    updates, muons = {}, {}
    data = None
    for case in CASES:
        overrides = {"optimizer": "Adam" if case == "adam" else "Muon"}
        with redirect_stdout(io.StringIO()):  # the agent's construction chatter
            agent = td.make_agent(size, batch, overrides, True, True, args)
        if data is None:  # one batch for all cases
            data = td.make_batch(agent, seed=size * 1000 + batch)
        if case != "adam":
            muons[case] = find_muon(agent.optim)
        if case == "muon/per-matrix":
            _unbatched(muons[case])
        updates[case] = lambda agent=agent, data=data: agent._update(*data)
    return Workload(f"TD-MPC2 model_size {size}, batch {batch}", updates, muons["muon"])


def _clock(device: str) -> Callable[[], float]:
    if device.startswith("cuda"):

        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return wall
    return time.process_time  # this process's CPU time: other processes' load barely moves it


def interleaved(
    updates: dict[str, Callable[[], None]], rounds: int, per_round: int, device: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per update of each case, and median per-round ratio to ``adam``."""
    clock = _clock(device)
    for fn in updates.values():  # warm-up: lazy imports, allocator, optimizer state
        for _ in range(3):
            fn()
    names = list(updates)
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        this_round = {}
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            for _ in range(per_round):
                updates[n]()
            this_round[n] = (clock() - start) / per_round
            times[n].append(this_round[n])
        for n in names:
            ratios[n].append(this_round[n] / this_round["adam"])
    return (
        {n: statistics.median(v) for n, v in times.items()},
        {n: statistics.median(v) for n, v in ratios.items()},
    )


def muon_shapes(muon: Muon) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for g in muon.param_groups for p in g["params"]]


#: glibc ``mallopt`` parameters: keep freed memory in the heap instead of giving it back.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_heap() -> bool:
    """Make glibc keep freed memory in this process (no trimming, no mmap under 32 MiB).

    Why: in a bench process that builds several workloads, glibc hands the heap's freed top
    back to the kernel between updates, so each update re-faults up to ~1 MB of pages: 250-500
    minor page faults and 0.5-1.4 ms of kernel time per update of the MLP, depending on what
    the process allocated before (measured with ``getrusage``). Training processes do not see
    this (the SAC agent and the offline world model: <0.1% kernel time while running), so
    timing with it would charge the update for an artefact of the bench. Speed only: no result
    changes. Returns whether it applied (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30) and mallopt(_M_MMAP_THRESHOLD, 32 << 20))


def ns_buckets(muon: Muon) -> dict[tuple[int, int], int]:
    """Muon's matrices as Newton-Schulz sees them: ``(m, n)`` (m <= n) -> how many matrices."""
    buckets: dict[tuple[int, int], int] = {}
    for s in muon_shapes(muon):
        key = (min(s[-2:]), max(s[-2:]))
        buckets[key] = buckets.get(key, 0) + (s[0] if len(s) == 3 else 1)
    return buckets


def ns_reference_cases(muon: Muon, device: str) -> dict[str, Callable[[], None]]:
    """The model's two cases for one Muon: ``ns-products`` (Newton-Schulz's matrix products and
    nothing else) and ``ns-alone`` (the real iteration, outside any update), on random stacks
    of Muon's shapes in its Newton-Schulz dtype for the device."""
    group = muon.param_groups[0]
    steps, coefficients, eps = group["ns_steps"], group["ns_coefficients"], group["eps"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    stacks = [
        torch.randn(members, m, n, device=device).to(dtype)
        for (m, n), members in ns_buckets(muon).items()
    ]

    def products() -> None:
        for x in stacks:
            for _ in range(steps):
                gram = torch.bmm(x, x.mT)
                torch.bmm(torch.bmm(gram, gram), x)

    def alone() -> None:  # batched or one at a time, as Muon decides for the shape
        for x in stacks:
            batched = len(x) > 1 and muon._batches(x)
            _orthogonalise(list(x), coefficients, steps, eps, dtype, batched)

    return {"ns-products": products, "ns-alone": alone}


def update_flops(fn: Callable[[], Any], calls: int = 1) -> float:
    """Matrix-product FLOPs per call of ``fn`` (averaged over ``calls``), by torch's formulas.

    A dispatch mode of our own around ``torch.utils.flop_counter``'s per-op formulas:
    ``FlopCounterMode`` itself also tracks modules, which fails on TD-MPC2's tensordict
    ensemble ("Converting a tensordict to boolean value is not permitted").
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter(), redirect_stdout(io.StringIO()):
        for _ in range(calls):
            fn()
    return Counter.total / calls


def measure(
    workloads: list[str], device: str, rounds: int, per_round: int, sizes: list[int]
) -> list[dict[str, Any]]:
    """One row per workload: times, ratios, and the Newton-Schulz arithmetic model."""
    builders: list[Callable[[], Workload]] = []
    if "mlp" in workloads:
        builders.append(lambda: mlp_workload(device))
    if "sac" in workloads:
        builders.append(lambda: sac_workload(device))
    if "tdmpc2" in workloads:
        builders += [lambda s=s: tdmpc2_workload(device, s, 256) for s in sizes]
    rows = []
    for build in builders:
        wl = build()
        # a TD-MPC2 update is ~50x an MLP update: fewer per round keeps the rounds comparable
        n = max(2, per_round // 4) if wl.name.startswith("TD-MPC2") else per_round
        cases = {**wl.updates, **ns_reference_cases(wl.muon, device)}
        med, ratio = interleaved(cases, rounds, n, device)
        steps = wl.muon.param_groups[0]["ns_steps"]
        shapes = muon_shapes(wl.muon)
        ns_flops = sum(newton_schulz_flops(s, steps) for s in shapes)
        model = 1 + ratio["ns-products"]
        adam_flops = update_flops(wl.updates["adam"])
        muon_flops = update_flops(wl.updates["muon"])
        members = sum(s[0] if len(s) == 3 else 1 for s in shapes)
        rows.append(
            {
                "workload": wl.name,
                "matrices": members,
                "stacked": sum(len(s) == 3 for s in shapes),
                "ms": {n: 1e3 * t for n, t in med.items()},
                "ratio": ratio["muon"],
                "ratio_per_matrix": ratio["muon/per-matrix"],
                "ns_gflop": ns_flops / 1e9,
                "gemm_gflops": ns_flops / med["ns-products"] / 1e9,
                "model": model,
                "ns_alone_over_model": (1 + ratio["ns-alone"]) / model,
                "measured_over_model": ratio["muon"] / model,
                "flop_ratio": muon_flops / adam_flops if adam_flops else float("nan"),
            }
        )
        print(f"measured {wl.name}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| workload | Muon matrices (stacked) | ms Adam | ms Muon | Muon/Adam | per-matrix NS | "
        "NS GFLOP | GEMM GFLOP/s | model | meas/model | NS alone/model | FLOP ratio |"
    )
    out = [head, "|---" * 12 + "|"]
    for r in rows:
        out.append(
            f"| {r['workload']} | {r['matrices']} ({r['stacked']}) | {r['ms']['adam']:.2f} | "
            f"{r['ms']['muon']:.2f} | {r['ratio']:.2f}x | {r['ratio_per_matrix']:.2f}x | "
            f"{r['ns_gflop']:.3f} | {r['gemm_gflops']:.1f} | {r['model']:.2f}x | "
            f"{r['measured_over_model']:.2f} | {r['ns_alone_over_model']:.2f} | "
            f"{r['flop_ratio']:.2f}x |"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--updates", type=int, default=8, help="updates per case per round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5], help="TD-MPC2 sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 rounds x 3 updates, size 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.updates, args.sizes = 3, 3, [1]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    heap_kept = keep_freed_heap()
    cwd = os.getcwd()
    rows = measure(args.workloads, args.device, args.rounds, args.updates, args.sizes)
    os.chdir(cwd)
    print(
        f"\nMuon vs Adam per update ({args.device}, {args.threads} thread(s), torch "
        f"{torch.__version__}; median of {args.rounds} interleaved rounds x {args.updates}; "
        f"freed heap {'kept' if heap_kept else 'given back (not glibc)'})\n"
    )
    print(table(rows))
    if args.device == "cpu":
        worst = max(r["measured_over_model"] for r in rows)
        verdict = "met" if worst <= TARGET_MEASURED_OVER_MODEL else "NOT met"
        print(
            f"\ntarget: measured/model <= {TARGET_MEASURED_OVER_MODEL} on CPU: worst "
            f"{worst:.2f} ({verdict})"
        )
    argv_shown = sys.argv[1:] if argv is None else argv
    print("command: " + shlex.join(["python", "bench/muon_batched.py", *argv_shown]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
