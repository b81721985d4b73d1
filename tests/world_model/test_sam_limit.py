"""The rho -> 0 law: SAM with a zero (or vanishing) radius is Adam, for every scope the CLI
offers and with --sam-every / --sam-adaptive, while its second pass still runs."""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.world_model.checkpoint import load
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.config import SAM_SCOPES
from flatrl.agents.world_model.train import train

# 3 epochs x 2 minibatch steps = 6 updates per run
UPDATE = ["--use-improved-controller", "--use-a2c", "--max-epoch", "3"]
UPDATE += ["--update-epochs", "1", "--num-minibatches", "2"]


def _run(tiny_cartpole, tmp_path, name: str, *extra: str):
    argv = tiny_cartpole(tmp_path / name, tmp_path / "runs", *UPDATE, *extra)
    result = train(parse_config(argv))
    return result, load(result.last_checkpoint, torch.device("cpu"))["model"]


@pytest.fixture(scope="module")
def adam_run(tiny_cartpole, tmp_path_factory):
    return _run(tiny_cartpole, tmp_path_factory.mktemp("adam"), "adam")


CASES = [(scope, rho, ()) for scope in SAM_SCOPES for rho in ("0", "1e-9")]
CASES += [("memory", rho, ("--sam-every", "3")) for rho in ("0", "1e-9")]
CASES += [("all", rho, ("--sam-adaptive",)) for rho in ("0", "1e-9")]


@pytest.mark.parametrize(("scope", "rho", "extra"), CASES)
def test_sam_with_vanishing_radius_is_adam(tiny_cartpole, tmp_path, adam_run, scope, rho, extra):
    adam, adam_weights = adam_run
    sam, sam_weights = _run(
        tiny_cartpole,
        tmp_path,
        "sam",
        "--optimizer",
        "sam",
        "--sam-rho",
        rho,
        "--sam-scope",
        scope,
        *extra,
    )
    assert len(sam.history) == 3
    sam_steps = [h for h in sam.history if "sharpness" in h]
    # the second pass ran: every epoch has SAM steps (with --sam-every 3: updates 1 and 4 of 6)
    assert len(sam_steps) == (2 if extra == ("--sam-every", "3") else 3)
    for h in sam_steps:
        assert h["sharpness_max_abs"] < 1e-6
        if rho == "0":
            assert h["sharpness_max_abs"] == 0.0
    for a, s in zip(adam.history, sam.history, strict=True):
        assert s["total_loss"] == pytest.approx(a["total_loss"], abs=1e-6)
    for key, value in adam_weights.items():
        torch.testing.assert_close(sam_weights[key], value, rtol=0, atol=1e-6)
