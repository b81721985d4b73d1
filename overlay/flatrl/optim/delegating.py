"""The plumbing of an optimizer object that is a view over other optimizers.

:class:`flatrl.optim.SAM` wraps one base optimizer and :class:`flatrl.optim.CompositeOptimizer`
several children. Neither owns parameters or state: both must look like one ordinary torch
optimizer to LR schedulers, momentum schedules, d3rlpy and TD-MPC2, while every read and write
lands in the optimizers they wrap. That shared part lives here once:

* ``param_groups`` holds the wrapped optimizers' group dicts themselves (no copies), so editing a
  group's ``lr`` edits the optimizer that applies it;
* ``state`` reads and assigns the wrapped optimizers' per-parameter state;
* ``zero_grad`` and ``add_param_group`` are passed on;
* pickling and deep copies keep the wrapped optimizers (torch's ``Optimizer.__getstate__``
  would keep only defaults, state and param_groups).
"""

from __future__ import annotations

import collections
from typing import Any, ClassVar

import torch


class DelegatingOptimizer(torch.optim.Optimizer):
    """Base of an optimizer that presents the groups and state of the optimizers it wraps.

    A subclass sets whatever :meth:`_wrapped` reads, then calls ``super().__init__(defaults)``;
    a composite also says in :meth:`_route_param_group` which child takes a new group.
    """

    #: True for a wrapper of exactly one optimizer (SAM): ``param_groups`` and ``state`` are then
    #: that optimizer's own list and dict. False for a composite: ``param_groups`` is a list of
    #: the children's group dicts, ``state`` a merged view whose entries are the children's.
    _wraps_one: ClassVar[bool] = False

    def __init__(self, defaults: dict[str, Any]) -> None:
        # Until this flag is set, add_param_group and the state setter behave as torch's, so that
        # Optimizer.__init__ registers the wrapped groups (the same dict objects) and its
        # assignment of an empty state does not wipe the wrapped optimizers' state.
        self._initialised = False
        super().__init__([g for opt in self._wrapped() for g in opt.param_groups], defaults)
        self._sync_groups()
        self._initialised = True

    def _wrapped(self) -> list[torch.optim.Optimizer]:
        """The optimizers this one presents, in order."""
        raise NotImplementedError

    def _route_param_group(self, param_group: dict[str, Any]) -> None:
        """Give a new group to the wrapped optimizer that must hold it."""
        if not self._wraps_one:
            raise NotImplementedError
        self._wrapped()[0].add_param_group(param_group)

    def _sync_groups(self) -> None:
        """Show the wrapped optimizers' current groups (after a load or an added group)."""
        if self._wraps_one:
            # The very same list object, so a scheduler attached to either side sees one truth.
            self.param_groups = self._wrapped()[0].param_groups
        else:
            # Keep the list object (a SAM around this optimizer shares it), refresh its content.
            self.param_groups[:] = [g for opt in self._wrapped() for g in opt.param_groups]

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The wrapped optimizers' per-parameter state (see ``_wraps_one``)."""
        if self._wraps_one:
            return self._wrapped()[0].state
        return {p: s for opt in self._wrapped() for p, s in opt.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        # A later assignment (e.g. d3rlpy's reset_optimizer_states with an empty defaultdict) is
        # the wrapped optimizers': a composite gives each child the entries of its own
        # parameters, in a fresh defaultdict.
        if not self.__dict__.get("_initialised", False):
            return
        if self._wraps_one:
            self._wrapped()[0].state = value
            return
        for opt in self._wrapped():
            own = {p for group in opt.param_groups for p in group["params"]}
            opt.state = collections.defaultdict(
                dict, {p: s for p, s in dict(value).items() if p in own}
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of every wrapped optimizer's parameters."""
        for opt in self._wrapped():
            opt.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer that takes it, and show it here too."""
        if not self.__dict__.get("_initialised", False):
            super().add_param_group(param_group)
            return
        self._route_param_group(param_group)
        self._sync_groups()

    def __getstate__(self) -> dict[str, Any]:
        """Everything, so that pickling or deep-copying keeps the wrapped optimizer(s)."""
        return self.__dict__.copy()
