"""Batched Newton-Schulz and stacked (3-D) ensemble weights in flatrl.optim.Muon (issue 13).

Each check compares against the per-matrix computation: the batched iteration against one
``newton_schulz`` per matrix, a stacked weight against its members as separate 2-D weights, and
a stacked ensemble trained with ``build_optimizer(..., stacked=[...])`` against the same
members trained as separate networks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from flatrl.optim import Muon, build_optimizer, muon_param_groups
from flatrl.optim import muon as muon_module
from flatrl.optim.muon import newton_schulz, newton_schulz_batched, newton_schulz_flops
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

torch.set_num_threads(1)
COEFFS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(4, 6, 6), (3, 9, 4), (5, 4, 9), (1, 7, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_newton_schulz_equals_one_per_matrix(shape: tuple, dtype: torch.dtype) -> None:
    stack = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    stack[0] *= 50.0  # members of very different scale: each is normalised on its own
    kept = stack.clone()
    batched = newton_schulz_batched(stack, COEFFS, 5, 1e-7, dtype)
    single = torch.stack([newton_schulz(m, COEFFS, 5, 1e-7, dtype) for m in stack])
    assert batched.shape == stack.shape and batched.dtype == dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-12  # float rounding of batched kernels
    torch.testing.assert_close(batched, single, rtol=0, atol=atol)
    assert torch.equal(stack, kept)  # the input is left alone
    with pytest.raises(ValueError, match="members, rows, cols"):
        newton_schulz_batched(torch.ones(3, 3), COEFFS, 5, 1e-7, dtype)


def test_newton_schulz_flops_counts_three_products_per_step() -> None:
    # 256x256: (2 n^3) x 3 products x 5 steps = 503 MFLOP; a tall matrix counts as its transpose
    assert newton_schulz_flops((256, 256)) == 5 * 3 * 2 * 256**3
    assert (
        newton_schulz_flops((64, 16))
        == newton_schulz_flops((16, 64))
        == 5 * (4 * 16 * 16 * 64 + 2 * 16**3)
    )
    assert newton_schulz_flops((5, 32, 32), steps=2) == 5 * newton_schulz_flops((32, 32), 2)


def _params(shapes: list[tuple[int, ...]], seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def _run(opt: torch.optim.Optimizer, params: list[nn.Parameter], steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_step_equals_per_matrix_step_and_batches_by_shape(
    nesterov: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same-shape matrices in two groups (different lr) go through ONE batched iteration."""
    shapes = [(8, 8), (8, 8), (12, 5), (8, 8), (12, 5), (3, 7)]
    batched_p, loop_p = _params(shapes, 0), _params(shapes, 0)

    def groups(ps: list[nn.Parameter]) -> list[dict]:
        return [{"params": ps[:3], "lr": 0.02}, {"params": ps[3:], "lr": 0.05}]

    hyper = dict(weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn="original")
    batched = Muon(groups(batched_p), **hyper)
    loop = Muon(groups(loop_p), batched=False, **hyper)
    calls: list[tuple[int, ...]] = []
    owned = muon_module._newton_schulz_owned

    def counting(x: Tensor, *args: object) -> Tensor:
        calls.append(tuple(x.shape))
        return owned(x, *args)

    monkeypatch.setattr(muon_module, "_newton_schulz_owned", counting)
    _run(batched, batched_p, 1, seed=1)
    # one batched call per shape with several matrices; the lone (3, 7) takes the 2-D path
    assert sorted(calls) == [(2, 12, 5), (3, 8, 8)]
    calls.clear()
    _run(loop, loop_p, 1, seed=1)
    assert calls == []  # batched=False: one 2-D Newton-Schulz per matrix, as torch
    _run(batched, batched_p, 3, seed=2)
    _run(loop, loop_p, 3, seed=2)
    for p, q in zip(batched_p, loop_p, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            batched.state[p]["momentum_buffer"], loop.state[q]["momentum_buffer"]
        )


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("member_shape", [(6, 6), (9, 4), (4, 9)])
def test_stacked_weight_step_equals_members_as_separate_weights(
    adjust_lr_fn: str, member_shape: tuple[int, int]
) -> None:
    """A (members, rows, cols) weight = its members as 2-D weights (own norm, own lr scale)."""
    members = 4
    (stacked,) = _params([(members, *member_shape)], 3)
    with torch.no_grad():
        stacked[1] *= 30.0  # a member of another scale must not change the others' steps
    separate = [nn.Parameter(stacked.detach()[i].clone()) for i in range(members)]
    hyper = dict(lr=0.03, weight_decay=0.05, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    opt_stacked = Muon([stacked], **hyper)
    opt_separate = Muon(separate, batched=False, **hyper)  # torch's per-matrix loop
    g = torch.Generator().manual_seed(4)
    for _ in range(4):
        grad = torch.randn(members, *member_shape, generator=g)
        stacked.grad = grad.clone()
        for i, p in enumerate(separate):
            p.grad = grad[i].clone()
        opt_stacked.step()
        opt_separate.step()
    torch.testing.assert_close(stacked.detach(), torch.stack(separate).detach(), rtol=0, atol=1e-6)
    # and the unbatched loop over a stack's members agrees too
    (again,) = _params([(members, *member_shape)], 3)
    with torch.no_grad():
        again[1] *= 30.0
    opt_loop = Muon([again], batched=False, **hyper)
    g = torch.Generator().manual_seed(4)
    for _ in range(4):
        again.grad = torch.randn(members, *member_shape, generator=g)
        opt_loop.step()
    torch.testing.assert_close(again.detach(), stacked.detach(), rtol=0, atol=1e-6)


def test_muon_shape_errors_and_settings_survive_copies() -> None:
    with pytest.raises(ValueError, match="3-D stacks") as err:
        Muon([nn.Parameter(torch.ones(2, 3, 4, 5))])
    assert "(2, 3, 4, 5)" in str(err.value) and "Adam" in str(err.value)
    with pytest.raises(ValueError, match="Learning rate"):  # torch's own validation still runs
        Muon([nn.Parameter(torch.ones(3, 3))], lr=-1.0)
    opt = Muon([nn.Parameter(torch.ones(3, 3))], batched=False, ns_dtype="float64")
    with pytest.raises(ValueError, match="3-D stacks"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))]})
    clone = copy.deepcopy(opt)
    assert clone.batched is False
    clone.add_param_group({"params": [nn.Parameter(torch.ones(2, 4, 4))]})
    assert clone.param_groups[-1]["ns_dtype"] == "float64"
    assert isinstance(opt, torch.optim.Muon)


# --- the split: which parameters of a stacked ensemble go to Muon --------------------------------
class Stacked(nn.Module):
    """An ensemble stored the tensordict/stack_module_state way, next to an ordinary MLP and a
    1-D convolution (whose 3-D kernel is not a stack of matrices)."""

    def __init__(self, members: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        self.conv = nn.Conv1d(2, 4, kernel_size=3)
        self.ens = nn.Module()
        shapes = {
            "w0": (members, 8, 5),
            "b0": (members, 8),
            "ln": (members, 8),
            "w1": (members, 8, 8),
            "w2": (members, 1, 8),
        }
        for name, shape in shapes.items():
            setattr(self.ens, name, nn.Parameter(torch.randn(*shape)))
        # a parameterless template of one member, as TD-MPC2's Ensemble keeps
        template = nn.Linear(5, 8, device="meta")
        del template.weight, template.bias
        self.ens.add_module("template", template)


def _names(model: nn.Module, params: list[Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_split_routes_stacked_hidden_weights_only_when_named() -> None:
    model = Stacked()
    muon, fallback = muon_param_groups(model)
    # no 3-D tensor goes to Muon unless named as stacked (the conv kernel never does)
    assert not {"ens.w0", "ens.w1", "ens.w2", "conv.weight"} & _names(model, muon)
    muon, fallback = muon_param_groups(model, stacked=["ens"])
    assert _names(model, muon) == {"mlp.1.weight", "ens.w1"}
    assert {"ens.w0", "ens.b0", "ens.ln", "ens.w2", "conv.weight"} <= _names(model, fallback)
    muon, _ = muon_param_groups(model, stacked=["ens"], apply_first_layer=True)
    # w2's matrices are 1x8 (a side of 1): never Muon, even as the allowed last layer
    assert _names(model, muon) == {"mlp.0.weight", "mlp.1.weight", "ens.w0", "ens.w1"}
    muon, _ = muon_param_groups(model, stacked=["ens.w1"])
    # a parameter name works too; a lone stacked weight is its own first and last layer
    assert "ens.w1" not in _names(model, muon)
    muon, _ = muon_param_groups(
        model, stacked=["ens.w1"], first_layer_names=[], last_layer_names=[]
    )
    assert "ens.w1" in _names(model, muon)
    muon, _ = muon_param_groups(model.ens, stacked=[""])  # "" = the whole module
    assert _names(model.ens, muon) == {"w1"}
    with pytest.raises(ValueError, match="name no submodule or parameter"):
        muon_param_groups(model, stacked=["_Qs"])
    with pytest.raises(TypeError, match="list of names"):
        muon_param_groups(model, stacked="ens")


# --- end to end: an ensemble trained stacked == its members trained separately -------------------
def _member(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16),
        nn.LayerNorm(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 2),
    )


class Ensemble(nn.Module):
    """Members' parameters stacked with torch.func.stack_module_state, run with vmap."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        params, _ = stack_module_state(members)
        self.params = nn.ParameterDict(
            {k.replace(".", "_"): nn.Parameter(v) for k, v in params.items()}
        )
        self.keys = {k.replace(".", "_"): k for k in params}
        # the member's structure only, not registered (its parameters are the stacked ones)
        self.__dict__["template"] = copy.deepcopy(members[0]).to("meta")

    def forward(self, x: Tensor) -> Tensor:
        def one(params: dict[str, Tensor]) -> Tensor:
            return functional_call(self.template, {self.keys[k]: v for k, v in params.items()}, x)

        return torch.vmap(one)(dict(self.params))


def test_stacked_ensemble_training_equals_members_trained_separately() -> None:
    members = [_member(s) for s in range(3)]
    separate = nn.ModuleList(copy.deepcopy(members))
    ensemble = Ensemble(members)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(1))
    kw = dict(case="muon", lr=0.01, weight_decay=0.01)
    opt_ens = build_optimizer(ensemble, stacked=["params"], **kw)
    muon_groups = [g for g in opt_ens.param_groups if g["optimizer_kind"] == "muon"]
    assert _names(ensemble, muon_groups[0]["params"]) == {"params.3_weight"}  # the hidden layer
    # each member: its own hidden matrix on Muon, the rest on Adam (elementwise, so stacking
    # the Adam part changes nothing either)
    opt_sep = [build_optimizer(m, **kw) for m in separate]
    for _ in range(3):
        opt_ens.zero_grad()
        ((ensemble(x) - y) ** 2).mean(dim=(1, 2)).sum().backward()
        opt_ens.step()
        for i, (m, opt) in enumerate(zip(separate, opt_sep, strict=True)):
            opt.zero_grad()
            ((m(x) - y[i]) ** 2).mean().backward()
            opt.step()
    for key, stacked in ensemble.params.items():
        name = ensemble.keys[key]
        for i, m in enumerate(separate):
            torch.testing.assert_close(
                stacked[i], m.get_parameter(name), rtol=0, atol=1e-5, msg=f"{name}[{i}]"
            )
    before = torch.stack([_member(s)[3].weight for s in range(3)])
    assert not torch.allclose(ensemble.params["3_weight"], before, atol=1e-3)


def test_default_batches_small_matrices_on_cpu_and_large_ones_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU a batched product of large matrices is slower than one per matrix: by default
    only matrices under CPU_BATCH_MAX_ELEMENTS are stacked; batched=True stacks all."""
    calls: list[tuple[int, ...]] = []
    owned = muon_module._newton_schulz_owned

    def counting(x: Tensor, *args: object) -> Tensor:
        calls.append(tuple(x.shape))
        return owned(x, *args)

    monkeypatch.setattr(muon_module, "_newton_schulz_owned", counting)
    side = int(muon_module.CPU_BATCH_MAX_ELEMENTS**0.5)
    shapes = [(side, side), (side, side), (8, 8), (8, 8), (3, side, side)]
    results = []
    for batched in (None, True):
        params = _params(shapes, 0)
        calls.clear()
        _run(Muon(params, lr=0.01, batched=batched), params, 1, seed=1)
        results.append([p.detach() for p in params])
        if batched is None:
            assert calls == [(2, 8, 8)]  # the large ones one at a time (stack members too)
        else:
            assert sorted(calls) == [(2, 8, 8), (5, side, side)]
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
