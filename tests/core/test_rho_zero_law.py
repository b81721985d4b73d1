"""The rho -> 0 law: SAM with a (near-)zero radius is the base optimizer, through ``sam_step``.

Every integration takes its SAM step with :func:`flatrl.optim.sam_step`, so this is the one place
where "rho = 0 is a control arm" is proven for all of them: a zero-radius SAM update must leave
no trace besides its cost. Against the plain base optimizer run on the same batches we check,
after several updates, the parameters, the BatchNorm running statistics and counter, the
random stream (the next draw), and that the reported sharpness is 0. The matrix covers the
models that can break it (dropout: replayed draws; BatchNorm: statistics updated twice; an
ensemble: several modules) times every SAM option. The last test runs the same check with
rho = 0.05 and requires it to fail, so the law test cannot pass vacuously.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from flatrl.optim import SAM, SAMConfig, sam_step
from flatrl.runtime import TorchRNG
from torch import Tensor, nn

torch.set_num_threads(1)
DTYPE = torch.float64  # so that rho = 1e-9 really moves the weights
STEPS = 5
TOL = 1e-6


def mlp(*middle: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 12), *middle, nn.ReLU(), nn.Linear(12, 2)).to(DTYPE)


def ensemble() -> nn.ModuleList:
    return nn.ModuleList(mlp() for _ in range(3))


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,
    "dropout": lambda: mlp(nn.Dropout(0.3)),
    "batchnorm": lambda: mlp(nn.BatchNorm1d(12)),
    "ensemble": ensemble,
    "linear": lambda: nn.Linear(4, 2).to(DTYPE),  # convex least squares: only for the sanity test
}


def forward(model: nn.Module, x: Tensor) -> Tensor:
    if isinstance(model, nn.ModuleList):
        return torch.stack([member(x) for member in model])  # mean loss over members below
    return model(x)


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((forward(model, x) - y) ** 2).mean()


def scope_of(model: nn.Module) -> nn.Module:
    """A sub-module to perturb: the first layer, or the ensemble's first member."""
    return model[0]


_g = torch.Generator().manual_seed(1)
BATCHES = [
    (torch.randn(16, 4, generator=_g, dtype=DTYPE), torch.randn(16, 2, generator=_g, dtype=DTYPE))
    for _ in range(STEPS)
]


@dataclass
class Run:
    """What a run leaves behind: the model (weights and buffers), sharpness, the next draw."""

    model: nn.Module
    sharpness: list[float]
    next_draw: Tensor


def base_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2)
    return torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)


def train(
    initial: nn.Module, base: str, clip: float | None, sam: SAMConfig | None, scoped: bool
) -> Run:
    """STEPS updates the way the integrations write them; ``sam=None``: the plain base."""
    model = copy.deepcopy(initial).train()
    opt = base_optimizer(base, model)
    if sam is not None:
        opt = SAM.from_config(opt, sam, scope=scope_of(model) if scoped else None)
    sharpness: list[float] = []
    torch.manual_seed(123)
    for x, y in BATCHES:
        rng = TorchRNG()  # before the first pass, as sam_step requires
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        if sam is None:
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            continue
        was_sam_step = opt.is_sam_step
        sam_step(opt, loss, lambda x=x, y=y: loss_fn(model, x, y), rng=rng, modules=[model])
        if was_sam_step:
            sharpness.append(opt.last_sharpness)
    return Run(model, sharpness, torch.rand(8, dtype=DTYPE))


def assert_law(sam_run: Run, plain: Run) -> None:
    """SAM left exactly the base optimizer's trace (up to TOL)."""
    assert sam_run.sharpness, "no SAM step was taken"
    assert all(s is not None and abs(s) < TOL for s in sam_run.sharpness), sam_run.sharpness
    for (name, a), b in zip(
        sam_run.model.named_parameters(), plain.model.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=f"parameter {name}")
    for (name, a), b in zip(sam_run.model.named_buffers(), plain.model.buffers(), strict=True):
        # running_mean / running_var within TOL; num_batches_tracked (an integer) exactly
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=f"buffer {name}")
    assert torch.equal(sam_run.next_draw, plain.next_draw), "the random stream diverged"


@dataclass
class Case:
    """One model's initial weights (built once) and its plain runs (cached per base/clip)."""

    name: str
    initial: nn.Module
    plain: dict[tuple[str, float | None], Run]

    def plain_run(self, base: str, clip: float | None) -> Run:
        key = (base, clip)
        if key not in self.plain:
            self.plain[key] = train(self.initial, base, clip, sam=None, scoped=False)
        return self.plain[key]


@pytest.fixture(scope="module", params=["mlp", "dropout", "batchnorm", "ensemble"])
def case(request: pytest.FixtureRequest) -> Case:
    torch.manual_seed(0)
    return Case(request.param, BUILDERS[request.param](), {})


OPTIONS = list(
    itertools.product(["adam", "sgd"], [1, 3], [False, True], [False, True], [None, 0.5])
)


@pytest.mark.parametrize("rho", [0.0, 1e-9])
@pytest.mark.parametrize(
    ("base", "every_k", "adaptive", "scoped", "clip"),
    OPTIONS,
    ids=[
        f"{b}-k{k}-{'asam' if a else 'sam'}-{'scoped' if s else 'all'}-clip{c}"
        for b, k, a, s, c in OPTIONS
    ],
)
def test_zero_radius_sam_is_the_base_optimizer(
    case: Case,
    rho: float,
    base: str,
    every_k: int,
    adaptive: bool,
    scoped: bool,
    clip: float | None,
) -> None:
    config = SAMConfig(rho=rho, adaptive=adaptive, every_k=every_k, clip_grad_norm=clip)
    sam_run = train(case.initial, base, clip, config, scoped)
    assert len(sam_run.sharpness) == len(range(0, STEPS, every_k))
    assert_law(sam_run, case.plain_run(base, clip))


@pytest.mark.parametrize("model", ["linear", "mlp", "dropout", "batchnorm"])
def test_a_real_radius_breaks_the_law(model: str) -> None:
    """rho = 0.05: positive sharpness on a convex problem, and the law check above fails."""
    torch.manual_seed(0)
    initial = BUILDERS[model]()
    config = SAMConfig(rho=0.05)
    sam_run = train(initial, "adam", None, config, scoped=False)
    plain = train(initial, "adam", None, None, scoped=False)
    if model == "linear":  # convex: L(w + e) - L(w) >= g.e = rho * ||g|| > 0
        assert all(s > 1e-4 for s in sam_run.sharpness), sam_run.sharpness
    with pytest.raises(AssertionError):
        assert_law(sam_run, plain)
    gap = max(
        (a - b).abs().max().item()
        for a, b in zip(sam_run.model.parameters(), plain.model.parameters(), strict=True)
    )
    assert gap > 1e-4
