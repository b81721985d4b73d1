"""The README's performance table, regenerated from the benches in one run: docs/performance.md.

Every figure is a per-update time ratio against Adam, measured side by side (interleaved
rounds in one process, medians; CPU figures are process CPU time on one thread), and each
ratio stands next to its arithmetic limit:

* SAM (and every_k, scopes, the SAM variants): the update's matrix-product FLOPs over Adam's,
  counted by ``torch.utils.flop_counter`` on the same update. A SAM step repeats the forward
  and backward pass of what it perturbs, so this is "2x of the perturbed part": 2.0 for a plain
  network, less where targets, nested updates or out-of-scope gradients are not repeated.
* Muon: Adam's measured time plus Newton-Schulz's FLOPs at this machine's matrix-product rate
  (``bench/muon_batched.py``); ``FLOP ratio`` is the arithmetic alone.

``measured / limit`` near 1 means the implementation costs what its arithmetic costs; above 1,
overhead; below 1, the work Adam's update does besides matrix products (elementwise ops,
Python) dilutes the extra FLOPs.

The parts run one after another, each in its environment (``.venv/d3rlpy`` for d3rlpy, the
MLP and the SAM variants; ``.venv/tdmpc2`` for TD-MPC2, SAC and Muon), as child processes of
this script::

    python3 bench/perf_table.py            # full: ~30-60 min on a loaded 2-core CPU
    python3 bench/perf_table.py --quick    # fewer rounds, fewer configurations: a few minutes
    python3 bench/perf_table.py --parts mlp muon --out /tmp/perf.md

A part's child process is ``python bench/perf_table.py --part NAME --json FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
PYTHONS = {
    "d3rlpy": VENV / "d3rlpy" / "bin" / "python",
    "tdmpc2": VENV / "tdmpc2" / "bin" / "python",
}
#: part -> the environment it runs in
PARTS = {
    "mlp": "d3rlpy",
    "d3rlpy": "d3rlpy",
    "sam_variants": "d3rlpy",
    "tdmpc2": "tdmpc2",
    "muon": "tdmpc2",
}
DEFAULT_OUT = ROOT / "docs" / "performance.md"
#: Everything from this line on in the output file is hand-written and kept on regeneration.
KEEP_MARKER = "<!-- hand-written below this line: kept when bench/perf_table.py regenerates -->"


@dataclasses.dataclass
class Settings:
    """How long each part measures (``--quick``: a few minutes in all)."""

    quick: bool

    @property
    def rounds(self) -> int:
        return 3 if self.quick else 9

    @property
    def per_round(self) -> int:
        return 4 if self.quick else 12


def flops_per_update(fn: Callable[[], Any], calls: int = 1) -> float:
    """Matrix-product FLOPs per call of ``fn``, averaged over ``calls`` calls (every_k)."""
    from muon_batched import update_flops

    return update_flops(fn, calls)


def row(integration: str, case: str, ratio: float, limit: float, **extra: Any) -> dict[str, Any]:
    return {"integration": integration, "case": case, "ratio": ratio, "limit": limit, **extra}


# --- parts (each runs in its own environment) ---------------------------------------------------
def part_mlp(s: Settings) -> list[dict[str, Any]]:
    """SAM and SAM(every_k=4) on the 3x256 MLP of bench/optim_overhead.py."""
    import torch
    from muon_batched import interleaved
    from optim_overhead import IN_DIM, OUT_DIM, make_update

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, IN_DIM, generator=g), torch.randn(256, OUT_DIM, generator=g)
    names = ["adam", "sam", "sam_every4"]
    updates = {n: make_update(n, x, y) for n in names}
    _, ratios = interleaved(updates, s.rounds, 4 * s.per_round, "cpu")
    flops = {n: flops_per_update(updates[n], calls=4) for n in names}
    label = "MLP 3x256, batch 256"
    return [
        row(label, "SAM", ratios["sam"], flops["sam"] / flops["adam"]),
        row(label, "SAM every_k=4", ratios["sam_every4"], flops["sam_every4"] / flops["adam"]),
    ]


def part_d3rlpy(s: Settings) -> list[dict[str, Any]]:
    """SAM on every d3rlpy algorithm of bench/d3rlpy_overhead.py (quick: SAC and BC)."""
    import d3rlpy
    import d3rlpy_overhead as bench

    table = bench.configs(256)
    names = ["SAC", "BC"] if s.quick else list(table)
    out = []
    for name in names:
        config, discrete = table[name]
        measured = bench.measure(name, config, discrete, s.rounds, rho=0.05)
        dataset = bench.make_dataset(discrete, n=2_000)
        batch = dataset.sample_transition_batch(config.batch_size)
        flops = {}
        for kind, cfg in (("adam", config), ("sam", bench.with_sam(config, 0.05))):
            d3rlpy.seed(0)
            algo = cfg.create(device="cpu:0")
            algo.build_with_dataset(dataset)
            algo.update(batch)  # lazy state
            flops[kind] = flops_per_update(lambda a=algo, b=batch: a.update(b))
        out.append(
            row(f"d3rlpy {name}, batch 256", "SAM", measured["ratio"], flops["sam"] / flops["adam"])
        )
    return out


def part_tdmpc2(s: Settings) -> list[dict[str, Any]]:
    """TD-MPC2 SAM per scope and sam_every=4, via bench/tdmpc2_overhead.py's agents."""
    import tdmpc2_overhead as bench

    scopes = ["dynamics", "encoder_dynamics", "world_model"]
    sizes = [1] if s.quick else [1, 5]
    args = argparse.Namespace(
        tree=bench.DEFAULT_TREE,
        device="cpu",
        compile=False,
        scopes=scopes,
        freeze="on",
        every4=True,
        rounds=s.rounds,
        updates=4,
        warmup=4,
    )
    bench.import_tree(args.tree)
    out = []
    for size in sizes:
        with redirect_stdout(io.StringIO()):
            med = bench.measure(size, 256, args)
            flops = {}
            for name, case, freeze in bench.cases(args):
                agent = bench.make_agent(size, 256, case, freeze, args)
                data = bench.make_batch(agent, seed=size * 1000 + 256)
                bench.run_updates(agent, data, 1)
                flops[name] = flops_per_update(lambda a=agent, d=data: a._update(*d), calls=4)
        for name in med:
            if name == "adam":
                continue
            case = "sam_every=4" if name == bench.EVERY4 else f"SAM sam_scope={name}"
            label = f"TD-MPC2 model_size {size}, batch 256"
            out.append(row(label, case, med[name] / med["adam"], flops[name] / flops["adam"]))
    return out


def part_muon(s: Settings) -> list[dict[str, Any]]:
    """Muon vs Adam from bench/muon_batched.py (MLP, SAC critic, TD-MPC2 incl. Q ensemble)."""
    import muon_batched

    sizes = [1] if s.quick else [1, 5]
    rows = muon_batched.measure(list(muon_batched.WORKLOADS), "cpu", s.rounds, s.per_round, sizes)
    return [
        row(
            r["workload"],
            "Muon",
            r["ratio"],
            r["model"],
            flop_ratio=r["flop_ratio"],
            per_matrix=r["ratio_per_matrix"],
            note=f"{r['matrices']} matrices, NS {r['ns_gflop']:.2f} GFLOP",
        )
        for r in rows
    ]


def part_sam_variants(s: Settings) -> list[dict[str, Any]]:
    """The efficient SAM variants, measured by bench/sam_variants.py's own ``run`` (MLP; d3rlpy
    SAC too unless quick); its limit is the pass count (AE-SAM: 1 + the SAM-step fraction)."""
    path = BENCH / "sam_variants.py"
    if not path.is_file():
        return []
    import torch

    spec = importlib.util.spec_from_file_location("sam_variants", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if not all(hasattr(bench, n) for n in ("run", "mlp_update", "VARIANTS")):
        print("bench/sam_variants.py lacks run/mlp_update/VARIANTS; skipped", file=sys.stderr)
        return []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, bench.IN_DIM, generator=g)
    y = torch.randn(256, bench.OUT_DIM, generator=g)
    workloads = [
        (
            "MLP 3x256, batch 256",
            {n: (lambda o=o: bench.mlp_update(o, x, y)) for n, o in bench.VARIANTS.items()},
            4 * s.per_round,
        )
    ]
    if not s.quick and hasattr(bench, "d3rlpy_sac_update"):
        workloads.append(
            (
                "d3rlpy SAC, batch 256",
                {
                    n: (lambda o=o: bench.d3rlpy_sac_update(o, 256))
                    for n, o in bench.VARIANTS.items()
                },
                s.per_round,
            )
        )
    out = []
    for label, makers, per_round in workloads:
        with redirect_stdout(io.StringIO()):
            measured = bench.run(label, makers, s.rounds, per_round)
        for name, ratio, limit in measured:
            if name == "adam":
                continue
            try:
                value = float(str(limit).split()[0])
            except ValueError:
                value = float("nan")
            out.append(row(label, f"{name} (sam_variants)", ratio, value, note=f"limit {limit}"))
    return out


PART_FUNCTIONS: dict[str, Callable[[Settings], list[dict[str, Any]]]] = {
    "mlp": part_mlp,
    "d3rlpy": part_d3rlpy,
    "sam_variants": part_sam_variants,
    "tdmpc2": part_tdmpc2,
    "muon": part_muon,
}


def run_part(name: str, quick: bool, out: Path) -> None:
    """Child-process entry: measure one part, write its rows as JSON."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(BENCH))
    cwd = os.getcwd()
    rows = PART_FUNCTIONS[name](Settings(quick))
    os.chdir(cwd)
    out.write_text(json.dumps(rows))


# --- the parent: run the parts, write the table -------------------------------------------------
def markdown(rows: list[dict[str, Any]], command: str, took_s: float, header: str) -> str:
    lines = [
        "# Performance: cost per update against Adam",
        "",
        "Generated by `bench/perf_table.py` (do not edit by hand); reproduce with:",
        "",
        f"    {command}",
        "",
        header,
        "",
        "`ratio`: measured time per update over Adam's, side by side in one process "
        "(interleaved rounds, median). `limit`: the arithmetic limit: for SAM the update's "
        "matrix-product FLOPs over Adam's (2x of the perturbed part); for Muon Adam's time plus "
        "Newton-Schulz's FLOPs at this machine's matrix-product rate. `measured/limit` near 1: "
        "the code costs what its arithmetic costs.",
        "",
        "| integration | case | ratio (x Adam) | arithmetic limit | measured/limit | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        notes = []
        if "flop_ratio" in r:
            notes.append(f"FLOP ratio {r['flop_ratio']:.2f}x")
        if "per_matrix" in r:
            notes.append(f"one NS per matrix: {r['per_matrix']:.2f}x")
        if r.get("note"):
            notes.append(r["note"])
        limit = r["limit"]
        lim = f"{limit:.2f}x" if limit == limit else "n/a"
        over = f"{r['ratio'] / limit:.2f}" if limit == limit and limit else "n/a"
        lines.append(
            f"| {r['integration']} | {r['case']} | **{r['ratio']:.2f}x** | {lim} | {over} | "
            f"{'; '.join(notes)} |"
        )
    lines += ["", f"Measured in {took_s / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and configurations")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        run_part(args.part, args.quick, args.json)
        return 0

    start = time.time()
    rows: list[dict[str, Any]] = []
    failed = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="disable")
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            python = PYTHONS[PARTS[part]]
            if not python.exists():
                failed.append(f"{part}: no environment at {python} (make setup)")
                continue
            out = Path(tmp) / f"{part}.json"
            cmd = [str(python), str(Path(__file__).resolve()), "--part", part, "--json", str(out)]
            print(f"== {part} ({PARTS[part]} environment)", file=sys.stderr, flush=True)
            proc = subprocess.run([*cmd, *(["--quick"] if args.quick else [])], env=env, cwd=ROOT)
            if proc.returncode != 0 or not out.exists():
                failed.append(f"{part}: exit status {proc.returncode}")
                continue
            rows += json.loads(out.read_text())
    try:  # the parent needs no torch; the header names the children's
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = subprocess.run(
            [str(PYTHONS["tdmpc2"]), "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    shown = ["python3", "bench/perf_table.py", *(argv if argv is not None else sys.argv[1:])]
    header = (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), one torch "
        f"thread, torch {torch_version}{', --quick' if args.quick else ''}."
    )
    text = markdown(rows, shlex.join(shown), time.time() - start, header)
    if failed:
        text += "\nParts that did not run: " + "; ".join(failed) + "\n"
    old = args.out.read_text() if args.out.exists() else ""
    if KEEP_MARKER in old:
        text += "\n" + old[old.index(KEEP_MARKER) :]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
