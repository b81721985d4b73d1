"""A scoped SAM's second pass computes only the gradients its base step uses.

The base step applies the first pass's gradient to every out-of-scope parameter, so with
``freeze_out_of_scope`` (the default) :meth:`SAM.step` runs the closure with their
``requires_grad`` off: no weight gradient for them, and no backward pass at all through a part
of the model that only they feed. The update must be the same, bit for bit; every flag must come
back as it was (a user-frozen parameter stays frozen), also when the closure raises.
"""

from __future__ import annotations

import copy

import pytest
import torch
from flatrl.optim import SAM, SAMConfig, sam_step
from flatrl.optim import sam as sam_module
from torch import Tensor, nn

torch.set_num_threads(1)
DTYPE = torch.float64


class Chain(nn.Module):
    """encoder -> dynamics -> head: the scope (dynamics) sits between two out-of-scope parts."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, 8, dtype=DTYPE)
        self.dynamics = nn.Linear(8, 8, dtype=DTYPE)
        self.head = nn.Linear(8, 2, dtype=DTYPE)
        self.unused = nn.Parameter(torch.zeros(3, dtype=DTYPE))  # in no loss
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(16, 4, generator=g, dtype=DTYPE)
        self.y = torch.randn(16, 2, generator=g, dtype=DTYPE)
        self.latents: list[Tensor] = []  # the encoder's output of each pass

    def forward(self) -> Tensor:
        z = torch.tanh(self.encoder(self.x))
        self.latents.append(z)
        return ((self.head(torch.tanh(self.dynamics(z))) - self.y) ** 2).mean()


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def count_gradients(model: nn.Module) -> dict[str, int]:
    """How many times each parameter accumulates a gradient from here on."""
    counts = {n: 0 for n, p in model.named_parameters() if p.requires_grad}

    def hook(name: str) -> object:
        return lambda _p: counts.__setitem__(name, counts[name] + 1)

    for n, p in model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook(n))
    return counts


def update(model: Chain, sam: SAM, inside: list[dict[str, bool]] | None = None) -> None:
    """One sam_step update; ``inside`` collects the flags seen within the closure."""
    sam.zero_grad()
    loss = model()
    loss.backward()

    def recompute() -> Tensor:
        if inside is not None:
            inside.append(flags(model))
        return model()

    sam_step(sam, loss, recompute, modules=[model])


def make(freeze: bool = True, scope: str = "dynamics") -> tuple[Chain, SAM]:
    model = Chain()
    sam = SAM(
        model.parameters(),
        base=torch.optim.Adam,
        rho=0.05,
        scope=getattr(model, scope),
        freeze_out_of_scope=freeze,
        lr=1e-2,
    )
    return model, sam


def test_second_pass_takes_in_scope_gradients_only() -> None:
    model, sam = make()
    counts = count_gradients(model)
    seen: dict[str, Tensor] = {}
    sam.base_optimizer.register_step_pre_hook(
        lambda *_: seen.update(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        )
    )
    sam.zero_grad()
    model().backward()
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    inside: list[dict[str, bool]] = []

    def closure() -> Tensor:
        sam.zero_grad()
        inside.append(flags(model))
        loss = model()
        loss.backward()
        return loss

    sam.step(closure)
    assert counts == {
        "encoder.weight": 1,
        "encoder.bias": 1,
        "dynamics.weight": 2,
        "dynamics.bias": 2,
        "head.weight": 1,
        "head.bias": 1,
        "unused": 0,
    }
    # Upstream of the scope nothing takes a gradient: its backward pass is skipped entirely.
    assert model.latents[0].requires_grad and not model.latents[1].requires_grad
    assert inside == [{n: n.startswith("dynamics") for n in flags(model)}], (
        "out-of-scope parameters must be switched off within the closure"
    )
    assert all(flags(model).values()), "every flag must be back on after the step"
    for n in ("encoder.weight", "encoder.bias", "head.weight", "head.bias"):
        assert torch.equal(seen[n], first[n]), f"{n}: the base step uses the first pass's"


@pytest.mark.parametrize("rho", [0.0, 0.05])
@pytest.mark.parametrize("scope", ["encoder", "dynamics", "head"])
def test_update_is_bit_identical_with_and_without_it(rho: float, scope: str) -> None:
    runs = []
    for freeze in (True, False):
        model = Chain()
        config = SAMConfig(rho=rho, clip_grad_norm=0.5)
        base = torch.optim.Adam(model.parameters(), lr=1e-2)
        sam = SAM.from_config(base, config, scope=getattr(model, scope), freeze_out_of_scope=freeze)
        assert sam.freeze_out_of_scope is freeze
        sharpness = []
        for _ in range(3):
            update(model, sam)
            sharpness.append(sam.last_sharpness)
        runs.append((model, sharpness))
    (frozen, s_frozen), (plain, s_plain) = runs
    assert s_frozen == s_plain
    for (n, a), b in zip(frozen.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), n


def test_opt_out_and_distributed_runs_take_every_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    model, sam = make(freeze=False)
    counts = count_gradients(model)
    update(model, sam)
    assert counts["encoder.weight"] == 2 and counts["head.weight"] == 2

    # Under DDP every wrapped parameter must get its gradient in every backward pass.
    monkeypatch.setattr(sam_module, "distributed_run", lambda: True)
    model, sam = make(freeze=True)
    counts = count_gradients(model)
    update(model, sam)
    assert counts["encoder.weight"] == 2 and counts["head.weight"] == 2


def test_user_frozen_parameters_stay_frozen() -> None:
    model, sam = make()
    model.head.bias.requires_grad_(False)  # out of scope
    model.dynamics.bias.requires_grad_(False)  # in scope
    before = flags(model)
    inside: list[dict[str, bool]] = []
    update(model, sam, inside)
    assert flags(model) == before
    assert inside == [
        {
            **before,
            "encoder.weight": False,
            "encoder.bias": False,
            "head.weight": False,
            "unused": False,
        }
    ]


def test_failing_closure_restores_flags_and_weights() -> None:
    model, sam = make()
    model.head.bias.requires_grad_(False)
    before_flags, before_weights = flags(model), copy.deepcopy(model.state_dict())
    inside: list[dict[str, bool]] = []
    sam.zero_grad()
    model().backward()

    def closure() -> Tensor:
        inside.append(flags(model))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sam.step(closure)
    assert not inside[0]["encoder.weight"], "the closure ran with out-of-scope parameters off"
    assert flags(model) == before_flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_weights[k]), k


def test_by_hand_first_and_second_step() -> None:
    model, sam = make()
    counts = count_gradients(model)
    model().backward()
    sam.first_step(zero_grad=True)
    with sam.out_of_scope_frozen():
        model().backward()
    sam.second_step()
    assert counts["encoder.weight"] == 1 and counts["dynamics.weight"] == 2
    assert all(flags(model).values())


def test_nothing_is_frozen_without_a_scope_or_an_in_scope_gradient() -> None:
    model = Chain()
    sam = SAM(model.parameters(), base=torch.optim.SGD, rho=0.05, lr=0.1)
    inside: list[dict[str, bool]] = []
    update(model, sam, inside)
    assert all(inside[0].values())
    # The scope took no gradient in the first pass: freezing the rest would leave the second
    # pass's loss without any gradient (backward() would raise), so nothing is switched off.
    model, sam = make(scope="unused")
    inside = []
    update(model, sam, inside)
    assert all(inside[0].values())


def test_freeze_option_must_be_a_bool() -> None:
    model = Chain()
    with pytest.raises(TypeError, match="freeze_out_of_scope must be True or False"):
        SAM(model.parameters(), base=torch.optim.SGD, lr=0.1, freeze_out_of_scope="yes")


def _ddp_updates(tmp_path: object, steps: int = 3) -> None:
    """Scoped SAM steps on a DDP-wrapped model (one-process gloo group)."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path) + "/store", 1)  # type: ignore[operator]
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = Chain()
        model.unused.requires_grad_(False)  # in no loss: DDP would wait for its gradient
        ddp = nn.parallel.DistributedDataParallel(model)
        sam = SAM(ddp.parameters(), base=torch.optim.SGD, rho=0.05, scope=model.dynamics, lr=0.1)
        for _ in range(steps):
            sam.zero_grad()
            loss = ddp()
            loss.backward()
            sam_step(sam, loss, ddp, modules=[ddp])
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_gets_every_gradient_in_both_passes(tmp_path: object) -> None:
    # DDP's reducer fails the next forward if a backward pass left a parameter without its
    # gradient: the freeze must be off while a process group is up.
    _ddp_updates(tmp_path)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_control_freezing_would_break_it(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sam_module, "distributed_run", lambda: False)
    with pytest.raises(RuntimeError, match="reduction"):
        _ddp_updates(tmp_path)
