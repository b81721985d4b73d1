"""compile=true with Adam, SAM and Muon, on CPU through inductor's C++ backend (compile_cpu=true).

Upstream compiles the whole update; with SAM or Muon only the loss computations are compiled
and the optimizer steps stay eager (see the compile patch). Compiled code draws its random
numbers (Q-ensemble dropout) from its own generator, so these jobs set inductor's
``fallback_random``: the compiled losses then see eager's dropout masks and must match eager to
float tolerance. Inductor compiles slowly on CPU: every job runs in ONE child process.

GPU check (not run here): the same path on CUDA with CUDA graphs, e.g.
``train.py task=cartpole-swingup model_size=1 steps=600 seed_steps=500 seed_updates=20
device=cuda compile=true optimizer=SAM enable_wandb=false eval_episodes=1``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tdmpc2_support import run_probe

pytestmark = [pytest.mark.tdmpc2, pytest.mark.slow]
UPDATES = 3
OPTIMIZERS = {
    "adam": {},
    "sam": {"optimizer": "SAM", "sam_rho": 0.05},
    "muon": {"optimizer": "Muon"},
}
COMPILED = {"compile": True, "compile_cpu": True, "batch_size": 8, "horizon": 1}
EAGER = {"batch_size": 8, "horizon": 1}


@pytest.fixture(scope="module")
def runs(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("compile")
    jobs, names = [], []
    for name, overrides in OPTIMIZERS.items():
        for kind, extra in (("eager", EAGER), ("compiled", COMPILED)):
            names.append((name, kind))
            jobs.append(
                {
                    "mode": "trace",
                    "updates": UPDATES,
                    "out": str(out / f"{name}_{kind}.pt"),
                    "overrides": {**overrides, **extra},
                    "fallback_random": True,
                }
            )
    # Inductor's C++ compile of three optimizers' graphs: ~2.5 min on an idle core, several times
    # that on a loaded shared machine; the limit only guards against a hang.
    results = run_probe(tree, jobs, timeout=1500)
    return {
        key: {"losses": r["losses"], "params": torch.load(out / f"{key[0]}_{key[1]}.pt")}
        for key, r in zip(names, results, strict=True)
    }


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_update_matches_eager(runs, name):
    eager, compiled = runs[(name, "eager")], runs[(name, "compiled")]
    assert len(compiled["losses"]) == UPDATES
    for e, c in zip(eager["losses"], compiled["losses"], strict=True):
        assert e.keys() == c.keys()
        for key in ("total_loss", "consistency_loss", "reward_loss", "value_loss", "pi_loss"):
            assert math.isfinite(c[key])
            assert math.isclose(c[key], e[key], rel_tol=1e-3, abs_tol=1e-5), (name, key)
    diff = max(
        float((eager["params"][k] - compiled["params"][k]).abs().max())
        for k in eager["params"]
        if eager["params"][k].numel()
    )
    assert diff < 1e-4, (name, diff)


def test_compiled_sam_reports_its_sharpness(runs):
    compiled = runs[("sam", "compiled")]["losses"]
    eager = runs[("sam", "eager")]["losses"]
    for e, c in zip(eager, compiled, strict=True):
        assert math.isclose(c["sharpness"], e["sharpness"], rel_tol=1e-2, abs_tol=1e-6)
