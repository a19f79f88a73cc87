"""The sharded state and its step: reduce the gradients, agree, update this rank's
part, publish the parameters.

``ShardedState`` keeps the replicated part of the optimizer (the variables, names,
counters, weight-decay mask, hyperparameters) and, in ``local``, an ordinary
``AdamaxState`` over this rank's pieces of the variables (``_plan``): 1-D views of
the parts of split variables, and whole variables as they are. With ``zero_stage=0``
the pieces are every variable whole; with ``zero_stage=1`` they are this rank's shard,
so its slots are about 1/N of the total. The update itself is the single-process
``_apply.commit`` on ``local``; only the norms for clipping by norm are computed over
the whole group (``_exchange_norms``), from every rank's per-chunk partials folded in
the single-process order.

A call (``prepare`` then ``run``) is collective:

1. every rank checks its arguments; the outcome, the None/sparse pattern, a digest of
   the settings in force and the plan are agreed, and any failure raises on every rank
   before anything changes;
2. per dtype group the dense gradients are summed: reduce-scatter (stage 1) or
   allreduce (stage 0), or with ``deterministic`` an all-to-all of the pieces folded
   in rank order; ``reduce="mean"`` then divides by N. Sparse gradients go to the
   variable's owner (stage 1) or to every rank (stage 0), concatenated in rank order;
3. the ``nonfinite`` verdict is agreed on the reduced gradient (the first bad
   variable in the single-process order) and the learning rate computed (a callable's
   value must agree);
4. ``local`` is updated; with stage 1 the dense variables are all-gathered and the
   owners of sparse variables broadcast the rows they changed.
"""
import warnings

import numpy as np

from .. import _apply, _state, backends
from .. import _validation as check
from .._flat_buffer import FlatBuffer
from .._indexed_slices import IndexedSlices
from ..functional import match
from ._buffers import host_copy, upload, write_host
from ._collective import settings_differ, settings_digest, together, together_sharing
from ._comm import allgather_concat
from ._plan import ShardPlan, sparse_indices

_NONE, _DENSE, _SPARSE = 0, 1, 2


class ShardedState:
    """The record the distributed ``init``/``step`` share (see the module docstring).

    Attributes: ``comm``, ``zero_stage``, ``reduce``, ``deterministic``,
    ``hyperparameters``, ``params``/``arrays`` (the replicated variables), ``names``,
    ``buffer`` (the ``FlatBuffer`` given, or None), ``plan`` (the ``ShardPlan`` over
    ``comm.size`` ranks), ``pieces`` (this rank's ``PlanPiece`` list), ``local`` (the
    ``AdamaxState`` over the pieces, None when this rank holds none), ``raw_steps``,
    ``skipped_steps``, ``weight_decay_mask``.
    """

    def __init__(self, comm, params, names, hyperparameters, *, zero_stage, reduce,
                 deterministic, sparse_variables=None):
        arrays, names, buffer = _state.variables(params, names)
        backend = backends.for_arrays(arrays)
        self.device = backend.device
        if self.device is not None and sparse_variables:
            raise TypeError("Sparse variables (`sparse_variables`, or IndexedSlices gradients "
                            "at the first apply) need numpy variables: the sharded "
                            "optimizer takes dense gradients only for device variables.")
        self.comm = comm
        self.space = comm.exchange_buffers(self.device is not None)
        self.zero_stage, self.reduce, self.deterministic = zero_stage, reduce, deterministic
        self.hyperparameters = hp = hyperparameters
        self.params = tuple(arrays)
        self.arrays = tuple(backend.device_arrays(self.params))
        self.names = tuple(names)
        self.buffer = buffer
        self.stream = None
        self.name_index = {n: i for i, n in enumerate(self.names)}
        self._index = {id(p): i for i, p in enumerate(self.params)}
        sparse = sparse_indices(sparse_variables, self.names)
        for i in sparse:
            if self.arrays[i].ndim == 0:
                raise ValueError(f"`sparse_variables` names {self.names[i]!r}, a 0-d variable; "
                                 "sparse gradients need a variable with rows")
        shapes = [a.shape for a in self.arrays]
        dtypes = [a.dtype for a in self.arrays]
        self.plan = ShardPlan(shapes, dtypes, comm.size, sparse)
        own = self.plan if zero_stage == 1 else ShardPlan(shapes, dtypes, 1, sparse)
        self.pieces = own.pieces(comm.rank if zero_stage == 1 else 0)
        self.raw_steps = 0
        self.skipped_steps = 0
        self.weight_decay_mask = [True] * len(self.params)
        if zero_stage == 1:
            self._ranges = [(int(g.cuts[comm.rank]), int(g.cuts[comm.rank + 1]))
                            for g in self.plan.groups]
        else:
            self._ranges = [(0, g.comm_total) for g in self.plan.groups]
        self.local = self._local_state(hp) if self.pieces else None
        self._kinds = None  # the gradient pattern of the call in progress
        self._digest_of = (None, -1)  # the settings object and revision ``_digest`` is of
        self._digest = None

    # ------------------------------------------------------------ construction

    def _local_state(self, hp):
        """The ``AdamaxState`` over this rank's pieces (views of the variables)."""
        arrays, names = [], []
        for p in self.pieces:
            a = self.arrays[p.variable]
            if p.whole:
                arrays.append(a)
                names.append(self.names[p.variable])
            else:
                arrays.append(a.reshape(-1)[p.begin:p.end])
                names.append(f"{self.names[p.variable]}[{p.begin}:{p.end}]")
        local = _state.AdamaxState(arrays, names, hp)
        # per local group: which of its chunks belong to dense pieces, and the global
        # group each local group is
        self._local_group = [next(g.position for g in self.plan.groups if g.dtype == lg.dtype)
                             for lg in local.groups]
        self._dense_chunk = [
            np.array([self.pieces[lg.indices[k]].variable not in self.plan.sparse
                      for k in lg.chunks[:, 0]], dtype=bool)
            for lg in local.groups]
        return local

    # ------------------------------------------------------------ counters and lookup

    @property
    def iterations(self):
        """Completed updates, as ``AdamaxState.iterations``."""
        steps = self.hyperparameters.gradient_accumulation_steps
        return self.raw_steps // steps if steps else self.raw_steps

    @property
    def bias_correction_step(self):
        return self.iterations + 1

    index_of = _state.AdamaxState.index_of

    def variable_index(self, variable):
        """The index of ``variable`` (an array of the state, or its name)."""
        if isinstance(variable, str):
            if variable not in self.name_index:
                raise ValueError(f"Unknown variable name {variable!r}.")
            return self.name_index[variable]
        return self.index_of(variable)

    def slot_names(self):
        hp = self.hyperparameters
        return _state.slot_names(hp.use_ema, hp.gradient_accumulation_steps is not None)

    @property
    def local_nbytes(self):
        """Bytes of slot buffers this rank holds."""
        if self.local is None:
            return 0
        return sum(buf.nbytes for g in self.local.groups
                   for buf in (g.m, g.u, g.ema, g.accumulator) if buf is not None)

    def local_slot(self, i, slot_name):
        """This rank's piece of slot ``slot_name`` of variable ``i`` (shaped like the
        variable when the piece is whole, else 1-D), or None when it holds none."""
        self._check_slot(slot_name)
        for j, p in enumerate(self.pieces):
            if p.variable == i:
                return self.local.slot(j, slot_name)
        return None

    def _check_slot(self, slot_name):
        names = self.slot_names() + ["v"]
        if slot_name not in names:
            raise ValueError(f"Unknown slot name {slot_name!r}; this configuration has "
                             f"{self.slot_names()} (or 'v' for 'u').")

    def gather_slot(self, i, slot_name):
        """The whole slot ``slot_name`` of variable ``i`` on every rank, a new array
        shaped like the variable (collective). Mutates nothing."""
        var = self.arrays[i]
        out = np.empty(var.size, check.slot_dtype(var.dtype))
        mine = self.local_slot(i, slot_name)
        if not var.size:
            return out.reshape(var.shape)
        if self.zero_stage == 0:
            out[:] = host_copy(mine).reshape(-1)
            return out.reshape(var.shape)
        counts = self._holdings(i)
        for p in self.pieces:
            if p.variable == i:
                out[p.begin:p.end] = host_copy(mine).reshape(-1)
        self.comm.allgatherv_(out, counts)
        return out.reshape(var.shape)

    def _holdings(self, i):
        """Elements of variable ``i`` each rank holds (its pieces are in rank order)."""
        counts = [0] * self.comm.size
        size = self.arrays[i].size
        if i in self.plan.sparse:
            counts[self.plan.sparse_owner[i]] = size
            return counts
        g, k = self.plan.location[i]
        group = self.plan.groups[g]
        lo = group.comm_offsets[k]
        for r in range(self.comm.size):
            counts[r] = max(0, min(int(group.cuts[r + 1]), lo + size) - max(int(group.cuts[r]),
                                                                            lo))
        return counts

    # ------------------------------------------------------------ weight decay

    set_weight_decay_exclusions = _state.AdamaxState.set_weight_decay_exclusions

    def set_weight_decay_mask(self, mask):
        """Set the mask (one bool per variable) and this rank's pieces' flags; a changed
        mask makes the next call compute its settings digest afresh."""
        mask = [bool(m) for m in mask]
        if mask != self.weight_decay_mask:
            self._digest_of = (None, -1)
        self.weight_decay_mask = mask
        if self.local is not None:
            self.local.set_weight_decay_mask([self.weight_decay_mask[p.variable]
                                              for p in self.pieces])

    # ------------------------------------------------------------ a call

    def prepare(self, grads, variables=None, *, argument="variables", in_order=False):
        """Check one call's arguments on every rank and agree on them (collective);
        returns the per-variable gradients (or the ``FlatBuffer``) and their pattern.
        Raises the same ``TypeError``/``ValueError`` on every rank when any rank's
        arguments are wrong, when the ranks' settings differ (the digest of each rank's
        settings travels in the same exchange), or when the ranks' gradient patterns
        differ. Mutates nothing."""
        (grads, kinds), shared = together_sharing(
            self.comm, self._check_call, lambda checked: (checked[1], self.settings_digest()),
            grads, variables, argument, in_order)
        if any(digest != shared[0][1] for _, digest in shared):
            raise settings_differ(self.comm, self.hyperparameters, self._excluded())
        patterns = [pattern for pattern, _ in shared]
        if any(p != kinds for p in patterns):
            def describe(p):
                return {self.names[i]: ("None", "dense", "IndexedSlices")[k]
                        for i, k in enumerate(p) if k != _DENSE}
            raise ValueError("The ranks' gradients differ in which variables have none or a "
                             "sparse one; every rank must pass the same pattern. Per rank "
                             f"(variables not dense): {[describe(p) for p in patterns]}")
        return grads, kinds

    def settings_digest(self) -> str:
        """The digest of the settings in force and the weight-decay exclusions,
        recomputed only when the settings object or its ``revision`` changed since the
        last call, or the exclusions were set again; caches it."""
        hp = self.hyperparameters
        cached_hp, revision = self._digest_of
        if cached_hp is not hp or revision != hp.revision:
            self._digest = settings_digest(hp, self._excluded())
            self._digest_of = (hp, hp.revision)
        return self._digest

    def _excluded(self):
        """The names of the variables excluded from weight decay."""
        return [n for n, decays in zip(self.names, self.weight_decay_mask) if not decays]

    def _check_call(self, grads, variables, argument, in_order):
        grads, _ = match(self, grads, variables, argument=argument, in_order=in_order)
        if type(grads) is FlatBuffer:
            return grads, (_DENSE,) * len(self.params)
        missing, grads = check.gradients(grads, self.arrays, self.names)
        if missing:
            warnings.warn("Gradients do not exist for variables "
                          f"{[n for n, g in zip(self.names, grads) if g is None]} when "
                          "minimizing the loss.", UserWarning,
                          stacklevel=_apply._first_frame_outside_package())
        kinds = tuple(_NONE if g is None else _SPARSE if type(g) is IndexedSlices else _DENSE
                      for g in grads)
        for i, kind in enumerate(kinds):
            if kind == _SPARSE and i not in self.plan.sparse:
                raise ValueError(f"The gradient for variable {self.names[i]!r} is an "
                                 "IndexedSlices, but the variable was not built as a sparse "
                                 f"one; pass sparse_variables=[{self.names[i]!r}] to the "
                                 "optimizer (or let the first apply build it) so that one "
                                 "rank owns it whole.")
            if kind == _DENSE and i in self.plan.sparse:
                raise ValueError(f"The gradient for variable {self.names[i]!r} is dense, but "
                                 "the variable was built as a sparse one; pass an "
                                 "IndexedSlices (or None) for it.")
        return grads, kinds

    def run(self, grads, kinds):
        """Run a call ``prepare`` accepted (collective): mutates the variables (on every
        rank), this rank's slots and the counters. Raises ``FloatingPointError`` on every
        rank under ``nonfinite="raise"`` and ``ValueError`` on every rank for a bad or
        disagreeing learning rate, before anything changes."""
        hp = self.hyperparameters
        self._kinds = kinds
        if self.local is not None and self.device is not None:
            self.local.stream = self.space.kernel_stream()
        reduced = self._reduce_dense(grads, kinds)
        rows = self._gather_sparse(grads, kinds)
        local_grads = self._local_gradients(reduced, rows, kinds)
        refs, skipped = None, False
        if hp.nonfinite != "propagate":
            refs, skipped = self._agree_nonfinite(local_grads)
        update = _apply._is_update_step(self, hp)
        learning_rate = None
        if not skipped and update:
            learning_rate = self._agree_learning_rate()
        if skipped:
            self.skipped_steps += 1
            if self.local is not None:
                self.local.skipped_steps = self.skipped_steps
            return
        t = self.bias_correction_step
        overwrite = bool(hp.use_ema and hp.ema_overwrite_frequency
                         and t % hp.ema_overwrite_frequency == 0)
        changed = self._changed_rows(rows, update)
        if self.local is not None:
            self.local.raw_steps, self.local.skipped_steps = self.raw_steps, self.skipped_steps
            call = _apply.Call(self.local, local_grads, hp, learning_rate, False, refs)
            _apply.commit(call, self._exchange_norms if self.zero_stage == 1 else None)
        elif update and (hp.clipnorm or hp.global_clipnorm):
            self._exchange_norms(None, None, {}, None)
        self.raw_steps += 1
        if self.zero_stage == 1 and (update or overwrite):
            self._publish_dense()
            self._publish_sparse(changed, overwrite)

    # ------------------------------------------------------------ reduction

    def _flat_layout(self):
        """True when the variables' ``FlatBuffer`` has the communication layout."""
        return self.buffer is not None and not self.plan.sparse

    def _send_buffer(self, group, grads, kinds):
        """The group's dense gradients in the communication layout (the gradients'
        ``FlatBuffer`` data itself when it has that layout, else a packed copy with
        zeros for the variables without a dense gradient)."""
        if type(grads) is FlatBuffer and self._flat_layout():
            return grads.data
        arrays = grads.arrays if type(grads) is FlatBuffer else grads
        space = self.space
        buf = space.scratch(("send", group.position), group.comm_total, group.dtype)
        end = 0
        for k, i in enumerate(group.indices):
            lo = group.comm_offsets[k]
            if lo > end:
                space.zero(buf[end:lo])
            if i in self.plan.sparse:
                end = lo
                continue
            end = lo + group.sizes[k]
            if kinds[i] == _DENSE:
                space.put(buf[lo:end], arrays[i])
            elif end > lo:
                space.zero(buf[lo:end])
        if group.comm_total > end:
            space.zero(buf[end:])
        return buf

    def _reduce_dense(self, grads, kinds):
        """Per group, this rank's range of the reduced dense gradients (stage 0: the
        whole group)."""
        comm, n, space = self.comm, self.comm.size, self.space
        out = []
        for group, (lo, hi) in zip(self.plan.groups, self._ranges):
            send = self._send_buffer(group, grads, kinds)
            counts = group.counts
            if self.deterministic:
                shard = self._ordered_reduce_scatter(group, send, counts)
                if self.reduce == "mean":
                    space.divide_(shard, n)
                if self.zero_stage == 0:
                    full = space.scratch(("full", group.position), group.comm_total,
                                         group.dtype)
                    r = comm.rank
                    space.assign(full[group.cuts[r]:group.cuts[r + 1]], shard)
                    comm.allgatherv_(full, counts)
                    shard = full
            elif self.zero_stage == 1:
                shard = space.scratch(("recv", group.position), hi - lo, group.dtype)
                comm.reduce_scatter(send, shard, counts)
                if self.reduce == "mean":
                    space.divide_(shard, n)
            else:
                shard = space.scratch(("full", group.position), group.comm_total, group.dtype)
                if shard is not send:
                    space.assign(shard, send)
                comm.allreduce_(shard)
                if self.reduce == "mean":
                    space.divide_(shard, n)
            out.append(shard)
        return out

    def _ordered_reduce_scatter(self, group, send, counts):
        """This rank's block of the sum of every rank's ``send``, added in rank order
        (``r0 + r1 + ...`` in the gradient dtype)."""
        comm, n, space = self.comm, self.comm.size, self.space
        mine = int(counts[comm.rank])
        blocks = space.scratch(("blocks", group.position), n * mine, group.dtype)
        comm.alltoallv(send, counts, blocks, [mine] * n)
        shard = space.scratch(("shard", group.position), mine, group.dtype)
        space.assign(shard, blocks[:mine])
        for q in range(1, n):
            space.add_(shard, blocks[q * mine:(q + 1) * mine])
        return shard

    def _gather_sparse(self, grads, kinds):
        """``{i: IndexedSlices}``: per sparse gradient, every rank's rows concatenated
        in rank order (values divided by N for ``"mean"``), on the variable's owner
        (stage 1) or on every rank (stage 0)."""
        out = {}
        comm = self.comm
        for i, kind in enumerate(kinds):
            if kind != _SPARSE:
                continue
            g = grads[i]
            var = self.arrays[i]
            indices = np.ascontiguousarray(g.indices, dtype=np.int64).reshape(-1)
            values = np.ascontiguousarray(g.values, dtype=var.dtype).reshape(-1)
            if self.zero_stage == 1:
                root = self.plan.sparse_owner[i]
                indices, _ = comm.gatherv(indices, root)
                values, _ = comm.gatherv(values, root)
                if comm.rank != root:
                    continue
            else:
                indices, _ = allgather_concat(comm, indices)
                values, _ = allgather_concat(comm, values)
            if self.reduce == "mean":
                np.divide(values, comm.size, out=values)
            out[i] = IndexedSlices(values.reshape(indices.size, *var.shape[1:]), indices)
        return out

    def _local_gradients(self, reduced, rows, kinds):
        """The gradient of each local piece: a view of the reduced dense range (in device
        memory for device variables), the gathered ``IndexedSlices``, or None."""
        if self.local is not None:
            reduced = [self.space.for_kernels(shard) for shard in reduced]
        out = []
        for p in self.pieces:
            kind = kinds[p.variable]
            if kind == _NONE:
                out.append(None)
            elif kind == _SPARSE:
                out.append(rows[p.variable])
            else:
                lo = self._ranges[p.group][0]
                start = p.offset + p.begin - lo
                view = reduced[p.group][start:start + p.size]
                out.append(view.reshape(self.arrays[p.variable].shape) if p.whole else view)
        return out

    # ------------------------------------------------------------ agreement

    def _agree_nonfinite(self, local_grads):
        """``(refs, skip)``: the agreed verdict on the reduced gradients. The first
        variable holding NaN or inf is the first in the single-process order (dense
        groups in order, then the sparse gradients); under ``"raise"`` every rank raises
        the same ``FloatingPointError`` naming it."""
        key, refs = None, None
        if self.local is not None:
            bad, refs = _apply._first_nonfinite(self.local, local_grads, None)
            if bad is not None:
                i = self.pieces[bad].variable
                key = ((len(self.plan.groups), i) if i in self.plan.sparse
                       else self.plan.location[i])
        keys = [k for k in self.comm.allgather_object(key) if k is not None]
        if not keys:
            return refs, False
        g, k = min(keys)
        i = k if g == len(self.plan.groups) else self.plan.groups[g].indices[k]
        if self.hyperparameters.nonfinite == "raise":
            raise FloatingPointError(f"The gradient for variable {self.names[i]!r} holds NaN "
                                     "or inf (nonfinite='raise'); nothing was changed.")
        return refs, True

    def _agree_learning_rate(self):
        """This call's learning rate, computed on every rank; a failure on any rank,
        or a callable giving different values on different ranks, raises on all."""
        hp = self.hyperparameters
        lr = together(self.comm, hp.learning_rate_at, self.raw_steps)
        if callable(hp.learning_rate) and not isinstance(hp.learning_rate, float):
            rates = self.comm.allgather_object(lr)
            if any(r != lr for r in rates):
                raise ValueError("The learning rate differs across the ranks (per rank: "
                                 f"{rates}); a callable or schedule must give the same value "
                                 "on every rank.")
        return lr

    # ------------------------------------------------------------ norms

    def _exchange_norms(self, local, refs, sparse, settings):
        """``_apply._clip_tables`` over the whole model (collective): every rank's
        per-chunk float64 partials (and the squared norms of the sparse gradients it
        owns) are all-gathered, folded per variable in the single-process chunk order,
        and turned into clip tables for this rank's pieces. Mutates nothing."""
        comm, plan, cpu = self.comm, self.plan, _cpu()
        parts = []
        if local is not None:
            backend = local.backend
            for lg, group_refs in zip(local.groups, refs):
                partials = backend.chunk_square_partials(local, lg, group_refs, settings)
                parts.append(host_copy(partials)[self._dense_chunk[lg.position]])
            if sparse:
                local_sums = backend.new_square_sums(local)
                owned = []
                for j, rows in sparse.items():
                    backend.sparse_square_sum(local, j, rows, settings, local_sums)
                    view = local.views[j]
                    owned.append((self.pieces[j].variable,
                                  local_sums[view.group.position][view.k]))
                parts.append(np.array([s for _, s in sorted(owned)]))
        sparse_now = sorted(i for i in plan.sparse if self._sparse_this_call(i))
        counts = []
        for r in range(comm.size):
            counts.append(sum(int(g.chunk_cuts[r + 1] - g.chunk_cuts[r]) for g in plan.groups)
                          + sum(plan.sparse_owner[i] == r for i in sparse_now))
        recv = np.empty(sum(counts))
        start = sum(counts[:comm.rank])
        recv[start:start + counts[comm.rank]] = np.concatenate(parts) if parts else ()
        comm.allgatherv_(recv, counts)
        full = [[] for _ in plan.groups]
        sparse_sums = {}
        offset = 0
        for r in range(comm.size):
            for g in plan.groups:
                n = int(g.chunk_cuts[r + 1] - g.chunk_cuts[r])
                full[g.position].append(recv[offset:offset + n])
                offset += n
            for i in sparse_now:
                if plan.sparse_owner[i] == r:
                    sparse_sums[i] = recv[offset]
                    offset += 1
        sums = [np.empty(len(g.indices)) for g in plan.groups]
        for g in plan.groups:
            cpu.fold_square_partials(None, _Chunks(g.position, g.dense_chunks),
                                         np.concatenate(full[g.position]), sums)
        for i, value in sparse_sums.items():
            g, k = plan.location[i]
            sums[g][k] = value
        if local is None:
            return None
        tables = cpu.clip_tables(_Groups(plan), sums, settings)
        out = [np.array([tables[self._local_group[lg.position]][
                    plan.location[self.pieces[j].variable][1]] for j in lg.indices],
                        dtype=np.float64).reshape(-1, 2)
               for lg in local.groups]
        if self.device is not None:  # the device kernels read the table in the slot dtype
            out = [upload(t.astype(lg.slot_dtype)) for t, lg in zip(out, local.groups)]
        return out

    def _sparse_this_call(self, i):
        return self._kinds is not None and self._kinds[i] == _SPARSE

    # ------------------------------------------------------------ publishing

    def _changed_rows(self, rows, update):
        """``{i: rows}``: per sparse variable this rank owns with a gradient in this
        call, the rows an update step rewrites (this call's rows, and with accumulation
        the window's), computed before the step clears the window."""
        changed = {}
        if not update or self.zero_stage == 0:
            return changed
        for i, slices in rows.items():
            touched = np.unique(slices.indices)
            if self.local is not None and self.local.window is not None:
                j = next(j for j, p in enumerate(self.pieces) if p.variable == i)
                touched = np.union1d(touched, self.local.touched(j))
            changed[i] = touched.astype(np.int64)
        return changed

    def _publish_dense(self):
        """All-gather every group's dense variables from their owners (collective)."""
        for group in self.plan.groups:
            if self._flat_layout():
                self.comm.allgatherv_(self.buffer.data, group.counts)
                continue
            space = self.space
            buf = space.scratch(("params", group.position), group.comm_total, group.dtype)
            for p in self.pieces:
                if p.group == group.position and p.variable not in self.plan.sparse and p.size:
                    start = p.offset + p.begin
                    space.put(buf[start:start + p.size],
                              self.arrays[p.variable].reshape(-1)[p.begin:p.end])
            self.comm.allgatherv_(buf, group.counts)
            for k, i in enumerate(group.indices):
                if i not in self.plan.sparse and group.sizes[k]:
                    start = group.comm_offsets[k]
                    space.take(self.arrays[i], buf[start:start + group.sizes[k]])

    def _publish_sparse(self, changed, overwrite):
        """The owners of sparse variables broadcast what the step changed: the whole
        variable after an EMA overwrite, else the rows an update rewrote (collective)."""
        comm = self.comm
        for i in sorted(self.plan.sparse):
            var = self.arrays[i]
            if not var.size:
                continue
            root = self.plan.sparse_owner[i]
            if overwrite:
                comm.bcast_(var.reshape(-1), root)
                continue
            if not self._sparse_this_call(i):
                continue
            mine = changed.get(i, np.empty(0, np.int64))
            n = comm.bcast_object(int(mine.size), root)
            if not n:
                continue
            rows = mine if comm.rank == root else np.empty(n, np.int64)
            comm.bcast_(rows, root)
            row_size = var.size // var.shape[0]
            values = (np.ascontiguousarray(var[rows]).reshape(-1) if comm.rank == root
                      else np.empty(n * row_size, var.dtype))
            comm.bcast_(values, root)
            if comm.rank != root:
                var[rows] = values.reshape(n, *var.shape[1:])

    # ------------------------------------------------------------ whole-model writes

    def finalize(self, targets):
        """Copy the EMA of every variable into ``targets`` (arrays like the variables,
        in order), gathering the pieces (collective)."""
        for i, target in enumerate(targets):
            write_host(target, self.gather_slot(i, "ema"))


def _cpu():
    from ..backends import cpu
    return cpu


class _Chunks:
    """A group as ``fold_square_partials`` reads it: its position and chunk table."""

    def __init__(self, position, chunks):
        self.position, self.chunks = position, chunks


class _Groups:
    """The whole model's groups as ``clip_tables`` reads them (``groups[g].m`` gives
    the dtype the clip factors are computed in)."""

    def __init__(self, plan):
        self.groups = [_Chunks(g.position, g.dense_chunks) for g in plan.groups]
        for group, g in zip(self.groups, plan.groups):
            group.m = np.empty(0, check.slot_dtype(g.dtype))
