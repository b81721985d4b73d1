"""SAM's second world-model pass computes only the gradients its step uses.

The base step applies the first pass's gradient to every out-of-scope parameter, so the second
pass takes gradients for the in-scope ones only (SAM's ``freeze_out_of_scope``): with
``sam_scope=dynamics`` the encoder's backward pass is skipped entirely and the heads' weight
gradients are not computed. The rho -> 0 law (``test_updates.py``) shows the update itself is
unchanged; here, gradient hooks on every parameter record which modules get a gradient in each
world-model pass, on the real agent (``probe.py grads``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
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
