"""The efficient SAM variants (LookSAM, Momentum-SAM, AE-SAM) against hand-written references.

Each variant is checked three ways: against a few-line version of the paper's rule written on
one flat parameter vector (every option: k, alpha, the AE-SAM threshold, the first step with no
momentum); by the rho -> 0 law through :func:`flatrl.optim.sam_step` as the integrations call
it (parameters, BatchNorm statistics and counter, the random stream), with a real radius
required to break it; and by an exact resume (N + N updates = 2N). Plus the settings object:
its errors name the user's key, and ``SAM.from_config`` builds each variant's class.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
import torch
from flatrl.optim import (
    AESAM,
    SAM,
    LookSAM,
    MomentumSAM,
    SAMConfig,
    SAMConfigError,
    sam_step,
    unperturbed,
)
from flatrl.runtime import TorchRNG
from torch import Tensor, nn

torch.set_num_threads(1)
DTYPE = torch.float64
STEPS = 6

_g = torch.Generator().manual_seed(3)
X = torch.randn(6, 32, 5, generator=_g, dtype=DTYPE)
Y = torch.randn(6, 32, 1, generator=_g, dtype=DTYPE)


# --- the small problem: a 5-8-1 tanh net; the reference works on its weights as ONE vector ------
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(DTYPE)


SHAPES = [p.shape for p in net().parameters()]


def flat_loss(w: Tensor, t: int) -> Tensor:
    parts, i = [], 0
    for shape in SHAPES:
        n = shape.numel()
        parts.append(w[i : i + n].view(shape))
        i += n
    w1, b1, w2, b2 = parts
    out = torch.tanh(X[t] @ w1.T + b1) @ w2.T + b2
    return ((out - Y[t]) ** 2).mean()


def grad_at(w: Tensor, t: int) -> Tensor:
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(flat_loss(w, t), w)
    return g


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def base(name: str, params: object) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2)  # type: ignore[arg-type]
    return torch.optim.SGD(params, lr=5e-2, momentum=0.9)  # type: ignore[arg-type]


def reference(base_name: str, direction: Callable[[Tensor, int, torch.optim.Optimizer], Tensor]):
    """Run the base optimizer on one flat vector; ``direction(w, t, opt)`` gives its gradient."""
    w = flat(net()).requires_grad_(True)
    opt = base(base_name, [w])
    for t in range(STEPS):
        w.grad = direction(w.detach(), t, opt)
        opt.step()
    return w.detach()


def sam_grad(w: Tensor, t: int, rho: float) -> Tensor:
    g = grad_at(w, t)
    return grad_at(w + rho * g / g.norm(), t)


def train(opt_of: Callable[[nn.Module], torch.optim.Optimizer]) -> tuple[nn.Module, object]:
    """STEPS updates as the integrations write them (first pass, then sam_step)."""
    model = net()
    opt = opt_of(model)
    for t in range(STEPS):
        rng = TorchRNG()
        opt.zero_grad()
        loss = flat_loss_model(model, t)
        loss.backward()
        sam_step(opt, loss, lambda t=t: flat_loss_model(model, t), rng=rng, modules=[model])
    return model, opt


def flat_loss_model(model: nn.Module, t: int) -> Tensor:
    return ((model(X[t]) - Y[t]) ** 2).mean()


# --- LookSAM ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_name", "k", "alpha"),
    list(itertools.product(["sgd", "adam"], [1, 2, 3], [0.0, 0.7])),
)
def test_looksam_matches_the_papers_rule(base_name: str, k: int, alpha: float) -> None:
    rho, kept = 0.1, {}

    def direction(w: Tensor, t: int, _: object) -> Tensor:
        g = grad_at(w, t)
        if t % k == 0:
            gs = grad_at(w + rho * g / g.norm(), t)
            kept["gv"] = gs - (g @ gs) / (g @ g) * g
            return gs
        return g + alpha * g.norm() / kept["gv"].norm() * kept["gv"]

    expected = reference(base_name, direction)
    config = SAMConfig(rho=rho, every_k=k, variant="looksam", looksam_alpha=alpha)
    model, opt = train(lambda m: SAM.from_config(base(base_name, m.parameters()), config))
    assert type(opt) is LookSAM
    torch.testing.assert_close(flat(model), expected, rtol=0, atol=1e-10)
    if k > 1 and alpha > 0:  # the reuse term really acts: plain SAM-every-k differs
        sam_k, _ = train(lambda m: SAM(base(base_name, m.parameters()), rho=rho, every_k=k))
        assert (flat(sam_k) - expected).abs().max() > 1e-6


def test_looksam_sharpness_only_on_sam_steps() -> None:
    model = net()
    opt = LookSAM(torch.optim.Adam(model.parameters(), lr=1e-2), rho=0.1, every_k=3)
    seen = []
    for t in range(STEPS):
        loss = flat_loss_model(model, t)
        opt.zero_grad()
        loss.backward()
        sam_step(opt, loss, lambda t=t: flat_loss_model(model, t))
        seen.append(opt.last_sharpness)
    assert [s is None for s in seen] == [False, True, True, False, True, True]
    assert all(s > 0 for s in seen if s is not None)


# --- Momentum-SAM -------------------------------------------------------------------------------
def msam_reference(base_name: str, rho: float) -> Tensor:
    """The paper's loop: the gradient at w - rho * m / ||m|| (plain at w while m is 0)."""
    w = flat(net())
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t in range(STEPS):
        at = w if t == 0 else w - rho * m / m.norm()
        g = grad_at(at, t)
        if base_name == "sgd":  # torch's SGD: buf = g on the first step, mu * buf + g after
            m = g if t == 0 else 0.9 * m + g
            w = w - 5e-2 * m
        else:  # Adam, bias-corrected, eps 1e-8
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            step = t + 1
            m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
            w = w - 1e-2 * m_hat / (v_hat.sqrt() + 1e-8)
    return w


@pytest.mark.parametrize("base_name", ["sgd", "adam"])
def test_msam_matches_the_papers_rule(base_name: str) -> None:
    config = SAMConfig(rho=0.2, variant="msam")
    model, opt = train(lambda m: SAM.from_config(base(base_name, m.parameters()), config))
    assert type(opt) is MomentumSAM and opt.perturbed
    perturbed = flat(model)
    with unperturbed(opt):
        torch.testing.assert_close(flat(model), msam_reference(base_name, 0.2), rtol=0, atol=1e-10)
        assert not opt.perturbed
    assert torch.equal(flat(model), perturbed), "unperturbed() did not put w~ back bit for bit"
    assert opt.last_sharpness is None  # no pass at w: never a made-up 0
    assert opt.last_perturbed_loss is not None and opt.last_perturbed_loss > 0  # L(w~)


def test_msam_first_step_is_plain_and_perturbation_follows_momentum() -> None:
    model = net()
    w0 = flat(model)
    opt = MomentumSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.3)
    loss = flat_loss_model(model, 0)
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.step(loss=loss)
    assert opt.last_perturbed_loss is None  # the first pass was at w, not at a perturbed point
    w1 = w0 - 0.1 * g
    torch.testing.assert_close(flat(model), w1 - 0.3 * g / g.norm(), rtol=0, atol=1e-12)
    with opt.unperturbed():
        torch.testing.assert_close(flat(model), w1, rtol=0, atol=1e-12)


def test_msam_refuses_a_base_without_momentum_and_the_second_pass_api() -> None:
    model = net()
    with pytest.raises(ValueError, match="momentum=0"):
        MomentumSAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1)
    opt = MomentumSAM(torch.optim.Adam(model.parameters()), rho=0.1)
    with pytest.raises(RuntimeError, match="no second pass"):
        opt.first_step()


def test_unperturbed_is_a_no_op_for_other_optimizers() -> None:
    model = net()
    adam = torch.optim.Adam(model.parameters())
    before = flat(model)
    with unperturbed(adam):
        assert torch.equal(flat(model), before)


# --- AE-SAM -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("base_name", "c"), list(itertools.product(["sgd", "adam"], [-1, 0, 1])))
def test_aesam_matches_the_papers_rule(base_name: str, c: float) -> None:
    rho, decay, stats, decisions = 0.1, 0.5, {"mu": 0.0, "var": 0.0}, []

    def direction(w: Tensor, t: int, _: object) -> Tensor:
        g = grad_at(w, t)
        n = float(g @ g)
        stats["mu"] = decay * stats["mu"] + (1 - decay) * n
        stats["var"] = decay * stats["var"] + (1 - decay) * (n - stats["mu"]) ** 2
        take = n >= stats["mu"] + c * stats["var"] ** 0.5
        decisions.append(take)
        return sam_grad(w, t, rho) if take else g

    expected = reference(base_name, direction)
    config = SAMConfig(rho=rho, variant="aesam", aesam_c=c, aesam_decay=decay)
    model, opt = train(lambda m: SAM.from_config(base(base_name, m.parameters()), config))
    assert type(opt) is AESAM
    torch.testing.assert_close(flat(model), expected, rtol=0, atol=1e-10)
    assert opt.sam_fraction == pytest.approx(sum(decisions) / STEPS)
    if c == 1:
        assert 0 < sum(decisions) < STEPS, "the schedule should mix SAM and plain steps here"


# --- the rho -> 0 law for every variant ---------------------------------------------------------
VARIANTS = {
    "looksam": dict(variant="looksam", every_k=3, looksam_alpha=0.7),
    "msam": dict(variant="msam"),
    "aesam": dict(variant="aesam", aesam_c=0.0),
}
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "dropout": lambda: nn.Sequential(
        nn.Linear(5, 12), nn.Dropout(0.3), nn.Tanh(), nn.Linear(12, 1)
    ),
    "batchnorm": lambda: nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Linear(12, 1)),
}


def law_run(model_name: str, base_name: str, variant: dict | None, rho: float, scoped: bool):
    torch.manual_seed(0)
    model = BUILDERS[model_name]().to(DTYPE).train()
    opt = base(base_name, model.parameters())
    if variant is not None:
        config = SAMConfig(rho=rho, **variant)
        opt = SAM.from_config(opt, config, scope=model[0] if scoped else None)
    torch.manual_seed(123)
    sharpness = []
    for t in range(STEPS):
        rng = TorchRNG()
        opt.zero_grad()
        loss = flat_loss_model(model, t)
        loss.backward()
        sam_step(opt, loss, lambda t=t: flat_loss_model(model, t), rng=rng, modules=[model])
        sharpness.append(getattr(opt, "last_sharpness", None))
    with unperturbed(opt):
        state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, sharpness, torch.rand(4, dtype=DTYPE)


LAW = [
    case
    for case in itertools.product(VARIANTS, BUILDERS, ["adam", "sgd"], [False, True], [0.0, 1e-9])
    if not (case[0] == "looksam" and case[-1] > 0)  # see test_looksam_is_discontinuous_at_zero
]


@pytest.mark.parametrize(("variant", "model", "base_name", "scoped", "rho"), LAW)
def test_zero_radius_variant_is_the_base_optimizer(
    variant: str, model: str, base_name: str, scoped: bool, rho: float
) -> None:
    state, sharpness, draw = law_run(model, base_name, VARIANTS[variant], rho, scoped)
    plain, _, plain_draw = law_run(model, base_name, None, rho, scoped)
    for key, value in plain.items():  # weights, running stats (and num_batches_tracked exactly)
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)
    assert torch.equal(draw, plain_draw), "the random stream diverged"
    measured = [s for s in sharpness if s is not None]
    assert all(abs(s) < 1e-6 for s in measured)
    assert bool(measured) == (variant != "msam")  # MSAM has no pass at w to measure it with


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_real_radius_breaks_the_law(variant: str) -> None:
    state, sharpness, _ = law_run("dropout", "adam", VARIANTS[variant], 0.5, False)
    plain, _, _ = law_run("dropout", "adam", None, 0.5, False)
    assert max((state[k] - v).abs().max().item() for k, v in plain.items()) > 1e-4


def test_looksam_is_discontinuous_at_zero() -> None:
    """The paper's reuse term is alpha * ||g|| at any radius > 0: rho = 1e-9 is not the base
    optimizer (rho = 0 is, by definition: the law test above)."""
    state, _, _ = law_run("dropout", "adam", VARIANTS["looksam"], 1e-9, False)
    plain, _, _ = law_run("dropout", "adam", None, 1e-9, False)
    assert max((state[k] - v).abs().max().item() for k, v in plain.items()) > 1e-4


# --- exact resume -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_resume_is_exact(variant: str) -> None:
    config = SAMConfig(rho=0.1, **VARIANTS[variant])

    def run(model: nn.Module, opt: SAM, ts: range) -> None:
        for t in ts:
            opt.zero_grad()
            loss = flat_loss_model(model, t)
            loss.backward()
            sam_step(opt, loss, lambda t=t: flat_loss_model(model, t))

    model = net()
    opt = SAM.from_config(torch.optim.Adam(model.parameters(), lr=1e-2), config)
    run(model, opt, range(STEPS))
    full = flat(model)

    model = net()
    opt = SAM.from_config(torch.optim.Adam(model.parameters(), lr=1e-2), config)
    run(model, opt, range(STEPS // 2))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    model = net()
    opt = SAM.from_config(torch.optim.Adam(model.parameters(), lr=1e-2), config)
    opt.load_state_dict(saved_opt)  # optimizer first, model second: either order works
    model.load_state_dict(saved_model)
    run(model, opt, range(STEPS // 2, STEPS))
    assert torch.equal(flat(model), full)


# --- the settings object ------------------------------------------------------------------------
NAMES = {
    "variant": "sam_variant",
    "every_k": "sam_every",
    "adaptive": "sam_adaptive",
    "looksam_alpha": "sam_looksam_alpha",
    "aesam_c": "sam_aesam_c",
    "aesam_decay": "sam_aesam_decay",
}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"variant": "lookahead"}, "sam_variant='lookahead' is not one of sam, looksam"),
        ({"variant": 3}, "sam_variant=3 is not one of"),
        ({"looksam_alpha": -0.1}, "sam_looksam_alpha must be a number >= 0"),
        ({"aesam_c": float("nan")}, "sam_aesam_c must be a number finite"),
        ({"aesam_decay": 1.0}, r"sam_aesam_decay must be a number in \[0, 1\)"),
        ({"variant": "msam", "every_k": 2}, "sam_every=2 does not apply to sam_variant=msam"),
        ({"variant": "aesam", "every_k": 4}, "sam_every=4 does not apply to sam_variant=aesam"),
        ({"variant": "msam", "adaptive": True}, "sam_adaptive=true has no Momentum-SAM form"),
    ],
)
def test_bad_variant_settings_name_the_users_key(settings: dict, message: str) -> None:
    with pytest.raises(SAMConfigError, match=message):
        SAMConfig(names=NAMES, **settings)


def test_variant_is_normalised_and_round_trips() -> None:
    config = SAMConfig(variant=" LookSAM ", every_k=5, looksam_alpha=1)
    assert config.variant == "looksam" and config.looksam_alpha == 1.0
    assert config.as_dict()["looksam_alpha"] == 1.0 and "aesam_c" not in config.as_dict()
    assert SAMConfig(**config.as_dict()) == config
    assert "variant" not in SAMConfig().as_dict()  # plain SAM serialises as it always did


@pytest.mark.parametrize(
    ("variant", "cls"),
    [("sam", SAM), ("looksam", LookSAM), ("msam", MomentumSAM), ("aesam", AESAM)],
)
def test_from_config_builds_the_variant(variant: str, cls: type) -> None:
    opt = SAM.from_config(torch.optim.Adam(net().parameters()), SAMConfig(variant=variant))
    assert type(opt) is cls and opt.config.variant == variant
    assert opt.state_dict()["sam"]["variant"] == variant
    with pytest.raises(ValueError, match="use SAM.from_config"):
        LookSAM.from_config(torch.optim.Adam(net().parameters()), SAMConfig(variant="msam"))
