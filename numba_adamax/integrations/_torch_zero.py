"""``ZeroAdamax``: torch's ``ZeroRedundancyOptimizer`` whose local optimizer is this
package's Adamax, with the decisions that need every rank's gradients taken across
the process group.

Under plain ``ZeroRedundancyOptimizer(..., optimizer_class=Adamax)`` each rank steps
its own shard and sees only its own gradients. Here each rank's local optimizer (an Adamax
with ``ShardSteps`` mixed in, made in ``numba_adamax.integrations.torch``, which this
module does not import) runs one collective vote per ``step()`` before anything changes:

* whether any rank has a gradient in each parameter group (a group's call counts on
  every rank then, also where the rank's own parameters got none, so the step
  counters never diverge);
* whether any rank found a NaN/inf gradient (``nonfinite="skip"`` skips on every
  rank, ``"raise"`` raises the same ``FloatingPointError`` on every rank);
* whether any rank failed its checks (every rank then raises, none changes);

and, on an update with ``global_clipnorm``, one all-reduce of the per-parameter
float64 squared norms indexed by global parameter position (exact: one non-zero
contribution per entry), added in parameter order as one process adds them.
"""
import functools

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from .. import _apply

__all__ = ["ShardSteps", "ZeroAdamax"]

#: Encodes "the first bad parameter has global index i" as ``_BIG - i`` so that one
#: MAX all-reduce finds the smallest index.
_BIG = 2 ** 62


class ZeroAdamax(ZeroRedundancyOptimizer):
    """``ZeroRedundancyOptimizer`` over ``numba_adamax.integrations.torch.Adamax`` with
    group-wide ``global_clipnorm``, ``nonfinite`` and step counters.

    Args:
        params: as for ``ZeroRedundancyOptimizer`` (tensors or parameter groups).
        process_group: the group the optimizer state is sharded over (default: the
            world group); every collective of ``step()`` runs on it.
        parameters_as_bucket_view: as for ``ZeroRedundancyOptimizer``.
        **options: ``Adamax`` options (``lr``, ``betas``, ``global_clipnorm``,
            ``nonfinite``, ``flat``, ...), which become every group's defaults.

    ``step()`` must be called on every rank of the group, like any
    ``ZeroRedundancyOptimizer`` step. ``global_clipnorm`` clips by the norm of the
    whole group's gradients, as one process would; ``nonfinite="skip"`` skips the
    call on every rank when any rank's gradient holds NaN or inf, and ``"raise"``
    raises on every rank, naming the first such parameter by its global position;
    a group's call counts on every rank when any rank has a gradient in it. A
    check failing on one rank (a bad gradient or option) makes every rank raise
    before any of them changes. ``consolidate_state_dict``, ``state_dict`` and
    ``load_state_dict`` are ``ZeroRedundancyOptimizer``'s. ``overlap_with_ddp`` is
    not supported (it needs one of torch's functional optimizers).
    """

    #: The local optimizer class (Adamax with ``ShardSteps``), set by
    #: ``numba_adamax.integrations.torch``.
    local_optimizer_class = None

    def __init__(self, params, process_group=None, *, parameters_as_bucket_view=False,
                 **options):
        for key in ("optimizer_class", "overlap_with_ddp"):
            if key in options:
                raise TypeError(f"ZeroAdamax() got an unexpected keyword argument {key!r}: "
                                "the local optimizer is always numba_adamax's Adamax, "
                                "stepped without overlap.")
        local = functools.partial(self.local_optimizer_class, zero=self)
        super().__init__(params, optimizer_class=local,
                         process_group=process_group,
                         parameters_as_bucket_view=parameters_as_bucket_view, **options)


    def consolidate_state_dict(self, to=0):
        """Gather every rank's shard of the optimizer state on rank ``to`` (all ranks
        must call it), after which ``state_dict()`` works there; ``to=None`` gathers
        it on every rank (one round per rank), as ``torch.distributed.checkpoint``'s
        ``get_state_dict`` needs, which calls ``state_dict()`` everywhere."""
        if to is not None:
            super().consolidate_state_dict(to=to)
            return
        mine = []
        for target in range(self.world_size):
            super().consolidate_state_dict(to=target)
            if target == self.rank:
                mine = self._all_state_dicts
        self._all_state_dicts = mine

    def load_state_dict(self, state_dict):
        """``ZeroRedundancyOptimizer.load_state_dict``, with any hashable parameter ids
        matched by position (``torch.distributed.checkpoint`` passes parameter names).
        Loads this rank's shard into its local optimizer (checked there before it
        changes) and the group options everywhere. ``state_dict`` is not modified."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "ZeroAdamax.state_dict() returns.")
        positions, groups = {}, []
        for group in state_dict["param_groups"]:
            start = len(positions)
            for pid in group["params"]:
                positions.setdefault(pid, len(positions))
            groups.append({**group, "params": list(range(start, len(positions)))})
        state = {positions.get(key, key): value for key, value in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state, "param_groups": groups})


class ShardSteps:
    """Mixed into ``Adamax`` (before it) to make the local optimizer of a
    ``ZeroAdamax``: an Adamax over this rank's shard whose ``step()`` takes its
    decisions with the other ranks (see the module)."""

    def __init__(self, params, *, zero, **options):
        self._zero = zero
        super().__init__(params, **options)

    def _adopted(self, binding):
        binding.state.backend = _GlobalNorm(binding.state.backend, self, binding)

    def step(self, closure=None):
        """One collective optimizer call over this rank's shard (see ``ZeroAdamax``).
        Mutates the shard's parameters, slots and counters, or nothing when any rank
        raises."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        count = len(self.param_groups)
        local = np.zeros(3 * count + 1, np.int64)
        plans, calls, failure = [], {}, None
        try:
            plans = self._plans()
            for g, plan in enumerate(plans):
                if plan is None:
                    continue
                local[2 * count + g] = plan.binding.state.raw_steps
                if plan.grads is None:
                    continue
                local[g] = 1
                try:
                    calls[g] = self._prepare(plan)
                except FloatingPointError:
                    bad, _ = _apply._first_nonfinite(plan.state, plan.grads, None)
                    local[count + g] = _BIG - self._global_index(plan.binding.params[bad])
                    continue
                if calls[g].skipped:
                    local[count + g] = 1
        except Exception as exc:  # noqa: BLE001 (any failure: every rank must learn of it)
            failure = exc
            local[3 * count] = 1
        agreed = self._all_reduce(local, dist.ReduceOp.MAX)
        if failure is not None:
            raise failure
        if agreed[3 * count]:
            raise RuntimeError("ZeroAdamax.step() failed on another rank of the process "
                               "group; nothing was changed on any rank.")
        for g, group in enumerate(self.param_groups):
            if group["nonfinite"] == "raise" and agreed[count + g]:
                raise FloatingPointError(
                    f"The gradient of {self._zero_label(_BIG - int(agreed[count + g]))} holds "
                    "NaN or inf on some rank (nonfinite='raise'); nothing was changed on "
                    "any rank.")
        # Every rank now takes the same decisions; from here on the call is committed.
        for plan in plans:
            if plan is not None:
                self._install(plan)
        for g, (group, plan) in enumerate(zip(self.param_groups, plans)):
            if not agreed[g]:
                continue
            skipped = bool(agreed[count + g])
            call = calls.get(g)
            if plan is not None and call is None:
                call = _empty_call(plan, skipped)
            if call is not None:
                call.skipped = call.skipped or skipped
                self._commit(plan, call)
            elif not skipped and group["global_clipnorm"] is not None and _apply.is_update_call(
                    int(agreed[2 * count + g]), group["gradient_accumulation_steps"]):
                self._global_square_sum(None, None, None)  # this rank holds none of it
        return loss

    # ------------------------------------------------------------ collectives

    def _all_reduce(self, values, op):
        """``values`` (a NumPy array) reduced with ``op`` over the process group; a new
        array."""
        tensor = torch.from_numpy(values.copy()).to(self._zero._default_device)
        dist.all_reduce(tensor, op=op, group=self._zero.process_group)
        return tensor.cpu().numpy()

    def _global_square_sum(self, binding, state, sums):
        """The squared norm of a whole parameter group's gradients over every rank:
        this rank's per-variable ``sums`` (None: none) placed at their global positions,
        summed over the process group, then added in parameter order, as one process
        adds them (``ZeroRedundancyOptimizer`` holds one dtype, so one process has one
        dtype group)."""
        vector = np.zeros(len(self._zero._all_params))
        if binding is not None:
            for group, group_sums in zip(state.groups, sums):
                for position, i in enumerate(group.indices):
                    vector[self._global_index(binding.params[i])] = group_sums[position]
        total = 0.0
        for value in self._all_reduce(vector, dist.ReduceOp.SUM):
            total += float(value)
        return total

    def _global_index(self, param):
        return self._zero._param_to_index[param]

    def _zero_label(self, index):
        """How messages name the parameter at global position ``index``."""
        start = 0
        for g, group in enumerate(self._zero.param_groups):
            if index < start + len(group["params"]):
                k = index - start
                if "param_names" in group:
                    return f"parameter {group['param_names'][k]!r}"
                return f"param_groups[{g}]['params'][{k}]"
            start += len(group["params"])
        return f"parameter {index}"


class _GlobalNorm:
    """A state's backend whose ``global_clipnorm`` tables use the norm over the whole
    process group (every other driver function is the wrapped backend's)."""

    def __init__(self, backend, shard, binding):
        self._backend, self._shard, self._binding = backend, shard, binding

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def clip_tables(self, state, sums, settings):
        if settings.clipnorm:  # per-variable clipping needs no other rank
            return self._backend.clip_tables(state, sums, settings)
        total = self._shard._global_square_sum(self._binding, state, sums)
        # A global clip factor depends on the total alone: hand the backend sums whose
        # total is exactly the group-wide one.
        spread = [np.zeros_like(group_sums) for group_sums in sums]
        spread[0][0] = total
        return self._backend.clip_tables(state, spread, settings)


def _empty_call(plan, skipped):
    """The call of a group none of whose parameters on this rank has a gradient while
    another rank's have: it counts, and moves only what a call without gradients
    moves (the EMA), as on one process."""
    state, hp = plan.state, plan.hyperparameters
    learning_rate = None
    if not skipped and _apply.is_update_call(state.raw_steps, hp.gradient_accumulation_steps):
        learning_rate = hp.learning_rate_at(state.raw_steps)
    return _apply.Call(state, [None] * len(state.params), hp, learning_rate, skipped)
