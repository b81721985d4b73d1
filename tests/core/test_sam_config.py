"""SAMConfig: one validation for every integration, with errors in the user's own spelling."""

from __future__ import annotations

import math

import pytest
import torch
from flatrl.optim import SAM, SAMConfig, SAMConfigError
from torch import nn

torch.set_num_threads(1)

# how the TD-MPC2 config spells the keys: every message must use these, never the field name
NAMES = {
    "rho": "sam_rho",
    "adaptive": "sam_adaptive",
    "every_k": "sam_every_k",
    "scope": "sam_scope",
    "clip_grad_norm": "sam_clip",
    "eps": "sam_eps",
}

BAD = [
    ("rho", -0.1, "sam_rho must be >= 0"),
    ("rho", -1e-12, "sam_rho must be >= 0"),
    ("rho", float("nan"), "sam_rho must be a finite number >= 0"),
    ("rho", float("inf"), "sam_rho must be a finite number >= 0"),
    ("rho", True, "sam_rho must be a finite number >= 0"),
    ("rho", False, "sam_rho must be a finite number >= 0"),
    ("rho", "0.05", "sam_rho must be a finite number >= 0"),
    ("rho", None, "sam_rho must be a finite number >= 0"),
    ("adaptive", 1, "sam_adaptive must be true or false"),
    ("adaptive", "yes", "sam_adaptive must be true or false"),
    ("adaptive", None, "sam_adaptive must be true or false"),
    ("every_k", 0, "sam_every_k must be an integer >= 1"),
    ("every_k", -2, "sam_every_k must be an integer >= 1"),
    ("every_k", 1.5, "sam_every_k must be an integer >= 1"),
    ("every_k", 2.0, "sam_every_k must be an integer >= 1"),
    ("every_k", True, "sam_every_k must be an integer >= 1"),
    ("clip_grad_norm", 0, "sam_clip must be None"),
    ("clip_grad_norm", 0.0, "sam_clip must be None"),
    ("clip_grad_norm", -1, "sam_clip must be None"),
    ("clip_grad_norm", float("nan"), "sam_clip must be None"),
    ("clip_grad_norm", float("inf"), "sam_clip must be None"),
    ("clip_grad_norm", True, "sam_clip must be None"),
    ("scope", "", "sam_scope must be a scope name or None"),
    ("scope", "  ", "sam_scope must be a scope name or None"),
    ("scope", 3, "sam_scope must be a scope name or None"),
    ("eps", -1e-12, "sam_eps must be a number >= 0"),
    ("eps", float("nan"), "sam_eps must be a number >= 0"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_values_are_one_clear_error_in_the_users_spelling(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(SAMConfigError) as info:
        SAMConfig(**{field: value}, names=NAMES)
    text = str(info.value)
    assert text.startswith(message), text
    assert repr(value) in text or str(value) in text, "the message must show the bad value"
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    # without names, the message names the field itself
    with pytest.raises(SAMConfigError, match=f"^{field} must"):
        SAMConfig(**{field: value})


def test_messages_name_a_fix() -> None:
    with pytest.raises(SAMConfigError, match=r"sam_rho=0\.05"):
        SAMConfig(rho=-1.0, names=NAMES)
    with pytest.raises(SAMConfigError, match="sam_every_k=1 runs SAM on every update"):
        SAMConfig(every_k=0, names=NAMES)
    with pytest.raises(SAMConfigError, match=r"None \(no clipping\)"):
        SAMConfig(clip_grad_norm=-1, names=NAMES)


@pytest.mark.parametrize("rho", [0, 0.0, 1e-9, 0.05, 2])
def test_rho_zero_and_positive_are_accepted_as_floats(rho: float) -> None:
    config = SAMConfig(rho=rho, names=NAMES)
    assert config.rho == float(rho) and isinstance(config.rho, float)
    sam = SAM.from_config(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1), config)
    assert sam.rho == float(rho)


def test_good_values_are_normalised() -> None:
    config = SAMConfig(
        rho=1, adaptive=True, every_k=4, scope=" Dynamics ", clip_grad_norm=10, eps=0
    )
    assert config.as_dict() == {
        "rho": 1.0,
        "adaptive": True,
        "every_k": 4,
        "scope": "dynamics",
        "clip_grad_norm": 10.0,
        "eps": 0.0,
    }
    assert isinstance(config.clip_grad_norm, float) and isinstance(config.eps, float)
    assert SAMConfig().as_dict() == {
        "rho": 0.05,
        "adaptive": False,
        "every_k": 1,
        "scope": None,
        "clip_grad_norm": None,
        "eps": 1e-12,
    }
    assert math.isclose(SAMConfig(rho=1e-9).rho, 1e-9)


def test_replace_validates_again_and_config_is_frozen() -> None:
    config = SAMConfig(rho=0.1)
    assert config.replace(every_k=3) == SAMConfig(rho=0.1, every_k=3)
    with pytest.raises(SAMConfigError, match="every_k must be an integer >= 1"):
        config.replace(every_k=0)
    with pytest.raises(AttributeError):
        config.rho = 0.2  # type: ignore[misc]


def test_check_scope() -> None:
    choices = ("dynamics", "reward", "all")
    SAMConfig().check_scope(choices)  # None: every parameter, always fine
    SAMConfig(scope="Reward").check_scope(choices)  # normalised before the check
    with pytest.raises(SAMConfigError) as info:
        SAMConfig(scope="encoder").check_scope(choices, key="sam_scope")
    assert str(info.value) == "sam_scope=encoder is not one of dynamics, reward, all."
    with pytest.raises(SAMConfigError, match="^scope=encoder is not one of"):
        SAMConfig(scope="encoder").check_scope(iter(choices))  # any iterable, default key


def test_sam_constructor_uses_the_same_validation() -> None:
    params = nn.Linear(2, 1).parameters()
    with pytest.raises(SAMConfigError, match="^adaptive must be true or false"):
        SAM(params, base=torch.optim.SGD, lr=0.1, adaptive="no")
