"""optimizer=Muon in the patched TD-MPC2 covers the stacked Q ensemble (issue 13).

The Q ensemble stores each layer as one ``(num_q, out, in)`` tensor; its hidden layer goes to
Muon, each member orthogonalised on its own, and its input/output layers, biases and norm scales
stay on Adam. Checked on the real agent of the patched tree, in a child process (TD-MPC2 imports
its modules by top-level names).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tdmpc2_support import child_env

pytestmark = pytest.mark.tdmpc2

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[2])
    from probe import batches, make_agent
    from flatrl.optim import Muon
    from flatrl.optim.muon import adjusted_lr, newton_schulz
    from flatrl.tdmpc2.optimizers import describe

    torch.set_num_threads(1)
    agent = make_agent(sys.argv[1], {"optimizer": "Muon"})
    qs = agent.model._Qs
    names = {id(p): n for n, p in qs.named_parameters()}
    kinds = {}
    for opt in agent.optim.optimizers:
        for g in opt.param_groups:
            for p in g["params"]:
                if id(p) in names:
                    kinds[names[id(p)]] = type(opt).__name__
    hidden = qs.params["1", "weight"]
    muon = next(o for o in agent.optim.optimizers if isinstance(o, Muon))
    # The Q heads' last layer starts at zero, so the hidden layer's first gradient is zero:
    # check the second update.
    first, second = batches(agent.cfg, 2)
    agent._update(*first)
    before = hidden.detach().clone()
    buf_before = muon.state[hidden]["momentum_buffer"].clone()
    info = agent._update(*second)
    # The Muon step of a stacked weight is -lr * scale * NS(update of the member), each member
    # orthogonalised on its own: recompute it member by member with the 2-D iteration.
    group = next(g for g in muon.param_groups if any(p is hidden for p in g["params"]))
    scale = adjusted_lr(group["lr"], group["adjust_lr_fn"], hidden.shape[-2:])
    step = (before - hidden.detach()) / scale
    # buf = momentum * buf_before + (1 - momentum) * grad (the update frees grad)
    buf, momentum = muon.state[hidden]["momentum_buffer"], group["momentum"]
    grad = (buf - momentum * buf_before) / (1 - momentum)
    update = grad.lerp(buf, momentum) if group["nesterov"] else buf
    args = (group["ns_coefficients"], group["ns_steps"], group["eps"], torch.float32)
    expected = torch.stack([newton_schulz(m, *args) for m in update])
    err = (step - expected).abs().max().item()
    out = {
        "kinds": kinds,
        "describe": describe(agent.optim, agent.pi_optim),
        "num_q": len(qs),
        "err": err,
        "step_size": expected.abs().max().item(),
        "loss": float(info["total_loss"]),
    }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def routed(tree: Path) -> dict:
    here = Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(here)],
        cwd=tree,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_q_ensemble_hidden_layer_goes_to_muon_the_rest_to_adam(routed: dict) -> None:
    kinds = routed["kinds"]
    assert kinds.pop("params.1.weight") == "Muon"
    assert kinds  # biases, norms, the input and output layers
    assert set(kinds.values()) == {"Adam"}, kinds
    assert {"params.0.weight", "params.2.weight", "params.1.bias"} <= set(kinds)
    assert routed["describe"] == (
        "world model: Muon (1 stacked ensemble weight) + Adam; policy: Adam"
    )


def test_each_q_member_gets_its_own_orthogonalised_step(routed: dict) -> None:
    assert routed["loss"] == routed["loss"]  # finite, not NaN
    assert routed["num_q"] >= 2 and routed["step_size"] > 1e-3
    assert routed["err"] < 1e-5, routed
