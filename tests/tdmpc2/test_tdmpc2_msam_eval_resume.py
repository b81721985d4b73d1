"""Momentum-SAM and TD-MPC2's offline evaluation and checkpoints.

Under ``sam_variant=msam`` the agent's parameters hold the perturbed ``w~`` between updates.
The offline study's held-out errors and measured sharpness must be those of the trained
weights ``w`` (a fresh agent with ``w`` loaded gives the same numbers) and leave ``w~`` in
place; and a checkpoint refuses to resume under another SAM variant or other variant options,
as it refuses another optimizer or scope.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from offline_support import TINY_AGENT, offline_agent, synthetic
from tdmpc2_support import SKIP_REASON

torch.set_num_threads(1)

TINY = TINY_AGENT
MSAM = {"optimizer": "SAM", "sam_scope": "world_model", "sam_rho": 0.5, "sam_variant": "msam"}


def _agent(data: dict, **keys):
    return offline_agent(data, TINY, **keys)


@pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "")
def test_heldout_errors_and_sharpness_are_those_of_w():
    from flatrl.optim import MomentumSAM
    from flatrl.tdmpc2.offline import heldout

    data, held = synthetic(3, 20, 0), synthetic(2, 20, 1)
    agent, buffer = _agent(data, **MSAM)
    assert isinstance(agent.optim, MomentumSAM)
    for _ in range(3):
        agent.update(buffer)
    assert agent.optim.perturbed
    w_tilde = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with agent.optim.unperturbed():
        w = {k: v.clone() for k, v in agent.model.state_dict().items()}
    assert any(not torch.equal(w[k], w_tilde[k]) for k in w)
    at_w, _ = _agent(data)  # plain Adam, the weights w loaded
    at_w.model.load_state_dict(w)
    windows = heldout.windows(held, 4, 4)
    batch = (
        data["obs"][:, 1:5].transpose(0, 1).contiguous(),
        data["action"][:, 2:5].transpose(0, 1).contiguous(),
        data["reward"][:, 2:5].transpose(0, 1).unsqueeze(-1).contiguous(),
        torch.zeros(3, 3, 1),
    )
    assert heldout.evaluate(agent, windows) == heldout.evaluate(at_w, windows)
    got = heldout.measured_sharpness(agent, batch, 0.05)
    assert got == heldout.measured_sharpness(at_w, batch, 0.05)
    after = agent.model.state_dict()
    assert all(torch.equal(after[k], w_tilde[k]) for k in w_tilde)  # w~ back, bit for bit


def _settings(**keys):
    from flatrl.tdmpc2.optimizers import optimizer_settings

    cfg = {"optimizer": "SAM", "sam_rho": 0.05, "sam_scope": "encoder_dynamics", **keys}
    return optimizer_settings(types.SimpleNamespace(**cfg))


@pytest.mark.parametrize(
    ("saved", "now", "words"),
    [
        ({"sam_variant": "msam"}, {}, ["sam_variant=msam", "got sam_variant=sam"]),
        ({}, {"sam_variant": "looksam"}, ["sam_variant=sam;", "sam_variant=looksam"]),
        (
            {"sam_variant": "looksam", "sam_looksam_alpha": 0.7},
            {"sam_variant": "looksam", "sam_looksam_alpha": 0.5},
            ["sam_looksam_alpha=0.7", "sam_looksam_alpha=0.5"],
        ),
        (
            {"sam_variant": "aesam", "sam_aesam_c": 0.0},
            {"sam_variant": "aesam", "sam_aesam_c": 1.0},
            ["sam_aesam_c=0.0", "sam_aesam_c=1.0"],
        ),
    ],
)
def test_resume_refuses_another_variant_or_its_options(tmp_path, saved, now, words):
    from flatrl.tdmpc2.checkpoint import FORMAT, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "optimizer": dataclasses.asdict(_settings(**saved))}, path)
    cfg = {"optimizer": "SAM", "sam_rho": 0.05, "sam_scope": "encoder_dynamics", **now}
    agent = types.SimpleNamespace(cfg=types.SimpleNamespace(**cfg))
    with pytest.raises(ValueError, match="resume with the same SAM variant settings") as err:
        load_checkpoint(path, agent, None)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_resume_accepts_old_files_and_unused_options():
    from flatrl.tdmpc2.checkpoint import check_same_optimizer

    old = dataclasses.asdict(_settings())
    for key in ("variant", "looksam_alpha", "aesam_c", "aesam_decay"):
        del old[key]  # written before the variant keys existed: plain SAM
    check_same_optimizer("old.pt", old, _settings())
    # an option of another variant does not change the run
    check_same_optimizer("a.pt", dataclasses.asdict(_settings()), _settings(sam_aesam_c=2.0))
    adam = dataclasses.asdict(_settings(optimizer="Adam", sam_variant="msam"))
    check_same_optimizer("b.pt", adam, _settings(optimizer="Adam"))
    with pytest.raises(ValueError, match="optimizer=sam sam_scope=encoder_dynamics"):
        check_same_optimizer("c.pt", old, _settings(sam_scope="dynamics"))
