"""The compatibility patches change nothing: the pinned and the current stack train alike.

The same patched TD-MPC2 tree runs the same Adam updates (fixed seed, fixed synthetic batches,
tests/tdmpc2/probe.py) once under this interpreter (the current stack: tensordict 0.14,
torchrl 0.14, numpy 2) and once under .venv/tdmpc2 (the upstream-pinned stack: tensordict 0.13,
torchrl 0.13, numpy 1.24); losses and final weights must agree to float tolerance. On each stack
SAM with rho = 0 must reproduce its Adam run exactly (the rho -> 0 law).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "build" / "tdmpc2" / "tdmpc2"
PROBE = REPO / "tests" / "tdmpc2" / "probe.py"
PINNED = REPO / ".venv" / "tdmpc2" / "bin" / "python"
UPDATES = 3
STACK = ("hydra", "omegaconf", "torchrl", "tensordict", "dm_control")


def _skip_reason() -> str | None:
    if not (TREE / "train.py").is_file():
        return f"no patched TD-MPC2 tree at {TREE} (python3 apply_patches.py apply tdmpc2)"
    missing = [m for m in STACK if importlib.util.find_spec(m) is None]
    if missing:
        return f"this interpreter lacks {missing} of the TD-MPC2 stack (run in .venv/current)"
    if Path(sys.prefix).resolve() == PINNED.parents[1].resolve():
        return "this IS the pinned environment; run the comparison from .venv/current"
    if not PINNED.is_file():
        return f"no pinned environment at {PINNED} (make setup builds it)"
    return None


SKIP = _skip_reason()
if SKIP:
    print(f"stack-equivalence tests skipped: {SKIP}")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _probe(python: Path | str, out: Path) -> list[dict]:
    jobs = [
        {"mode": "trace", "updates": UPDATES, "out": str(out / "adam.pt")},
        {
            "mode": "trace",
            "updates": UPDATES,
            "out": str(out / "sam0.pt"),
            "overrides": {"optimizer": "SAM", "sam_rho": 0.0},
        },
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="disable")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(python), str(PROBE), str(TREE), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"{python} probe failed:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE ") :])


def _versions(python: Path | str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "('tensordict', 'torchrl', 'numpy', 'gymnasium', 'torch')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    result = {}
    for name, python in (("current", sys.executable), ("pinned", PINNED)):
        out = tmp_path_factory.mktemp(name)
        adam, sam0 = _probe(python, out)
        result[name] = {"adam": adam, "sam0": sam0, "dir": out, "versions": _versions(python)}
    return result


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_the_two_stacks_really_differ(runs: dict[str, dict]) -> None:
    """The control: the comparison is between tensordict 0.13 and 0.14+, same torch."""
    cur, pin = runs["current"]["versions"], runs["pinned"]["versions"]
    assert cur["torch"] == pin["torch"]
    assert cur["tensordict"] != pin["tensordict"] and cur["torchrl"] != pin["torchrl"]
    assert cur["numpy"].split(".")[0] == "2" and pin["numpy"].split(".")[0] == "1"


def test_adam_losses_agree_across_stacks(runs: dict[str, dict]) -> None:
    cur, pin = runs["current"]["adam"]["losses"], runs["pinned"]["adam"]["losses"]
    assert len(cur) == len(pin) == UPDATES
    for step, (a, b) in enumerate(zip(cur, pin, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (step, key)


def test_adam_weights_agree_across_stacks(runs: dict[str, dict]) -> None:
    cur = _params(runs["current"]["dir"] / "adam.pt")
    pin = _params(runs["pinned"]["dir"] / "adam.pt")
    assert cur.keys() == pin.keys()
    # the stacked Q-ensemble layout (num_q, out, in) is the same on both stacks
    assert cur["_Qs.params.0.weight"].dim() == 3
    for key in cur:
        assert cur[key].shape == pin[key].shape, key
        torch.testing.assert_close(cur[key], pin[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("stack", ["current", "pinned"])
def test_rho_zero_is_adam_on_each_stack(runs: dict[str, dict], stack: str) -> None:
    run = runs[stack]
    for a, s in zip(run["adam"]["losses"], run["sam0"]["losses"], strict=True):
        for key in a:
            assert s[key] == a[key], (stack, key)
    adam, sam0 = _params(run["dir"] / "adam.pt"), _params(run["dir"] / "sam0.pt")
    assert all(torch.equal(adam[k], sam0[k]) for k in adam)
