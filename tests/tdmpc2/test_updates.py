"""The patched update against upstream: SAM off is upstream, SAM on perturbs what it should.

Every check drives the real TD-MPC2 agent of the patched tree (``probe.py``, in a child process)
on fixed synthetic batches on CPU.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest
import torch
from tdmpc2_support import REPO, TREE, run_probe

pytestmark = pytest.mark.tdmpc2
UPDATES = 4
SCOPES = ("world_model", "encoder_dynamics", "dynamics", "reward_value", "policy")


@pytest.fixture(scope="module")
def device_only_tree(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pinned upstream + the device patch (+ compat patches off the pinned stack), unpacked."""
    series = (REPO / "patches" / "tdmpc2" / "series").read_text().split()
    if not series:
        pytest.skip("patches/tdmpc2/series is empty")
    dest = tmp_path_factory.mktemp("device_only")
    archive = subprocess.run(
        ["git", "-C", str(TREE), "archive", "upstream"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for name in [series[0], *_compat_patches(series)]:
        subprocess.run(
            ["git", "apply", str(REPO / "patches" / "tdmpc2" / name)], cwd=dest, check=True
        )
    return dest / "tdmpc2"


# Upstream cannot build an agent on tensordict >= 0.14 or step DMC on gymnasium 1.x: on the current
# stack the reference is upstream + the device patch + these compatibility patches (each shown
# bit-identical on the pinned stack, where the reference stays upstream + the device patch only).
COMPAT_PATCHES = ("0008-", "0009-")


def _compat_patches(series: list[str]) -> list[str]:
    if importlib.metadata.version("tensordict") == "0.13.0":
        return []
    found = [name for name in series if name.startswith(COMPAT_PATCHES)]
    assert len(found) == len(COMPAT_PATCHES), f"compat patches {COMPAT_PATCHES} not in the series"
    return found


@pytest.fixture(scope="module")
def patched(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All probe jobs on the fully patched tree, run in one child process."""
    out = tmp_path_factory.mktemp("patched")
    scopes = list(SCOPES)
    jobs = [
        {"mode": "trace", "updates": UPDATES, "out": str(out / "adam.pt")},
        {
            "mode": "trace",
            "updates": UPDATES,
            "out": str(out / "sam.pt"),
            "overrides": {"optimizer": "SAM", "sam_rho": 0.05},
        },
        *[{"mode": "perturbed", "overrides": {"optimizer": "SAM", "sam_scope": s}} for s in scopes],
        {"mode": "latents", "overrides": {"optimizer": "SAM"}},
        {"mode": "perturbed", "overrides": {"optimizer": "SAM"}},  # the default sam_scope
        {
            "mode": "checkpoint",
            "out": str(out / "sam_ckpt.pt"),
            "overrides": {"optimizer": "SAM", "sam_every": 2},
        },
        {
            "mode": "checkpoint",
            "out": str(out / "muon_ckpt.pt"),
            "overrides": {"optimizer": "Muon"},
        },
    ]
    results = run_probe(tree, jobs)
    return {
        "dir": out,
        "adam": results[0],
        "perturbed": dict(zip(scopes, results[2:7], strict=True)),
        "latents": results[7],
        "perturbed_default": results[8],
        "checkpoint_sam": results[9],
        "checkpoint_muon": results[10],
    }


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].numel())


def test_adam_is_bit_identical_to_upstream_with_device_patch(device_only_tree, patched, tmp_path):
    (reference,) = run_probe(
        device_only_tree,
        [{"mode": "trace", "updates": UPDATES, "out": str(tmp_path / "ref.pt")}],
    )
    assert len(reference["losses"]) == UPDATES
    assert patched["adam"]["losses"] == reference["losses"]
    ref, ours = _params(tmp_path / "ref.pt"), _params(patched["dir"] / "adam.pt")
    assert ref.keys() == ours.keys()
    assert all(torch.equal(ref[k], ours[k]) for k in ref)


def test_sam_with_a_real_radius_moves_the_weights(patched):
    # The control for the rho -> 0 law below: with rho=0.05 the comparison can fail.
    adam = _params(patched["dir"] / "adam.pt")
    assert _max_diff(adam, _params(patched["dir"] / "sam.pt")) > 1e-4


EXPECTED_SCOPES = {
    "world_model": ("_world_model_loss", {"_encoder", "_dynamics", "_reward", "_Qs"}),
    "encoder_dynamics": ("_world_model_loss", {"_encoder", "_dynamics"}),
    "dynamics": ("_world_model_loss", {"_dynamics"}),
    "reward_value": ("_world_model_loss", {"_reward", "_Qs"}),
    "policy": ("_pi_loss", {"_pi"}),
}


@pytest.mark.parametrize("scope", list(EXPECTED_SCOPES))
def test_each_scope_perturbs_exactly_its_parameters(patched, scope):
    loss_fn, modules = EXPECTED_SCOPES[scope]
    result = patched["perturbed"][scope]
    # The loss SAM wraps is evaluated twice (w, then w + e), the other one once.
    assert result["repeated"] == [loss_fn]
    assert result["passes"].count(loss_fn) == 2
    changed = {name.split(".")[0] for name in result["changed_between_passes"]}
    assert changed == modules
    assert result["perturbed_loss"] is not None and result["sharpness"] is not None


def test_default_scope_is_encoder_and_dynamics(patched):
    # Table 7 of the paper: SAM on the reward and value heads (the old default's extra
    # parameters) is the harmful row; the authors' runs perturb encoder and dynamics.
    result = patched["perturbed_default"]
    assert {name.split(".")[0] for name in result["changed_between_passes"]} == {
        "_encoder",
        "_dynamics",
    }


def test_policy_is_updated_from_unperturbed_latents(patched):
    result = patched["latents"]
    assert result["passes"] == 2
    assert result["equals_pass"] == [True, False]


@pytest.mark.parametrize("name", ["checkpoint_sam", "checkpoint_muon"])
def test_checkpoint_restores_optimizer_state_and_next_update(patched, name):
    result = patched[name]
    assert result["counters"] == {"step": 1234, "episode": 7}
    assert result["differs_before"]  # a fresh agent's optimizer state is different ...
    assert result["same"] == {"model": True, "optim": True, "pi_optim": True, "scale": True}
    assert result["same_after_update"]  # ... and after loading, the next update is the same


# --- the rho -> 0 law: SAM with a vanishing radius is the base optimizer ----------------------

LAW_UPDATES = 5
LAW_CASES = {
    **{scope: {"sam_scope": scope} for scope in SCOPES},
    "every_3": {"sam_every": 3},
    "adaptive": {"sam_adaptive": True},
}
# Scopes holding the zero-initialised last layers of the reward head and the Q ensemble. At
# those, every gradient upstream of the layer is exactly 0 without a perturbation and about
# rho * |g| with one, which Adam turns into a step of lr * rho|g| / (rho|g| + eps) with
# eps = 1e-8: at rho = 1e-9 that is still ~1e-5 (a property of Adam's eps, measured in float64
# too), so for them the parameter bound is checked at rho = 1e-12.
ZERO_INIT_HEAD_SCOPES = ("world_model", "reward_value")


@pytest.fixture(scope="module")
def law(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Adam and SAM(rho = 0 in float32; rho = 1e-9 / 1e-12 in float64) on the same batches."""
    out = tmp_path_factory.mktemp("law")
    runs: list[tuple[str, dict, bool]] = [("adam32", {}, False), ("adam64", {}, True)]
    for name, case in LAW_CASES.items():
        runs.append((f"{name}@0", {"optimizer": "SAM", "sam_rho": 0.0, **case}, False))
        runs.append((f"{name}@1e-9", {"optimizer": "SAM", "sam_rho": 1e-9, **case}, True))
        if name in ZERO_INIT_HEAD_SCOPES:
            runs.append((f"{name}@1e-12", {"optimizer": "SAM", "sam_rho": 1e-12, **case}, True))
    jobs = [
        {
            "mode": "trace",
            "updates": LAW_UPDATES,
            "out": str(out / f"{name}.pt"),
            "overrides": overrides,
            "float64": float64,
        }
        for name, overrides, float64 in runs
    ]
    results = run_probe(TREE / "tdmpc2", jobs)
    return {
        name: {"losses": result["losses"], "params": _params(out / f"{name}.pt")}
        for (name, _, _), result in zip(runs, results, strict=True)
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAW_CASES))
def test_rho_zero_is_exactly_adam(law, case):
    run = law[f"{case}@0"]
    assert len(run["losses"]) == LAW_UPDATES
    assert all(update["sharpness"] == 0.0 for update in run["losses"])
    adam = law["adam32"]["params"]
    assert all(torch.equal(adam[k], run["params"][k]) for k in adam), case


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAW_CASES))
def test_vanishing_rho_converges_to_adam(law, case):
    run = law[f"{case}@1e-9"]
    sharpness = [abs(update["sharpness"]) for update in run["losses"]]
    assert max(sharpness) < 1e-6 and max(sharpness) > 0.0, sharpness  # a real, tiny step
    rho = "1e-12" if case in ZERO_INIT_HEAD_SCOPES else "1e-9"
    diff = _max_diff(law["adam64"]["params"], law[f"{case}@{rho}"]["params"])
    assert diff <= 1e-6, (case, rho, diff)
