"""Every CUDA path of flatrl in one command, with a pass/fail table (``make gpu-check``).

What runs (each check a subprocess in the right environment, with its own time limit):

* core: ``flatrl.optim.Muon`` equals ``torch.optim.Muon`` bit for bit on CUDA (bfloat16
  Newton-Schulz); the rho -> 0 law on CUDA (SAM with rho = 0 and dropout = Adam, CUDA RNG replayed);
* d3rlpy: SAC with ``SAMFactory`` trains on CUDA and logs a finite sharpness; ``compile_graph=True``
  with SAM is refused at create time with the documented message;
* TD-MPC2: ``compile=true`` (upstream's default) with ``optimizer=Adam``, ``SAM`` and ``Muon``;
  ``sam_scope=dynamics``'s second pass reusing the t=0 work is bit-identical to recomputing it
  on CUDA too (the Q dropout masks, patch 0012);
* the SAC agent with Muon on CUDA (bfloat16 Newton-Schulz) and the world-model agent on CUDA.

Usage::

    make gpu-check                       # or: python3 bench/gpu_check.py [--only NAME ...]
    python3 bench/gpu_check.py --list    # what would run

On a machine without CUDA it says so and exits with status 2 (nothing was checked). The table
and each failing check's output tail go to stdout; ``--markdown FILE`` also writes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
D3 = VENV / "d3rlpy" / "bin" / "python"
TD = VENV / "tdmpc2" / "bin" / "python"
TDMPC2_DIR = ROOT / "build" / "tdmpc2" / "tdmpc2"


@dataclasses.dataclass(frozen=True)
class Check:
    """One CUDA path: a command, the environment it runs in, and its time limit."""

    name: str
    what: str
    python: Path
    args: tuple[str, ...]
    cwd: Path = ROOT
    timeout_s: int = 180


MUON_BITWISE = textwrap.dedent(
    """
    import os, torch
    from flatrl.optim import Muon
    dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
    torch.manual_seed(0)
    w = torch.randn(64, 32, device=dev)
    a, b = w.clone().requires_grad_(), w.clone().requires_grad_()
    # ns_dtype=None is bfloat16 on CUDA (the product default); on CPU name it for the dry run
    ns = None if dev.type == "cuda" else "bfloat16"
    ours = Muon([a], lr=0.02, momentum=0.95, nesterov=True, ns_dtype=ns)
    ref = torch.optim.Muon([b], lr=0.02, momentum=0.95, nesterov=True)
    for _ in range(3):
        g = torch.randn_like(w)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step(); ref.step()
    assert torch.equal(a, b), (a - b).abs().max().item()
    print(f"Muon on {dev} == torch.optim.Muon bit for bit (3 steps, bf16 Newton-Schulz)")
    """
)

SAM_RHO0_CUDA = textwrap.dedent(
    """
    import copy, os, torch
    from torch import nn
    from flatrl.optim import SAM, sam_step
    from flatrl.runtime import TorchRNG
    dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1)).to(dev)
    twin = copy.deepcopy(net)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    sam = SAM(twin.parameters(), base=torch.optim.Adam, lr=1e-3, rho=0.0)
    x, y = torch.randn(64, 8, device=dev), torch.randn(64, 1, device=dev)
    torch.manual_seed(1)
    for _ in range(5):
        adam.zero_grad(); ((net(x) - y) ** 2).mean().backward(); adam.step()
    torch.manual_seed(1)
    for _ in range(5):
        rng = TorchRNG(dev); sam.zero_grad()
        loss = ((twin(x) - y) ** 2).mean(); loss.backward()
        sam_step(sam, loss, lambda: ((twin(x) - y) ** 2).mean(), rng=rng, modules=[twin])
        assert abs(sam.last_sharpness) < 1e-6, sam.last_sharpness
    diff = max((p - q).abs().max().item() for p, q in zip(net.parameters(), twin.parameters()))
    assert diff <= 1e-6, diff
    print(f"SAM(rho=0) == Adam on {dev} with dropout: max |dw| = {diff:.1e}")
    """
)

D3RLPY_SAC_SAM = textwrap.dedent(
    """
    import math, os, numpy as np, d3rlpy
    dev = os.environ["GPU_CHECK_DEVICE"]
    from d3rlpy.optimizers import AdamFactory, SAMFactory
    rng = np.random.default_rng(0)
    n = 400
    ds = d3rlpy.dataset.MDPDataset(
        observations=rng.normal(size=(n, 3)).astype("float32"),
        actions=rng.uniform(-1, 1, size=(n, 1)).astype("float32"),
        rewards=rng.normal(size=(n, 1)).astype("float32"),
        terminals=(np.arange(n) % 50 == 49).astype("float32"),
    )
    sam = SAMFactory(base=AdamFactory(), rho=0.05)
    algo = d3rlpy.algos.SACConfig(
        actor_optim_factory=sam, critic_optim_factory=sam, temp_optim_factory=sam, batch_size=64
    ).create(device=dev)
    algo.build_with_dataset(ds)
    out = algo.fit(ds, n_steps=50, n_steps_per_epoch=50, show_progress=False, save_interval=10**9,
                   logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    metrics = out[-1][1]
    assert math.isfinite(metrics["critic_sharpness"]), metrics
    print(f"d3rlpy SAC+SAM on {dev}:", {k: round(v, 4) for k, v in metrics.items() if "sharp" in k})
    if not dev.startswith("cuda"):
        raise SystemExit(0)  # d3rlpy compiles graphs on CUDA only: nothing to refuse on CPU
    try:
        d3rlpy.algos.SACConfig(
            actor_optim_factory=sam, critic_optim_factory=sam, compile_graph=True
        ).create(device=dev).build_with_dataset(ds)
    except ValueError as err:
        assert "compile_graph" in str(err), err
        print("compile_graph=True with SAM refused:", str(err).splitlines()[0])
    else:
        raise AssertionError("compile_graph=True with SAMFactory was not refused")
    """
)

TDMPC2_T0_REUSE = textwrap.dedent(
    """
    import os, sys, tempfile, torch
    sys.path.insert(0, os.path.join(os.environ["GPU_CHECK_ROOT"], "tests", "tdmpc2"))
    import probe
    dev = os.environ["GPU_CHECK_DEVICE"]
    tree = os.path.join(os.environ["GPU_CHECK_ROOT"], "build", "tdmpc2", "tdmpc2")
    cfg = {"optimizer": "SAM", "sam_scope": "dynamics", "sam_rho": 0.1, "dropout": 0.3,
           "device": dev}
    out, results = tempfile.mkdtemp(), {}
    for name, attrs in (("reuse", {}), ("recompute", {"_sam_reuses_t0": False})):
        job = {"mode": "trace", "updates": 3, "out": os.path.join(out, name + ".pt"),
               "overrides": cfg, "attrs": attrs}
        results[name] = probe.run_job(tree, job)
        results[name]["params"] = torch.load(job["out"])
    a, b = results["reuse"], results["recompute"]
    assert a["reward_rows"] == [3, 2] * 3 and b["reward_rows"] == [3, 3] * 3
    assert a["losses"] == b["losses"], (a["losses"], b["losses"])
    same = all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert same, "t=0 reuse changed the update on " + dev
    print(f"TD-MPC2 sam_scope=dynamics on {dev}: t=0 reuse == recompute bit for bit (dropout 0.3)")
    """
)

TDMPC2_TINY = (
    "task=cartpole-swingup",
    "model_size=1",
    "steps=600",
    "seed_steps=500",
    "seed_updates=50",
    "iterations=2",
    "num_samples=64",
    "num_elites=8",
    "num_pi_trajs=4",
    "batch_size=64",
    "eval_episodes=1",
    "compile=true",
    "enable_wandb=false",
    "save_video=false",
)


def checks(tmp: Path, device: str) -> list[Check]:
    """The checks, in the order they run (``device`` is cuda, or cpu for a dry run)."""
    return [
        Check(
            "core-muon",
            "flatrl.optim.Muon == torch.optim.Muon (CUDA, bf16)",
            D3,
            ("-c", MUON_BITWISE),
            timeout_s=120,
        ),
        Check(
            "core-sam-rho0",
            "SAM(rho=0) == Adam with dropout on CUDA",
            D3,
            ("-c", SAM_RHO0_CUDA),
            timeout_s=120,
        ),
        Check(
            "d3rlpy-sac-sam",
            "d3rlpy SAC+SAM on cuda; compile_graph refused",
            D3,
            ("-c", D3RLPY_SAC_SAM),
            timeout_s=240,
        ),
        *[
            Check(
                f"tdmpc2-compile-{opt.lower()}",
                f"TD-MPC2 compile=true optimizer={opt}",
                TD,
                (
                    str(TDMPC2_DIR / "train.py"),
                    *TDMPC2_TINY,
                    f"device={device}",
                    f"optimizer={opt}",
                    f"exp_name=gpucheck_{opt.lower()}",
                    *(("compile_cpu=true",) if device == "cpu" else ()),
                ),
                cwd=tmp,
                timeout_s=600,
            )
            for opt in ("Adam", "SAM", "Muon")
        ],
        Check(
            "tdmpc2-t0-reuse",
            "TD-MPC2 dynamics-scope SAM: t=0 reuse bit-identical on CUDA",
            TD,
            ("-c", TDMPC2_T0_REUSE),
            timeout_s=300,
        ),
        Check(
            "sac-muon-bf16",
            "SAC agent, Muon on CUDA (bf16 Newton-Schulz)",
            TD,
            (
                "-m",
                "flatrl.agents.sac.train",
                f"device={device}",
                "env.task=cartpole-swingup",
                "env.action_repeat=8",
                "training.total_env_steps=2000",
                "training.seed_steps=1000",
                "training.eval_every_steps=2000",
                "training.eval_episodes=1",
                "training.progress_bar=false",
                f"training.checkpoint_dir={tmp / 'sac_ckpt'}",
                f"training.replay_dir={tmp / 'sac_rb'}",
                f"hydra.run.dir={tmp / 'sac_hydra'}",
            ),
            timeout_s=300,
        ),
        Check(
            "muon-batched",
            "Muon vs Adam per update on CUDA (batched NS, stacked Q)",
            TD,
            (str(ROOT / "bench" / "muon_batched.py"), "--device", device, "--quick"),
            timeout_s=600,
        ),
        Check(
            "world-model-cuda",
            "world-model agent (SAM on the memory) on CUDA",
            D3,
            (
                "-m",
                "flatrl.agents.world_model",
                "--env-name",
                "CartPole-v1",
                "--use-improved-controller",
                "--use-a2c",
                "--max-epoch",
                "3",
                "--n-steps",
                "32",
                "--optimizer",
                "sam",
                "--device",
                device,
                "--no-progress",
                "--log-dir",
                str(tmp / "wm_logs"),
                "--save-path",
                str(tmp / "wm_ckpt"),
            ),
            timeout_s=240,
        ),
    ]


def cuda_available(python: Path) -> tuple[bool, str]:
    """Whether torch in ``python``'s environment sees a CUDA device, and its name."""
    probe = "import torch; print(torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    name = out.stdout.strip()
    return out.returncode == 0 and name not in ("", "False"), name


def run_check(check: Check, device: str) -> tuple[str, float, str]:
    """Run one check; returns (PASS|FAIL|TIMEOUT, seconds, output tail)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", GPU_CHECK_DEVICE=device, GPU_CHECK_ROOT=str(ROOT))
    env.setdefault("MUJOCO_GL", "egl" if device.startswith("cuda") else "disable")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [str(check.python), *check.args],
            cwd=check.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=check.timeout_s,
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:]
        return "TIMEOUT", time.monotonic() - start, str(tail)
    status = "PASS" if proc.returncode == 0 else "FAIL"
    return status, time.monotonic() - start, (proc.stdout + proc.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default); cpu is a dry run of the harness itself"
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="flatrl-gpu-check-"))
    selected = [c for c in checks(tmp, args.device) if args.only is None or c.name in args.only]
    if args.list:
        for c in selected:
            print(f"{c.name:22s} {c.what}")
        return 0
    if args.only is not None and len(selected) != len(args.only):
        known = ", ".join(c.name for c in checks(tmp, args.device))
        print(f"unknown check in --only {args.only}; known: {known}")
        return 2
    ok, device = cuda_available(D3)
    if args.device == "cpu":
        ok, device = True, "cpu (dry run: CUDA paths are NOT exercised)"
    if not ok:
        print(
            "gpu-check: torch sees no CUDA device here, so nothing was checked. Run it on a "
            "machine with an NVIDIA GPU after `make setup` with a CUDA build of torch 2.13.0."
        )
        return 2
    print(f"gpu-check on {device}; work files in {tmp}")
    rows = []
    for check in selected:
        status, seconds, tail = run_check(check, args.device)
        rows.append((check, status, seconds))
        print(f"  {status:7s} {check.name:22s} {seconds:6.1f} s  {check.what}", flush=True)
        if status != "PASS":
            print(textwrap.indent(tail, "      | "))
    table = ["| check | what | result | seconds |", "| --- | --- | --- | --- |"]
    table += [f"| {c.name} | {c.what} | {s} | {t:.0f} |" for c, s, t in rows]
    print(f"\nDevice: {device}\n" + "\n".join(table))
    if args.markdown:
        args.markdown.write_text(f"Device: {device}\n\n" + "\n".join(table) + "\n")
    failed = [c.name for c, s, _ in rows if s != "PASS"]
    print(
        f"\n{len(rows) - len(failed)}/{len(rows)} passed"
        + (f"; failed: {failed}" if failed else "")
    )
    print("Reproduce: make gpu-check   (or python3 bench/gpu_check.py --only NAME)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
