"""SAM's second world-model pass computes only the gradients its step uses.

The base step applies the first pass's gradient to every out-of-scope parameter, so the second
pass takes gradients for the in-scope ones only (SAM's ``freeze_out_of_scope``): with
``sam_scope=dynamics`` the encoder's backward pass is skipped entirely and the heads' weight
gradients are not computed. The rho -> 0 law (``test_updates.py``) shows the update itself is
unchanged; here, gradient hooks on every parameter record which modules get a gradient in each
world-model pass, on the real agent (``probe.py grads``).

With ``sam_scope=dynamics`` the second pass also skips the encoder and the t=0 reward/Q heads,
reusing the first pass's z_0 and t=0 loss terms (patch 0012): the update must be bit-identical
to the pass that recomputes them, with dropout on (the Q ensemble's masks are the uncut ones).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tdmpc2_support import run_probe

pytestmark = pytest.mark.tdmpc2
ALL = ["_Qs", "_dynamics", "_encoder", "_reward"]  # the world model of a non-episodic task
SECOND_PASS = {
    "dynamics": ["_dynamics"],
    "encoder_dynamics": ["_dynamics", "_encoder"],
    "reward_value": ["_Qs", "_reward"],
    "world_model": ALL,
}
USER_FROZEN = ["_reward.0.weight", "_dynamics.0.bias"]  # one out of scope, one in scope


@pytest.fixture(scope="module")
def grads(tree: Path) -> dict:
    """One update per case in one child process; which modules got a gradient in each pass."""
    cases = {
        "adam": ({}, []),
        **{scope: ({"optimizer": "SAM", "sam_scope": scope}, []) for scope in SECOND_PASS},
        "user_frozen": ({"optimizer": "SAM", "sam_scope": "dynamics"}, USER_FROZEN),
    }
    jobs = [
        {"mode": "grads", "overrides": overrides, "user_frozen": frozen}
        for overrides, frozen in cases.values()
    ]
    return dict(zip(cases, run_probe(tree, jobs), strict=True))


def test_adam_takes_one_pass_with_every_gradient(grads):
    assert grads["adam"]["passes"] == [ALL]


@pytest.mark.parametrize("scope", list(SECOND_PASS))
def test_second_pass_takes_gradients_for_the_scope_only(grads, scope):
    result = grads[scope]
    assert result["passes"] == [ALL, SECOND_PASS[scope]]
    assert result["requires_grad_after"] == result["requires_grad_before"]


def test_user_frozen_parameters_stay_frozen(grads):
    result = grads["user_frozen"]
    before = result["requires_grad_before"]
    assert not set(USER_FROZEN) & set(before)
    assert "_reward.0.bias" in before and "_dynamics.0.weight" in before
    assert result["requires_grad_after"] == before
    assert result["passes"] == [ALL, ["_dynamics"]]


@pytest.fixture(scope="module")
def t0_reuse(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three SAM(dynamics, rho 0.1) updates with Q dropout 0.3, the second pass reusing the
    first's t=0 work or recomputing it, on the same batches."""
    out = tmp_path_factory.mktemp("t0")
    overrides = {"optimizer": "SAM", "sam_scope": "dynamics", "sam_rho": 0.1, "dropout": 0.3}
    runs = {"reuse": {}, "recompute": {"_sam_reuses_t0": False}}
    jobs = [
        {"mode": "trace", "updates": 3, "out": str(out / f"{name}.pt"), "overrides": overrides}
        | {"attrs": attrs}
        for name, attrs in runs.items()
    ]
    results = dict(zip(runs, run_probe(tree, jobs), strict=True))
    for name in runs:
        results[name]["params"] = torch.load(out / f"{name}.pt")
    return results


def test_dynamics_scope_second_pass_skips_encoder_and_t0_heads(t0_reuse):
    horizon, updates = 3, 3
    # per update: the TD targets' and the first pass's encoder calls; the recomputing second
    # pass encodes again
    assert t0_reuse["reuse"]["encoder_calls"] == 2 * updates
    assert t0_reuse["recompute"]["encoder_calls"] == 3 * updates
    assert t0_reuse["reuse"]["reward_rows"] == [horizon, horizon - 1] * updates
    assert t0_reuse["recompute"]["reward_rows"] == [horizon, horizon] * updates


def test_reusing_t0_changes_nothing_bit_for_bit(t0_reuse):
    reuse, recompute = t0_reuse["reuse"], t0_reuse["recompute"]
    assert all(update["sharpness"] > 0 for update in reuse["losses"])  # a real perturbation
    assert reuse["losses"] == recompute["losses"]  # incl. perturbed_loss: the same loss value
    assert reuse["params"].keys() == recompute["params"].keys()
    assert all(torch.equal(reuse["params"][k], recompute["params"][k]) for k in reuse["params"])
