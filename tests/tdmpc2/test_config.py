"""Bad settings fail with one clear message, before any environment or model is built."""

from __future__ import annotations

import types

import pytest
from tdmpc2_support import QUICK, run_train

pytest.importorskip("torch", reason="flatrl.tdmpc2 needs torch")
optimizers = pytest.importorskip("flatrl.tdmpc2.optimizers", reason="flatrl is not installed")
config = pytest.importorskip("flatrl.tdmpc2.config", reason="flatrl is not installed")
runtime = pytest.importorskip("flatrl.tdmpc2.runtime", reason="flatrl is not installed")


def _cfg(**kw):
    base = dict(optimizer="Adam", sam_rho=0.05, sam_adaptive=False, sam_every=1)
    base.update(sam_scope="world_model", multitask=False, task="cartpole-swingup")
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("name", ["adam", "SAM", "Muon", "sAm"])
def test_optimizer_names_are_case_insensitive(name):
    assert optimizers.optimizer_settings(_cfg(optimizer=name)).name == name.lower()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"optimizer": "Foo"}, ["optimizer=Foo", "Adam, SAM, Muon"]),
        ({"sam_rho": -1}, ["sam_rho", "> 0"]),
        ({"sam_rho": 0}, ["sam_rho", "> 0"]),
        ({"sam_every": 0}, ["sam_every", ">= 1"]),
        ({"sam_scope": "heads"}, ["sam_scope=heads", "encoder_dynamics"]),
    ],
)
def test_bad_optimizer_settings_name_the_problem(kw, words):
    with pytest.raises(ValueError) as err:
        config.validate_cfg(_cfg(**{"optimizer": "SAM", **kw}))
    for word in words:
        assert word in str(err.value)


def test_multitask_without_dataset_names_data_dir(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir="???"))
    with pytest.raises(ValueError, match=f"data_dir={tmp_path}"):
        config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir=str(tmp_path)))
    (tmp_path / "chunk_0.pt").write_bytes(b"")
    config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir=str(tmp_path)))


def test_seed_steps_default_and_bounds():
    cfg = types.SimpleNamespace(seed_steps="???")
    assert runtime.default_seed_steps(cfg, 500) == 2500  # upstream's max(1000, 5 * length)
    assert runtime.default_seed_steps(types.SimpleNamespace(seed_steps=600), 500) == 600
    with pytest.raises(ValueError, match="seed_steps"):
        runtime.default_seed_steps(types.SimpleNamespace(seed_steps=100), 500)


def test_cpu_turns_compile_off_and_unset_wandb_off():
    cfg = types.SimpleNamespace(device="cpu", compile=True, enable_wandb=True)
    cfg.wandb_project, cfg.wandb_entity = "???", "???"
    with pytest.warns(UserWarning, match="compile"):
        runtime.configure_runtime(cfg)
    assert (cfg.device, cfg.compile, cfg.enable_wandb) == ("cpu", False, False)
    with pytest.raises(ValueError, match="device"):
        runtime.resolve_device("tpu")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("optimizer=Foo",), "optimizer=Foo is not supported"),
        (("task=mt30", "model_size=317", "optimizer=SAM", "sam_rho=0.02"), "set data_dir="),
    ],
)
def test_train_py_rejects_bad_config_before_training(tree, tmp_path, args, message):
    quick = [a for a in QUICK if a.split("=")[0] not in {a2.split("=")[0] for a2 in args}]
    proc = run_train(tree, tmp_path, *quick, *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out
    # Nothing was built: no work dir announced, no environment, no model.
    assert "Work dir" not in out and "Architecture" not in out
    assert not (tmp_path / "logs").exists()
