"""The Muon split, the composite optimizer, build_optimizer, and Muon under SAM on CPU."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from flatrl.optim import SAM, CompositeOptimizer, Muon, build_optimizer, muon_param_groups
from flatrl.optim.muon import newton_schulz
from torch import Tensor, nn

torch.set_num_threads(1)


class Net(nn.Module):
    """Embedding + 4 linears + a norm + a stacked ensemble (3-D weight, 2-D bias)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(3, 6)
        self.enc = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8, bias=False))
        self.head = nn.Linear(8, 2)
        self.ens_weight = nn.Parameter(torch.randn(4, 2, 2) * 0.1)
        self.ens_bias = nn.Parameter(torch.zeros(4, 2))

    def forward(self, idx: Tensor) -> Tensor:
        h = self.hidden(torch.relu(self.norm(self.enc(self.emb(idx)))))
        out = self.head(h)
        return torch.einsum("eio,bi->ebo", self.ens_weight, out) + self.ens_bias[:, None]


def names_of(model: nn.Module, params: list[Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


HIDDEN = {"hidden.0.weight", "hidden.2.weight"}


@pytest.mark.parametrize(
    ("first", "last", "extra"),
    [
        (False, False, set()),
        (True, False, {"enc.weight"}),
        (False, True, {"head.weight"}),
        (True, True, {"enc.weight", "head.weight"}),
    ],
)
def test_split_follows_first_last_toggles(first: bool, last: bool, extra: set[str]) -> None:
    model = Net()
    muon, fallback = muon_param_groups(model, apply_first_layer=first, apply_last_layer=last)
    all_names = {n for n, _ in model.named_parameters()}
    assert names_of(model, muon) == HIDDEN | extra
    assert names_of(model, fallback) == all_names - HIDDEN - extra
    # never to Muon: biases (incl. the 2-D ensemble bias), norms, embeddings, 3-D weights
    for never in ("emb.weight", "norm.weight", "ens_weight", "ens_bias", "enc.bias"):
        assert never in names_of(model, fallback)
    assert len(muon) + len(fallback) == len(all_names)


def test_split_with_explicit_layer_names() -> None:
    model = Net()
    muon, _ = muon_param_groups(model, first_layer_names=["hidden"], last_layer_names=["head"])
    assert names_of(model, muon) == {"enc.weight"}  # "hidden" prefix covers hidden.0 and .2
    muon, _ = muon_param_groups(model, first_layer_names=["hidden.0"], last_layer_names=[])
    assert names_of(model, muon) == {"enc.weight", "hidden.2.weight", "head.weight"}
    with pytest.raises(ValueError, match="name no submodule"):
        muon_param_groups(model, first_layer_names=["encoder"])
    with pytest.raises(TypeError, match="list of module names"):
        muon_param_groups(model, last_layer_names="head")


def test_frozen_params_are_left_out() -> None:
    model = Net()
    model.hidden[0].weight.requires_grad_(False)
    muon, fallback = muon_param_groups(model)
    assert names_of(model, muon) == {"hidden.2.weight"}
    assert "hidden.0.weight" not in names_of(model, fallback)


COEFFS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(6, 6), (9, 4), (4, 9)])
def test_newton_schulz_float32_is_close_to_float64_and_orthogonalises(shape: tuple) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x32 = newton_schulz(g, COEFFS, 5, 1e-7, torch.float32)
    x64 = newton_schulz(g.double(), COEFFS, 5, 1e-7, torch.float64)
    assert x32.dtype == torch.float32 and x32.shape == g.shape
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-5)
    # singular values are pushed into the band (0.5, 1.5) the quintic is tuned for
    s = torch.linalg.svdvals(x64)
    assert s.min() > 0.3 and s.max() < 1.3
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.ones(2, 2, 2), COEFFS, 5, 1e-7, torch.float32)


def test_muon_bfloat16_reproduces_torch_muon_exactly() -> None:
    """Same update rule as torch.optim.Muon, so only the Newton-Schulz dtype differs."""
    torch.manual_seed(0)
    w = [torch.randn(6, 4), torch.randn(5, 7)]
    ours_p = [nn.Parameter(t.clone()) for t in w]
    torch_p = [nn.Parameter(t.clone()) for t in w]
    kwargs = dict(lr=0.05, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    ours = Muon(ours_p, ns_dtype="bfloat16", **kwargs)
    theirs = torch.optim.Muon(torch_p, **kwargs)
    for step in range(3):
        grads = [torch.randn_like(t) for t in w]
        for p, q, gr in zip(ours_p, torch_p, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        theirs.step()
        for p, q in zip(ours_p, torch_p, strict=True):
            assert torch.equal(p, q), step
    assert torch.equal(
        ours.state[ours_p[0]]["momentum_buffer"], theirs.state[torch_p[0]]["momentum_buffer"]
    )


def test_muon_picks_float32_on_cpu_and_validates_dtype() -> None:
    p = nn.Parameter(torch.randn(5, 5))
    opt = Muon([p], lr=0.1)
    assert opt.param_groups[0]["ns_dtype"] is None
    p.grad = torch.randn(5, 5)
    before = p.detach().clone()
    opt.step()
    expected = newton_schulz(p.grad.lerp(p.grad * 0.05, 0.95), COEFFS, 5, 1e-7, torch.float32)
    torch.testing.assert_close(p.detach(), before * (1 - 0.1 * 0.1) - 0.1 * expected)
    opt.add_param_group({"params": [nn.Parameter(torch.randn(3, 3))]})
    assert opt.param_groups[1]["ns_dtype"] is None
    explicit = Muon(
        [{"params": [nn.Parameter(torch.randn(2, 2))], "ns_dtype": "bfloat16"}, {"params": [p]}],
        ns_dtype="float64",
    )
    assert [g["ns_dtype"] for g in explicit.param_groups] == ["bfloat16", "float64"]
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([p], ns_dtype="float16")
    with pytest.raises(ValueError, match="2D"):
        Muon([nn.Parameter(torch.ones(3))])


def loss_fn(model: nn.Module) -> Tensor:
    idx = torch.arange(12) % 3
    return (model(idx) ** 2).mean() + model.head.weight.sum()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()


def test_build_muon_matches_separate_torch_optimizers() -> None:
    model = Net()
    ref = copy.deepcopy(model)
    opt = build_optimizer(
        model, case="muon", lr=0.02, muon_lr=0.05, weight_decay=0.01, ns_dtype="bfloat16"
    )
    assert isinstance(opt, CompositeOptimizer)
    assert [g["optimizer_kind"] for g in opt.param_groups] == ["muon", "adam"]
    covered = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())

    muon_p, adam_p = muon_param_groups(ref)
    ref_muon = torch.optim.Muon(
        muon_p, lr=0.05, weight_decay=0.01, momentum=0.95, adjust_lr_fn="original"
    )
    ref_adam = torch.optim.Adam(adam_p, lr=0.02, weight_decay=0.01)
    start = model.hidden[0].weight.detach().clone()
    for _ in range(3):
        train(model, opt, 1)
        for o in (ref_muon, ref_adam):
            o.zero_grad()
        loss_fn(ref).backward()
        ref_muon.step()
        ref_adam.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert not torch.equal(model.hidden[0].weight, start)


@pytest.mark.parametrize(
    ("case", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_build_adam_cases(case: str, cls: type) -> None:
    opt = build_optimizer(Net(), case=case, lr=1e-3, fallback="adamw")
    assert type(opt) is cls
    assert opt.param_groups[0]["optimizer_kind"] == case


def test_build_muon_default_lr_scaling_and_adamw_fallback() -> None:
    opt = build_optimizer(Net(), case="muon", lr=1e-3, fallback="adamw")
    kinds = {g["optimizer_kind"]: g for g in opt.param_groups}
    assert set(kinds) == {"muon", "adamw"}
    assert kinds["muon"]["lr"] == 1e-3 and kinds["muon"]["adjust_lr_fn"] == "match_rms_adamw"
    assert isinstance(opt.optimizers[1], torch.optim.AdamW)


def test_build_rejects_bad_input_and_warns_without_hidden_matrix() -> None:
    with pytest.raises(ValueError, match="case must be one of"):
        build_optimizer(Net(), case="lion")
    with pytest.raises(ValueError, match="fallback must be one of"):
        build_optimizer(Net(), case="muon", fallback="sgd")
    with pytest.warns(UserWarning, match="no hidden 2-D weight"):
        opt = build_optimizer(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)), case="muon")
    assert [g["optimizer_kind"] for g in opt.param_groups] == ["adam"]


def test_composite_state_dict_round_trip_then_identical_step() -> None:
    model = Net()
    opt = build_optimizer(model, case="muon", lr=0.01)
    train(model, opt, 3)
    clone = copy.deepcopy(model)
    clone_opt = build_optimizer(clone, case="muon", lr=0.5)  # lr comes from the state dict
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert [g["lr"] for g in clone_opt.param_groups] == [0.01, 0.01]
    assert clone_opt.param_groups[0] is clone_opt.optimizers[0].param_groups[0]
    train(model, opt, 2)
    train(clone, clone_opt, 2)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="state dict is for optimizers"):
        build_optimizer(Net(), case="muon", fallback="adamw").load_state_dict(opt.state_dict())


def test_composite_survives_deepcopy() -> None:
    model = Net()
    opt = build_optimizer(model, case="muon", lr=0.01)
    train(model, opt, 2)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.param_groups[0] is opt2.optimizers[0].param_groups[0]
    train(model, opt, 2)
    train(model2, opt2, 2)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_composite_scheduler_and_add_param_group() -> None:
    model = Net()
    opt = build_optimizer(model, case="muon", lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    train(model, opt, 1)
    sched.step()
    assert [o.param_groups[0]["lr"] for o in opt.optimizers] == pytest.approx([1e-3, 1e-3])
    extra = nn.Linear(8, 8, bias=False)
    groups_list = opt.param_groups
    opt.add_param_group({"params": [extra.weight], "optimizer_kind": "muon", "lr": 0.1})
    assert opt.param_groups is groups_list and len(opt.param_groups) == 3
    assert opt.optimizers[0].param_groups[-1]["params"] == [extra.weight]
    with pytest.raises(ValueError, match="optimizer_kind"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    assert len(opt.state) == len(opt.optimizers[0].state) + len(opt.optimizers[1].state)


def test_muon_with_sam_on_cpu_matches_reference() -> None:
    """SAM(composite) == hand-computed SAM gradient fed to an identical composite."""
    rho = 0.05
    model = Net()
    ref = copy.deepcopy(model)
    sam = SAM(build_optimizer(model, case="muon", lr=0.01), rho=rho, scope=model.hidden)
    ref_opt = build_optimizer(ref, case="muon", lr=0.01)
    assert sam.param_groups is sam.base_optimizer.param_groups
    hidden = {id(p) for p in ref.hidden.parameters()}
    losses = []
    for _ in range(3):
        # reference: unperturbed grads, perturb the scope by hand, regrad, keep the others
        ref_opt.zero_grad()
        loss_fn(ref).backward()
        g0 = {p: p.grad.clone() for p in ref.parameters()}
        norm = torch.sqrt(sum((g0[p] ** 2).sum() for p in ref.parameters() if id(p) in hidden))
        with torch.no_grad():
            for p in ref.parameters():
                if id(p) in hidden:
                    p.add_(rho * g0[p] / (norm + 1e-12))
        ref_opt.zero_grad()
        loss_fn(ref).backward()
        with torch.no_grad():
            for p in ref.parameters():
                if id(p) in hidden:
                    p.sub_(rho * g0[p] / (norm + 1e-12))
                else:
                    p.grad = g0[p]
        ref_opt.step()

        def closure() -> Tensor:
            sam.zero_grad()
            loss = loss_fn(model)
            loss.backward()
            return loss

        sam.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        sam.step(closure, loss=loss)
        losses.append(sam.last_sharpness)
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert all(s is not None and s == s for s in losses)
    state = sam.state_dict()
    assert state["base"]["kinds"] == ["muon", "adam"]


# --- flatrl.optim.Muon against a hand-written float32 reference of torch's rule ------------------
def reference_muon_step(
    w: Tensor,
    buf: Tensor,
    grad: Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    adjust_lr_fn: str,
) -> None:
    """torch.optim.Muon's update (docs' algorithm box) in float32, in place on ``w`` and ``buf``."""
    buf.lerp_(grad, 1 - momentum)
    x = grad.lerp(buf, momentum) if nesterov else buf.clone()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = COEFFS[0] * x + (COEFFS[1] * gram + COEFFS[2] * gram @ gram) @ x
    x = x.T if tall else x
    rows, cols = w.shape
    if adjust_lr_fn == "original":
        scale = max(1.0, rows / cols) ** 0.5
    else:
        scale = 0.2 * max(rows, cols) ** 0.5
    w.mul_(1 - lr * weight_decay).add_(x, alpha=-lr * scale)


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_float32_reference_of_torch_rule(nesterov: bool, adjust_lr_fn: str) -> None:
    """nesterov=False once normalised the momentum buffer in place inside Newton-Schulz."""
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (4, 7), (5, 5)]  # tall, wide, square
    start = [torch.randn(*s, generator=g) for s in shapes]
    params = [nn.Parameter(t.clone()) for t in start]
    ref_w = [t.clone() for t in start]
    ref_buf = [torch.zeros_like(t) for t in start]
    hyper = dict(lr=0.02, momentum=0.9, weight_decay=0.1)
    opt = Muon(params, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn, **hyper)
    assert opt.param_groups[0]["ns_dtype"] is None  # float32 on CPU
    for _ in range(6):
        grads = [torch.randn(*s, generator=g) for s in shapes]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        opt.step()
        for w, buf, grad in zip(ref_w, ref_buf, grads, strict=True):
            reference_muon_step(w, buf, grad, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn, **hyper)
    for p, w, buf in zip(params, ref_w, ref_buf, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-6)
    assert not torch.allclose(params[0].detach(), start[0], atol=1e-3)


def test_newton_schulz_leaves_its_input_alone() -> None:
    for dtype in (torch.float32, torch.float64):
        m = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        kept = m.clone()
        newton_schulz(m, COEFFS, 5, 1e-7, dtype)
        assert torch.equal(m, kept), dtype


# --- no Muon for scalars, vectors, or matrices with a side of 1 ---------------------------------
class WithScalars(nn.Module):
    """A d3rlpy-like temperature (1, 1), a scalar, a (1,) vector, thin layers, one real matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temp = nn.Parameter(torch.zeros(1, 1))
        self.scalar = nn.Parameter(torch.tensor(0.5))
        self.single = nn.Parameter(torch.zeros(1))
        self.row = nn.Parameter(torch.randn(1, 8))
        self.net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 1))


def test_scalars_and_thin_matrices_never_go_to_muon() -> None:
    model = WithScalars()
    for edges in (False, True):  # even with the first/last layer allowed to use Muon
        muon, fallback = muon_param_groups(model, apply_first_layer=edges, apply_last_layer=edges)
        assert names_of(model, muon) == {"net.2.weight"}
        assert {"log_temp", "scalar", "single", "row", "net.0.weight", "net.3.weight"} <= (
            names_of(model, fallback)
        )
    opt = build_optimizer(model, case="muon", apply_first_layer=True, apply_last_layer=True)
    muon_group = next(gr for gr in opt.param_groups if gr["optimizer_kind"] == "muon")
    assert names_of(model, muon_group["params"]) == {"net.2.weight"}
    # d3rlpy builds the temperature's optimizer over a module holding only log_temp (1, 1)
    temperature = nn.Module()
    temperature.log_temp = nn.Parameter(torch.zeros(1, 1))
    with pytest.warns(UserWarning, match="no hidden 2-D weight"):
        opt = build_optimizer(temperature, case="muon", apply_first_layer=True)
    assert [g["optimizer_kind"] for g in opt.param_groups] == ["adam"]


# --- flatrl.optim imports on a torch without torch.optim.Muon ------------------------------------
_WITHOUT_MUON = """
import torch, torch.optim as o
del o.Muon
import flatrl.optim as f
from torch import nn
from flatrl.runtime import TorchRNG
assert not hasattr(torch.optim, "Muon")
model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
for make in (lambda: f.Muon([model[2].weight]), lambda: f.build_optimizer(model, case="muon")):
    try:
        make()
    except f.MuonUnavailableError as err:
        print("ERROR:", err)
    else:
        raise SystemExit("Muon was constructed without torch.optim.Muon")
x, y = torch.randn(16, 3), torch.randn(16, 1)
for opt in (f.build_optimizer(model, case="adam"), f.SAM(torch.optim.Adam(model.parameters()))):
    for _ in range(2):
        rng = TorchRNG()
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        f.sam_step(opt, loss, lambda: ((model(x) - y) ** 2).mean(), rng=rng, modules=[model])
assert opt.last_sharpness is not None
print("OK")
"""


def test_flatrl_optim_imports_on_a_torch_without_muon() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MUON], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "OK"
    errors = [line for line in lines if line.startswith("ERROR:")]
    assert len(errors) == 2
    for line in errors:
        assert f"torch {torch.__version__}" in line and "torch >= 2.9" in line, line
