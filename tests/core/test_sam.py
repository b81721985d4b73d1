"""SAM against hand-written two-pass references, pytorch_optimizer.SAM, and its edge cases."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from flatrl.optim import SAM, SAMConfigError
from torch import Tensor, nn
from torch.func import functional_call

torch.set_num_threads(1)
DTYPE = torch.float64
TOL = dict(rtol=0.0, atol=1e-6)


# --- models -----------------------------------------------------------------------------------
class Quadratic(nn.Module):
    """L = 0.5 u'Au + 0.5 ||Bv - c||^2 + u.v[:, 0]: two coupled parameters, so scope matters."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        m = torch.randn(4, 4, generator=g, dtype=DTYPE)
        self.register_buffer("A", m @ m.T + torch.eye(4, dtype=DTYPE))
        self.register_buffer("B", torch.randn(3, 4, generator=g, dtype=DTYPE))
        self.register_buffer("c", torch.randn(3, 2, generator=g, dtype=DTYPE))
        self.u = nn.Parameter(torch.randn(4, generator=g, dtype=DTYPE))
        self.v = nn.Parameter(torch.randn(4, 2, generator=g, dtype=DTYPE))

    def forward(self, batch: None = None) -> Tensor:
        quad = 0.5 * self.u @ self.A @ self.u
        fit = 0.5 * ((self.B @ self.v - self.c) ** 2).sum()
        return quad + fit + self.u @ self.v[:, 0]


class MLP(nn.Module):
    """A 2-layer MLP regression; ``first`` and ``second`` are the layers scope can select."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(5, 16, dtype=DTYPE)
        self.second = nn.Linear(16, 3, dtype=DTYPE)
        g = torch.Generator().manual_seed(1)
        self.register_buffer("x", torch.randn(32, 5, generator=g, dtype=DTYPE))
        self.register_buffer("y", torch.randn(32, 3, generator=g, dtype=DTYPE))

    def forward(self, batch: None = None) -> Tensor:
        return ((self.second(torch.tanh(self.first(self.x))) - self.y) ** 2).mean()


MODELS: dict[str, Callable[[], nn.Module]] = {"quadratic": Quadratic, "mlp": MLP}
SCOPES = {"quadratic": ("u",), "mlp": ("first.weight", "first.bias")}


# --- the hand-written reference ---------------------------------------------------------------
def reference_grads(
    model: nn.Module, rho: float, adaptive: bool, scope: tuple[str, ...] | None
) -> dict[str, Tensor]:
    """Gradients a SAM step hands to the base optimizer, computed from first principles."""
    params = dict(model.named_parameters())
    names = list(params)
    w = [params[n].detach().clone().requires_grad_(True) for n in names]

    def loss_at(values: list[Tensor]) -> Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), ())

    g = torch.autograd.grad(loss_at(w), w)
    in_scope = [scope is None or n in scope for n in names]
    scaled = [wi.abs() * gi if adaptive else gi for wi, gi in zip(w, g, strict=True)]
    norm = torch.sqrt(sum((s**2).sum() for s, keep in zip(scaled, in_scope, strict=True) if keep))
    e = [
        rho * (wi.detach() ** 2 if adaptive else 1.0) * gi / (norm + 1e-12) if keep else 0 * gi
        for wi, gi, keep in zip(w, g, in_scope, strict=True)
    ]
    w_pert = [(wi.detach() + ei).requires_grad_(True) for wi, ei in zip(w, e, strict=True)]
    g2 = torch.autograd.grad(loss_at(w_pert), w_pert)
    return {
        n: (g2i if keep else gi) for n, gi, g2i, keep in zip(names, g, g2, in_scope, strict=True)
    }


def plain_grads(model: nn.Module) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(model(), list(params.values()))
    return dict(zip(params, grads, strict=True))


def reference_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    grads: dict[str, Tensor],
    clip: float | None = None,
) -> None:
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    if clip is not None:
        nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    opt.step()


def sam_update(model: nn.Module, sam: SAM) -> Tensor | None:
    """One training-loop update the way callers write it."""

    def closure() -> Tensor:
        sam.zero_grad()
        loss = model()
        loss.backward()
        return loss

    sam.zero_grad()
    loss = model()
    loss.backward()
    return sam.step(closure, loss=loss)


def assert_same_params(a: nn.Module, b: nn.Module, exact: bool = False) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if exact:
            assert torch.equal(pa, pb), name
        else:
            torch.testing.assert_close(pa, pb, **TOL, msg=name)


# --- matches the two-pass reference -------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["quadratic", "mlp"])
@pytest.mark.parametrize(
    "mode",
    [
        dict(adaptive=False, scoped=False, every_k=1),
        dict(adaptive=True, scoped=False, every_k=1),
        dict(adaptive=False, scoped=True, every_k=1),
        dict(adaptive=True, scoped=True, every_k=1),
        dict(adaptive=False, scoped=False, every_k=3),
        dict(adaptive=False, scoped=False, every_k=1, clip=0.05),
        dict(adaptive=True, scoped=True, every_k=3, clip=0.05),
    ],
    ids=["plain", "adaptive", "scoped", "adaptive-scoped", "every_k3", "clip", "all-options"],
)
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam])
def test_matches_two_pass_reference(model_name: str, mode: dict, base: type) -> None:
    rho, lr, steps = 0.1, 0.05, 7
    model = MODELS[model_name]()
    ref = copy.deepcopy(model)
    scope_names = SCOPES[model_name] if mode["scoped"] else None
    scope = None
    if scope_names is not None:
        scope = [p for n, p in model.named_parameters() if n in scope_names]
    sam = SAM(
        model.parameters(),
        base=base,
        rho=rho,
        adaptive=mode["adaptive"],
        every_k=mode["every_k"],
        scope=scope,
        clip_grad_norm=mode.get("clip"),
        lr=lr,
    )
    ref_opt = base(ref.parameters(), lr=lr)
    clipped = 0
    for t in range(steps):
        if t % mode["every_k"] == 0:
            grads = reference_grads(ref, rho, mode["adaptive"], scope_names)
        else:
            grads = plain_grads(ref)
        clipped += mode.get("clip") is not None and bool(
            torch.sqrt(sum((g**2).sum() for g in grads.values())) > mode["clip"]
        )
        reference_step(ref, ref_opt, grads, clip=mode.get("clip"))
        sam_update(model, sam)
        assert_same_params(model, ref)
    if "clip" in mode:
        assert clipped >= 3  # the clip really acted on most steps
    assert not torch.equal(next(model.parameters()), next(MODELS[model_name]().parameters()))


def test_quadratic_matches_closed_form() -> None:
    """For L = 0.5 w'Aw the SAM gradient is A(w + rho Aw/||Aw||): no autograd in the reference."""
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=DTYPE)
    a = m @ m.T + torch.eye(6, dtype=DTYPE)
    w = nn.Parameter(torch.randn(6, dtype=DTYPE))
    expected = w.detach().clone()
    rho, lr = 0.2, 0.01
    sam = SAM([w], base=torch.optim.SGD, rho=rho, lr=lr)
    for _ in range(5):
        g = a @ expected
        expected = expected - lr * (a @ (expected + rho * g / g.norm()))

        def closure() -> Tensor:
            sam.zero_grad()
            loss = 0.5 * w @ a @ w
            loss.backward()
            return loss

        sam.zero_grad()
        (0.5 * w @ a @ w).backward()
        sam.step(closure)
        torch.testing.assert_close(w.detach(), expected, **TOL)


def test_clip_applies_to_the_final_gradient_only() -> None:
    """Perturbation from the unclipped gradient; clipping on the gradient the base step uses."""
    rho, lr, clip = 0.1, 0.05, 0.01
    model, ref = MLP(), MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=rho, clip_grad_norm=clip, lr=lr)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for _ in range(4):
        unclipped = reference_grads(ref, rho, False, None)
        assert torch.sqrt(sum((g**2).sum() for g in unclipped.values())) > clip
        reference_step(ref, ref_opt, unclipped, clip=clip)
        sam_update(model, sam)
        assert_same_params(model, ref)


# --- parity with an existing SAM ---------------------------------------------------------------
# pytorch-optimizer is installed in the d3rlpy environment only (it needs numpy > 1.24.4, which
# TD-MPC2's environment pins), so the tdmpc2-environment run deselects these with -m.
@pytest.mark.needs_pytorch_optimizer
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam])
def test_parity_with_pytorch_optimizer_sam(adaptive: bool, base: type) -> None:
    po = pytest.importorskip(
        "pytorch_optimizer", reason="pytorch-optimizer (test-only dependency) is not installed"
    )
    ours_model, theirs_model = MLP(), MLP()
    ours = SAM(ours_model.parameters(), base=base, rho=0.05, adaptive=adaptive, lr=0.02)
    theirs = po.SAM(theirs_model.parameters(), base, rho=0.05, adaptive=adaptive, lr=0.02)
    for _ in range(6):
        sam_update(ours_model, ours)

        def closure() -> Tensor:
            theirs.zero_grad()
            loss = theirs_model()
            loss.backward()
            return loss

        theirs.zero_grad()
        theirs_model().backward()
        theirs.step(closure)
        assert_same_params(ours_model, theirs_model)


# --- scope semantics ------------------------------------------------------------------------------
def test_scope_keeps_unperturbed_gradient_outside_scope() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.5, scope=model.first, lr=0.1)
    seen: dict[str, Tensor] = {}

    def record(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for n, p in model.named_parameters():
            seen[n] = p.grad.clone()

    sam.base_optimizer.register_step_pre_hook(record)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unperturbed = plain_grads(model)
    perturbed = reference_grads(model, 0.5, False, ("first.weight", "first.bias"))
    weights_in_closure: dict[str, Tensor] = {}

    def closure() -> Tensor:
        sam.zero_grad()
        weights_in_closure.update({n: p.detach().clone() for n, p in model.named_parameters()})
        loss = model()
        loss.backward()
        return loss

    sam.zero_grad()
    model().backward()
    sam.step(closure)
    for n in ("second.weight", "second.bias"):
        assert torch.equal(seen[n], unperturbed[n]), f"{n} must keep the unperturbed gradient"
        assert torch.equal(weights_in_closure[n], before[n]), f"{n} must not be perturbed"
    for n in ("first.weight", "first.bias"):
        torch.testing.assert_close(seen[n], perturbed[n], **TOL)
        assert not torch.allclose(seen[n], unperturbed[n], atol=1e-6), n
        assert not torch.equal(weights_in_closure[n], before[n]), f"{n} must be perturbed"
    # one base step updated every parameter, from the unperturbed weights
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * seen[n], **TOL)


def test_scope_param_outside_optimizer_is_rejected() -> None:
    model, other = MLP(), MLP()
    with pytest.raises(ValueError, match="not among the optimizer's parameters"):
        SAM(model.parameters(), base=torch.optim.SGD, scope=other.first.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scope is empty"):
        SAM(model.parameters(), base=torch.optim.SGD, scope=[], lr=0.1)


# --- every_k bookkeeping -----------------------------------------------------------------------
def test_every_k_closure_calls_and_return_values() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.05, every_k=4, lr=0.01)
    calls = 0
    pattern: list[bool] = []
    returned: list[bool] = []
    for _ in range(12):
        pattern.append(sam.is_sam_step)

        def closure() -> Tensor:
            nonlocal calls
            calls += 1
            sam.zero_grad()
            loss = model()
            loss.backward()
            return loss

        sam.zero_grad()
        loss = model()
        loss.backward()
        out = sam.step(closure, loss=loss)
        returned.append(out is not None)
        if out is None:
            assert sam.last_sharpness is None and sam.last_perturbed_loss is None
        else:
            assert not out.requires_grad
            assert sam.last_perturbed_loss == pytest.approx(float(out))
            assert sam.last_sharpness == pytest.approx(float(out) - loss.item())
    assert calls == 3
    assert pattern == [True, False, False, False] * 3
    assert returned == pattern


def test_plain_every_k_step_needs_no_closure_but_sam_step_does() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, every_k=2, lr=0.01)
    model().backward()
    with pytest.raises(ValueError, match="needs a closure"):
        sam.step()
    assert sam.is_sam_step  # the refused call did not count
    assert sam_update(model, sam) is not None
    before = model.first.weight.detach().clone()
    sam.zero_grad()
    model().backward()
    assert sam.step() is None  # plain step: no closure needed
    assert not torch.equal(model.first.weight, before)


def test_sharpness_is_perturbed_minus_unperturbed_loss() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.05, lr=0.01)
    loss_before = model().item()
    perturbed = sam_update(model, sam)
    assert sam.last_sharpness == pytest.approx(float(perturbed) - loss_before, abs=1e-12)
    assert sam.last_sharpness > 0  # the ascent step raises the loss at a non-minimum
    sam.zero_grad()
    model().backward()
    sam.step(lambda: model())  # no loss= given: no sharpness
    assert sam.last_sharpness is None


# --- edge cases ----------------------------------------------------------------------------------
def test_zero_gradient_gives_no_perturbation_and_no_nan() -> None:
    w = nn.Parameter(torch.zeros(3, dtype=DTYPE))  # minimum of ||w||^2: gradient exactly 0
    unused = nn.Parameter(torch.ones(2, dtype=DTYPE))  # never gets a gradient
    sam = SAM([w, unused], base=torch.optim.Adam, rho=0.05, adaptive=True, lr=0.1)
    seen: list[Tensor] = []

    def closure() -> Tensor:
        sam.zero_grad()
        seen.append(w.detach().clone())
        loss = (w**2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        sam.zero_grad()
        (w**2).sum().backward()
        sam.step(closure)
        assert torch.equal(seen[-1], torch.zeros(3, dtype=DTYPE))
        assert torch.isfinite(w).all() and torch.equal(w.detach(), torch.zeros(3, dtype=DTYPE))
        assert unused.grad is None and torch.equal(unused.detach(), torch.ones(2, dtype=DTYPE))
    assert sam.last_grad_norm == 0.0


def test_params_without_grad_are_skipped() -> None:
    model = MLP()
    extra = nn.Linear(3, 3, dtype=DTYPE)  # in the optimizer, not in the loss
    sam = SAM(list(model.parameters()) + list(extra.parameters()), base=torch.optim.SGD, lr=0.1)
    before = copy.deepcopy(extra.state_dict())
    sam_update(model, sam)
    assert all(p.grad is None for p in extra.parameters())
    for k, v in extra.state_dict().items():
        assert torch.equal(v, before[k])


def test_no_gradient_at_all_is_a_clear_error() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="loss.backward"):
        sam.step(lambda: model())
    assert sam.is_sam_step  # nothing was counted or perturbed
    assert all(p.grad is None for p in model.parameters())


def test_failing_closure_restores_weights() -> None:
    model = MLP()
    before = copy.deepcopy(model.state_dict())
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.5, lr=0.1)
    model().backward()

    def closure() -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sam.step(closure)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _FailOnCall:
    """Wraps a torch function; the n-th call raises (mid-perturbation), the others run it."""

    def __init__(self, fn: Callable, fail_on: int) -> None:
        self.fn, self.fail_on, self.calls = fn, fail_on, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected failure")
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("where", ["_foreach_copy_", "_foreach_add_"])
def test_failure_inside_first_step_restores_weights_and_grads(
    where: str, adaptive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two (dtype) buckets: the second bucket's backup copy or perturbation fails after the first
    bucket has moved; first_step must put every weight and set-aside gradient back."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(3, 2))  # float32 bucket, in scope
    b = nn.Parameter(torch.randn(4, dtype=DTYPE))  # float64 bucket, in scope
    c = nn.Parameter(torch.randn(2))  # out of scope: its gradient is set aside
    sam = SAM([a, b, c], base=torch.optim.SGD, rho=0.5, adaptive=adaptive, scope=[a, b], lr=0.1)

    def loss_fn() -> Tensor:
        return (a**2).sum() + (b**3).sum() + (c**2).sum() * a.sum()

    loss_fn().backward()
    weights = [p.detach().clone() for p in (a, b, c)]
    grads = [p.grad.clone() for p in (a, b, c)]
    failing = _FailOnCall(getattr(torch, where), fail_on=2)
    monkeypatch.setattr(torch, where, failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        sam.step(loss_fn)
    monkeypatch.undo()
    assert failing.calls >= 2
    for name, p, w, g in zip("abc", (a, b, c), weights, grads, strict=True):
        assert torch.equal(p.detach(), w), f"{name} left perturbed"
        assert p.grad is not None and torch.equal(p.grad, g), f"{name} lost its gradient"
    assert sam.is_sam_step  # the failed step was not counted

    # and the optimizer is usable again: the next step is an ordinary, complete SAM step
    def closure() -> Tensor:
        sam.zero_grad()
        perturbed = loss_fn()
        perturbed.backward()
        return perturbed

    sam.zero_grad()
    loss = loss_fn()
    loss.backward()
    sam.step(closure, loss=loss)
    assert sam.last_sharpness is not None and sam.last_sharpness > 0
    with pytest.raises(RuntimeError, match="second_step"):
        sam.second_step()  # nothing is left perturbed


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(rho=-0.1), SAMConfigError, "rho must be >= 0"),
        (dict(rho=float("nan")), SAMConfigError, "rho must be a finite number"),
        (dict(every_k=0), SAMConfigError, "every_k must be an integer >= 1"),
        (dict(every_k=1.5), SAMConfigError, "every_k must be an integer >= 1"),
        (dict(clip_grad_norm=0.0), SAMConfigError, "clip_grad_norm"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SAM(MLP().parameters(), base=torch.optim.SGD, lr=0.1, **kwargs)


def test_bad_base_is_rejected() -> None:
    model = MLP()
    with pytest.raises(TypeError, match="base="):
        SAM(model.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="as the first argument"):
        SAM(model.parameters(), base=opt)
    with pytest.raises(TypeError, match="as is"):
        SAM(opt, base=torch.optim.SGD)
    with pytest.raises(TypeError, match="cannot wrap another SAM"):
        SAM(SAM(opt))


# --- optimizer plumbing ---------------------------------------------------------------------------
def test_wrapping_existing_optimizer_keeps_groups_lrs_and_state() -> None:
    model = MLP()
    adam = torch.optim.Adam(
        [
            {"params": model.first.parameters(), "lr": 1e-3},
            {"params": model.second.parameters(), "lr": 1e-2},
        ]
    )
    model().backward()
    adam.step()
    exp_avg = adam.state[model.first.weight]["exp_avg"].clone()
    sam = SAM(adam, rho=0.05, scope=model.second.parameters())
    assert sam.base_optimizer is adam
    assert sam.param_groups is adam.param_groups
    assert [g["lr"] for g in sam.param_groups] == [1e-3, 1e-2]
    assert sam.state is adam.state
    assert torch.equal(sam.state[model.first.weight]["exp_avg"], exp_avg)
    assert all("rho" not in g for g in adam.param_groups)
    sam_update(model, sam)
    assert float(adam.state[model.first.weight]["step"]) == 2.0


def test_state_dict_round_trip_then_identical_next_steps() -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.Adam, rho=0.05, every_k=3, lr=0.01)
    for _ in range(4):
        sam_update(model, sam)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(sam.state_dict())

    clone = MLP()
    clone.load_state_dict(saved_model)
    clone_sam = SAM(clone.parameters(), base=torch.optim.Adam, rho=0.05, every_k=3, lr=0.01)
    clone_sam.load_state_dict(saved_opt)
    assert clone_sam.param_groups is clone_sam.base_optimizer.param_groups
    assert clone_sam.is_sam_step == sam.is_sam_step
    for _ in range(3):
        out_a, out_b = sam_update(model, sam), sam_update(clone, clone_sam)
        assert (out_a is None) == (out_b is None)
        assert_same_params(model, clone, exact=True)
    sd = clone_sam.state_dict()["base"]
    for key, value in sam.state_dict()["base"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, sd["state"][key][name])


def test_deepcopy_of_model_and_sam_steps_identically() -> None:
    """Checkpointing whole objects (torch.save / deepcopy) keeps SAM's base optimizer."""
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.Adam, rho=0.05, every_k=2, lr=0.01)
    sam_update(model, sam)
    model2, sam2 = copy.deepcopy((model, sam))
    assert sam2.base_optimizer.param_groups[0]["params"][0] is model2.first.weight
    for _ in range(3):
        sam_update(model, sam)
        sam_update(model2, sam2)
        assert_same_params(model, model2, exact=True)


def test_clip_on_plain_every_k_steps_too() -> None:
    clip, lr = 0.01, 0.05
    model, ref = MLP(), MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, every_k=2, clip_grad_norm=clip, lr=lr)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for t in range(4):
        grads = reference_grads(ref, 0.05, False, None) if t % 2 == 0 else plain_grads(ref)
        reference_step(ref, ref_opt, grads, clip=clip)
        sam_update(model, sam)
        assert_same_params(model, ref)


def test_load_plain_base_state_dict() -> None:
    model = MLP()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    model().backward()
    adam.step()
    sam = SAM(MLP().parameters(), base=torch.optim.Adam, lr=0.5)
    sam.load_state_dict(adam.state_dict())
    assert sam.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match="state_dict"):
        sam.load_state_dict({"nonsense": 1})


@pytest.mark.parametrize("attach_to", ["sam", "base"])
def test_lr_scheduler_works_on_sam_or_base(attach_to: str) -> None:
    model = MLP()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.05, lr=0.1)
    target = sam if attach_to == "sam" else sam.base_optimizer
    sched = torch.optim.lr_scheduler.StepLR(target, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for expected in (0.05, 0.025):
            sam_update(model, sam)
            sched.step()
            assert sam.param_groups[0]["lr"] == pytest.approx(expected)
            assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    # the scheduled lr is the one the base step uses
    ref = copy.deepcopy(model)
    grads = reference_grads(ref, 0.05, False, None)
    reference_step(ref, torch.optim.SGD(ref.parameters(), lr=0.025), grads)
    sam_update(model, sam)
    assert_same_params(model, ref)


def test_add_param_group() -> None:
    model = MLP()
    sam = SAM(model.first.parameters(), base=torch.optim.SGD, rho=0.05, lr=0.1)
    sam.add_param_group({"params": list(model.second.parameters()), "lr": 0.01})
    assert sam.param_groups is sam.base_optimizer.param_groups
    assert len(sam.base_optimizer.param_groups) == 2
    assert sam.param_groups[1]["lr"] == 0.01
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(
        [
            {"params": ref.first.parameters(), "lr": 0.1},
            {"params": ref.second.parameters(), "lr": 0.01},
        ]
    )
    reference_step(ref, ref_opt, reference_grads(ref, 0.05, False, None))
    sam_update(model, sam)
    assert_same_params(model, ref)
    with pytest.raises(ValueError):
        sam.add_param_group({"params": [model.first.weight]})  # already present
