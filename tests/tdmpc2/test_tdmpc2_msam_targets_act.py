"""``sam_variant=msam`` in TD-MPC2's agent: targets, policy update, target Qs and acting at w.

Momentum-SAM keeps the parameters at the perturbed ``w~`` between updates; its world-model
gradient is taken there. Everything else the update and acting read must be the trained
weights ``w``: the TD targets (and the encodings they are taken at), the policy update's Q
values, the target-Q Polyak step and ``act`` (planning and the policy alike). Each is compared
with a plain-Adam agent holding ``w`` (or with ``w`` itself), in process on the patched tree.
"""

from __future__ import annotations

import pytest
import torch
from offline_support import TINY_AGENT, offline_agent, synthetic
from tdmpc2_support import SKIP_REASON

pytestmark = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "")
torch.set_num_threads(1)

TINY = {  # + a small planner, so that act() plans quickly
    **TINY_AGENT,
    "num_samples": 16,
    "num_elites": 4,
    "num_pi_trajs": 4,
    "iterations": 2,
}
MSAM = {"optimizer": "SAM", "sam_rho": 0.5, "sam_variant": "msam"}


def _agent(data: dict, **keys):
    return offline_agent(data, TINY, **keys)


def _state(agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.model.state_dict().items()}


def _at_w(agent) -> dict[str, torch.Tensor]:
    from flatrl.optim import unperturbed

    with unperturbed(agent.optim, agent.pi_optim):
        return _state(agent)


@pytest.fixture(scope="module", params=["world_model", "policy"])
def trained(request):
    data = synthetic(3, 20, 0)
    agent, buffer = _agent(data, sam_scope=request.param, **MSAM)
    for _ in range(3):
        agent.update(buffer)
    msam = agent.pi_optim if request.param == "policy" else agent.optim
    assert msam.perturbed
    return agent, buffer, data


def _reference(data: dict, w: dict[str, torch.Tensor]):
    ref, _ = _agent(data)  # plain Adam
    ref.model.load_state_dict(w)
    return ref


def test_update_takes_targets_at_w_and_steps_the_target_qs_from_w(trained):
    agent, buffer, data = trained
    torch.manual_seed(11)
    obs, action, reward, terminated, _ = buffer.sample()
    ref = _reference(data, _at_w(agent))
    seen = {}
    original_td, original_pi = agent._td_target, agent.update_pi

    def td_target(z, *args):
        seen["rng"] = torch.get_rng_state()  # pi samples its action: replay the draw below
        seen["next_z"], seen["td"] = z.clone(), original_td(z, *args)
        return seen["td"]

    def update_pi(zs, task):
        own = ("_pi", "_target")  # the policy's own weights; the target Qs move after it
        seen["during_pi"] = {k: v for k, v in _state(agent).items() if not k.startswith(own)}
        return original_pi(zs, task)

    agent._td_target, agent.update_pi = td_target, update_pi
    try:
        targets_before = agent.model._target_Qs_params.clone()
        agent._update(obs, action, reward, terminated)
    finally:
        del agent._td_target, agent.update_pi
    with torch.no_grad():
        next_z = ref.model.encode(obs[1:], None)
        torch.set_rng_state(seen["rng"])
        expected = ref._td_target(next_z, reward, terminated, None)
    assert torch.equal(seen["next_z"], next_z)
    assert torch.equal(seen["td"], expected)
    after = _at_w(agent)
    for key, value in seen["during_pi"].items():  # the world model of the step just taken, at w
        assert torch.equal(value, after[key]), key
    ref_after = _reference(data, after)
    want = targets_before.lerp_(ref_after.model._detach_Qs_params, agent.cfg.tau)
    got = agent.model._target_Qs_params
    assert all(torch.equal(got[k], want[k]) for k in got.keys(True, True))


@pytest.mark.parametrize("mpc", [True, False])
def test_act_at_w(trained, mpc):
    agent, _, data = trained
    ref = _reference(data, _at_w(agent))
    w_tilde = _state(agent)
    obs = data["obs"][0, 3]
    agent.cfg.mpc = ref.cfg.mpc = mpc
    for eval_mode in (True, False):
        torch.manual_seed(5)
        a = agent.act(obs, t0=True, eval_mode=eval_mode)
        torch.manual_seed(5)
        b = ref.act(obs, t0=True, eval_mode=eval_mode)
        assert torch.equal(a, b)
    after = _state(agent)
    assert all(torch.equal(after[k], w_tilde[k]) for k in w_tilde)  # w~ back, bit for bit
