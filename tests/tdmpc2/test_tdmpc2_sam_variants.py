"""``sam_variant=`` in TD-MPC2: LookSAM, Momentum-SAM and AE-SAM through the real agent.

The keys are read with defaults (a config.yaml without them runs plain SAM), their errors name
TD-MPC2's keys, and the rho = 0 law holds for each variant through the patched update (the
world-model scope and the policy scope): the parameters are Adam's bit for bit. With a real
radius, Momentum-SAM logs no sharpness (it has no pass at w) rather than a made-up 0.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from tdmpc2_support import run_probe

torch = pytest.importorskip("torch", reason="flatrl.tdmpc2 needs torch")
optimizers = pytest.importorskip("flatrl.tdmpc2.optimizers", reason="flatrl is not installed")
optim = pytest.importorskip("flatrl.optim", reason="flatrl is not installed")

UPDATES = 4
VARIANTS = {
    "looksam": {"sam_variant": "looksam", "sam_every": 2, "sam_looksam_alpha": 0.7},
    "msam": {"sam_variant": "msam"},
    "aesam": {"sam_variant": "aesam", "sam_aesam_c": 0.0, "sam_aesam_decay": 0.5},
}


def _cfg(**kw):
    base = dict(optimizer="SAM", sam_rho=0.05, sam_adaptive=False, sam_every=1)
    base.update(sam_scope="dynamics", multitask=False, task="cartpole-swingup")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_absent_variant_keys_mean_plain_sam():
    settings = optimizers.optimizer_settings(_cfg())
    assert settings.variant == "sam"
    config = settings.sam_config(clip_grad_norm=20)
    assert (config.variant, config.looksam_alpha, config.aesam_decay) == ("sam", 0.7, 0.9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_keys_reach_samconfig(variant):
    settings = optimizers.optimizer_settings(_cfg(**VARIANTS[variant]))
    config = settings.sam_config(clip_grad_norm=20)
    assert config.variant == variant and config.clip_grad_norm == 20.0
    built = optim.SAM.from_config(torch.optim.Adam([torch.zeros(2, requires_grad=True)]), config)
    assert type(built) is optim.variant_class(variant)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"sam_variant": "fast"}, ["sam_variant='fast'", "sam, looksam, msam, aesam"]),
        ({"sam_variant": "msam", "sam_every": 4}, ["sam_every=4", "sam_variant=msam"]),
        ({"sam_looksam_alpha": -1}, ["sam_looksam_alpha", ">= 0"]),
        ({"sam_aesam_decay": 2}, ["sam_aesam_decay", "[0, 1)"]),
    ],
)
def test_bad_variant_settings_name_tdmpc2_keys(kw, words):
    with pytest.raises(ValueError) as err:
        optimizers.optimizer_settings(_cfg(**kw))
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.fixture(scope="module")
def runs(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("variants")
    cases: dict[str, dict] = {"adam": {}}
    for name, keys in VARIANTS.items():
        for scope in ("encoder_dynamics", "policy"):
            cases[f"{name}-{scope}@0"] = {
                "optimizer": "SAM",
                "sam_rho": 0.0,
                "sam_scope": scope,
                **keys,
            }
        cases[f"{name}@0.05"] = {"optimizer": "SAM", "sam_rho": 0.05, **keys}
    jobs = [
        {"mode": "trace", "updates": UPDATES, "out": str(out / f"{n}.pt"), "overrides": o}
        for n, o in cases.items()
    ]
    results = run_probe(tree, jobs)
    return {
        name: {"losses": r["losses"], "params": torch.load(out / f"{name}.pt", weights_only=True)}
        for name, r in zip(cases, results, strict=True)
    }


@pytest.mark.tdmpc2
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scope", ["encoder_dynamics", "policy"])
def test_zero_radius_variant_is_exactly_adam(runs, variant, scope):
    adam = runs["adam"]["params"]
    params = runs[f"{variant}-{scope}@0"]["params"]
    assert all(torch.equal(adam[k], params[k]) for k in adam), (variant, scope)


@pytest.mark.tdmpc2
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_real_radius_moves_and_reports_honestly(runs, variant):
    adam = runs["adam"]["params"]
    params = runs[f"{variant}@0.05"]["params"]
    assert max(float((adam[k] - params[k]).abs().max()) for k in adam) > 1e-5
    logged = [update.get("sharpness") for update in runs[f"{variant}@0.05"]["losses"]]
    if variant == "msam":
        assert logged == [None] * UPDATES  # no pass at w: no sharpness, not a made-up 0
    else:
        assert logged[0] is not None and logged[0] != 0.0  # the first update is a SAM step
