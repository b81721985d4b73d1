"""``--sam-variant``: LookSAM, Momentum-SAM and AE-SAM flags of the world-model CLI.

The flags build the one SAMConfig (errors name the flag), need ``--optimizer sam`` like every
``--sam-*`` flag, and a short CartPole run trains with each variant and logs only the sharpness
the variant measured.
"""

from __future__ import annotations

import pytest
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.train import train
from flatrl.optim import variant_class

CARTPOLE = ["--env-name", "CartPole-v1", "--use-improved-controller", "--use-a2c"]
SAM = [*CARTPOLE, "--optimizer", "sam"]


def test_variant_flags_reach_samconfig():
    cfg = parse_config(
        [*SAM, "--sam-variant", "looksam", "--sam-every", "4", "--sam-looksam-alpha", "0.5"]
    )
    sam = cfg.sam_config()
    assert (sam.variant, sam.every_k, sam.looksam_alpha, sam.scope) == ("looksam", 4, 0.5, "memory")
    sam = parse_config(
        [*SAM, "--sam-variant", "aesam", "--sam-aesam-c", "1", "--sam-aesam-decay", "0.5"]
    ).sam_config()
    assert (sam.variant, sam.aesam_c, sam.aesam_decay) == ("aesam", 1.0, 0.5)
    assert parse_config(SAM).sam_config().variant == "sam"  # unset: plain SAM, as before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*CARTPOLE, "--sam-variant", "msam"], "--optimizer sam"),
        ([*SAM, "--sam-variant", "msam", "--sam-every", "2"], "--sam-every=2 does not apply"),
        ([*SAM, "--sam-variant", "msam", "--sam-adaptive"], "--sam-adaptive=true has no"),
        ([*SAM, "--sam-looksam-alpha", "-1"], "--sam-looksam-alpha must be a number >= 0"),
        ([*SAM, "--sam-aesam-decay", "1"], "--sam-aesam-decay must be a number in"),
    ],
)
def test_bad_variant_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message.replace("-", r"\-").replace("[", r"\[")):
        parse_config(argv)


@pytest.mark.parametrize("variant", ["looksam", "msam", "aesam"])
def test_each_variant_trains(tmp_path, variant):
    argv = [
        *SAM,
        "--sam-variant",
        variant,
        "--sam-rho",
        "0.05",
        "--max-epoch",
        "1",
        "--n-steps",
        "16",
        "--env-batch-number",
        "2",
        "--no-progress",
        "--save-path",
        str(tmp_path) + "/",
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    if variant == "looksam":
        argv += ["--sam-every", "2"]
    cfg = parse_config(argv)
    assert variant_class(cfg.sam_config().variant).variant == variant
    result = train(cfg)
    assert result is not None
