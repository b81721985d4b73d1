"""The patched update against upstream: SAM off is upstream, SAM on perturbs what it should.

Every check drives the real TD-MPC2 agent of the patched tree (``probe.py``, in a child process)
on fixed synthetic batches on CPU.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from tdmpc2_support import REPO, TREE, run_probe

pytestmark = pytest.mark.tdmpc2
UPDATES = 4


@pytest.fixture(scope="module")
def device_only_tree(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pinned upstream + the device patch only (series entry 1), unpacked in a temp folder."""
    series = (REPO / "patches" / "tdmpc2" / "series").read_text().split()
    if not series:
        pytest.skip("patches/tdmpc2/series is empty")
    dest = tmp_path_factory.mktemp("device_only")
    archive = subprocess.run(
        ["git", "-C", str(TREE), "archive", "upstream"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    patch = REPO / "patches" / "tdmpc2" / series[0]
    subprocess.run(["git", "apply", str(patch)], cwd=dest, check=True)
    return dest / "tdmpc2"


@pytest.fixture(scope="module")
def patched(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All probe jobs on the fully patched tree, run in one child process."""
    out = tmp_path_factory.mktemp("patched")
    scopes = ["world_model", "encoder_dynamics", "dynamics", "reward_value", "policy"]
    jobs = [
        {"mode": "trace", "updates": UPDATES, "out": str(out / "adam.pt")},
        {
            "mode": "trace",
            "updates": UPDATES,
            "out": str(out / "sam_tiny.pt"),
            "overrides": {"optimizer": "SAM", "sam_rho": 1e-9},
        },
        {
            "mode": "trace",
            "updates": UPDATES,
            "out": str(out / "sam_tiny_policy.pt"),
            "overrides": {"optimizer": "sam", "sam_rho": 1e-9, "sam_scope": "policy"},
        },
        {
            "mode": "trace",
            "updates": UPDATES,
            "out": str(out / "sam.pt"),
            "overrides": {"optimizer": "SAM", "sam_rho": 0.05},
        },
        *[{"mode": "perturbed", "overrides": {"optimizer": "SAM", "sam_scope": s}} for s in scopes],
        {"mode": "latents", "overrides": {"optimizer": "SAM"}},
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
        "perturbed": dict(zip(scopes, results[4:9], strict=True)),
        "latents": results[9],
        "checkpoint_sam": results[10],
        "checkpoint_muon": results[11],
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


def test_sam_with_tiny_rho_matches_adam(patched):
    adam = _params(patched["dir"] / "adam.pt")
    sam_real = _max_diff(adam, _params(patched["dir"] / "sam.pt"))
    for name in ("sam_tiny.pt", "sam_tiny_policy.pt"):
        diff = _max_diff(adam, _params(patched["dir"] / name))
        assert diff < 1e-4, (name, diff)
        # rho=0.05 moves the weights visibly: the comparison above can fail.
        assert sam_real > 10 * diff, (name, diff, sam_real)


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
