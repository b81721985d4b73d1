"""Several optimizers driven as one, e.g. ``torch.optim.Muon`` for hidden matrices plus Adam.

Muon only accepts 2-D parameters, so a network always needs a second optimizer for biases,
norms, embeddings and input/output layers. Training loops (and SAM) expect a single optimizer
object, so this class presents both as one: one ``param_groups`` list holding every child's
group dicts (the same dict objects, so LR schedulers and momentum schedules that edit a group
edit the child), and one ``step``/``zero_grad``/``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flatrl.optim.delegating import DelegatingOptimizer


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The tag written into each group's ``"optimizer_kind"``: the class name in lower case."""
    return type(optimizer).__name__.lower()


class CompositeOptimizer(DelegatingOptimizer):
    """Step several optimizers over disjoint parameters as if they were one.

    Every child group gets an ``"optimizer_kind"`` entry (``"muon"``, ``"adam"``, ``"adamw"``,
    ...) unless it already has one, so code that walks ``param_groups`` can tell them apart.
    ``state`` is a merged view of the children's state; assigning it gives each child the
    entries of its own parameters (see :class:`flatrl.optim.delegating.DelegatingOptimizer`).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        optimizers = list(optimizers)
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer.")
        for opt in optimizers:
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"CompositeOptimizer takes torch.optim.Optimizer instances, got {opt!r}."
                )
            for group in opt.param_groups:
                group.setdefault("optimizer_kind", optimizer_kind(opt))
        self.optimizers = optimizers
        # Optimizer.__init__ (through the base) validates that no parameter appears twice
        # across the children.
        super().__init__({})

    def _wrapped(self) -> list[torch.optim.Optimizer]:
        return self.optimizers

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` (if any) once, then step every child optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def _route_param_group(self, param_group: dict[str, Any]) -> None:
        """A new group goes to the child whose kind matches ``param_group["optimizer_kind"]``."""
        kinds = [optimizer_kind(opt) for opt in self.optimizers]
        kind = param_group.get("optimizer_kind")
        if kind is None and len(self.optimizers) == 1:
            kind = kinds[0]
        if kind not in kinds:
            raise ValueError(
                "CompositeOptimizer.add_param_group needs param_group['optimizer_kind'] set to "
                f"one of {kinds} to know which optimizer gets the group; got {kind!r}."
            )
        self.optimizers[kinds.index(kind)].add_param_group(dict(param_group, optimizer_kind=kind))

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """One entry per child, in order, plus the kinds to check against on load."""
        return {
            "kinds": [optimizer_kind(opt) for opt in self.optimizers],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load every child's state; the children must be of the same kinds, in the same order."""
        kinds = [optimizer_kind(opt) for opt in self.optimizers]
        if state_dict.get("kinds") != kinds or len(state_dict.get("optimizers", ())) != len(kinds):
            raise ValueError(
                f"CompositeOptimizer state dict is for optimizers {state_dict.get('kinds')}, "
                f"but this one has {kinds}; build the optimizer with the same settings."
            )
        for opt, sd in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(sd)
        self._sync_groups()

    def __repr__(self) -> str:
        inner = ", ".join(repr(opt) for opt in self.optimizers)
        return f"CompositeOptimizer([{inner}])"
