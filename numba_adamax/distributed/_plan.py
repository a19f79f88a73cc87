"""The partition plan: which rank owns which elements of the optimizer state.

Pure NumPy, no communication: every rank computes the same plan from the variables'
shapes and dtypes, and tests check it without launching processes.

Per dtype group (groups and their variable order are those of ``AdamaxState``), the
slots are one flat buffer laid out by ``aligned_offsets`` and cut into the kernels'
chunks ``(k, begin, min(begin + CHUNK, size))``. The plan cuts each group's chunk list
into ``world_size`` contiguous runs: cut ``c`` is the allowed boundary nearest
``total * c / world_size``, so every rank's range is within one chunk of an equal share.
A sparse variable is never cut (only its start and end are allowed boundaries), so one
rank owns it whole. A rank may own nothing when there are fewer chunks than ranks.
"""
from dataclasses import dataclass

import numpy as np

from .. import _validation as check
from .._flat_buffer import FlatBuffer, aligned_offsets
from ..kernels import config


@dataclass(frozen=True)
class PlanPiece:
    """One contiguous part of one variable owned by one rank: elements ``[begin, end)``
    of the flattened ``variable`` (its index in the optimizer's order, ``variable_size``
    elements), which sits in group ``group`` at position ``k``, at flat offset
    ``offset + begin`` there."""

    variable: int
    begin: int
    end: int
    group: int
    k: int
    offset: int
    variable_size: int

    @property
    def size(self) -> int:
        return self.end - self.begin

    @property
    def whole(self) -> bool:
        """True when the piece is the entire variable."""
        return self.begin == 0 and self.end == self.variable_size


class GroupPlan:
    """The cut of one dtype group.

    ``dtype``, ``indices`` (variables, in group order), ``sizes``, ``offsets``,
    ``total`` and ``chunks`` (int64 rows ``(k, begin, end)``) are the single-process
    layout and chunk table of the group. The dense variables travel in the
    *communication layout*: the same with every sparse variable's size set to 0
    (``comm_offsets``, ``comm_total``; ``dense_chunks`` are the chunks of the dense
    variables, in order). ``cuts`` (``world_size + 1`` offsets of the communication
    layout, each a chunk start or the end): rank ``r`` owns ``[cuts[r], cuts[r + 1])``;
    ``chunk_cuts`` are the same cuts as indices into ``dense_chunks``. ``counts`` are
    the elements per rank."""

    def __init__(self, position, dtype, indices, sizes, world_size, sparse):
        self.position = position
        self.dtype = np.dtype(dtype)
        self.indices = tuple(indices)
        self.sizes = tuple(int(s) for s in sizes)
        offsets, self.total = aligned_offsets(self.sizes)
        self.offsets = tuple(offsets)
        self.sparse = tuple(k for k, i in enumerate(self.indices) if i in sparse)
        comm_sizes = [0 if k in self.sparse else n for k, n in enumerate(self.sizes)]
        comm_offsets, self.comm_total = aligned_offsets(comm_sizes)
        self.comm_offsets = tuple(comm_offsets)
        self.chunks = _chunk_table(self.sizes)
        self.dense_chunks = _chunk_table(comm_sizes)
        starts = np.array([self.comm_offsets[k] + b for k, b, _ in self.dense_chunks],
                          dtype=np.int64)
        candidates = np.append(starts, self.comm_total)
        cuts = [0]
        for c in range(1, world_size):
            ideal = self.comm_total * c / world_size
            j = int(np.argmin(np.abs(candidates - ideal)))  # the first of two equally near
            j = max(j, int(np.searchsorted(candidates, cuts[-1])))
            cuts.append(int(candidates[j]))
        cuts.append(self.comm_total)
        self.cuts = np.array(cuts, dtype=np.int64)
        self.chunk_cuts = np.searchsorted(candidates, self.cuts).astype(np.int64)

    @property
    def counts(self):
        """Elements of the communication layout each rank owns (padding included)."""
        return np.diff(self.cuts)

    def dense_pieces(self, rank):
        """The dense ``PlanPiece`` list of ``rank`` in group order."""
        lo, hi = int(self.cuts[rank]), int(self.cuts[rank + 1])
        out = []
        for k, (offset, size) in enumerate(zip(self.comm_offsets, self.sizes)):
            if k in self.sparse:
                continue
            begin, end = max(lo - offset, 0), min(hi - offset, size)
            if begin < end:
                out.append(PlanPiece(self.indices[k], begin, end, self.position, k, offset,
                                     size))
        return out


def _chunk_table(sizes):
    chunk = config.CHUNK
    return np.array([(k, begin, min(begin + chunk, size))
                     for k, size in enumerate(sizes) for begin in range(0, size, chunk)],
                    dtype=np.int64).reshape(-1, 3)


class ShardPlan:
    """The partition of every dtype group over ``world_size`` ranks (see the module).

    ``groups``: the ``GroupPlan`` per dtype group; ``shapes``, ``dtypes``: the
    variables'; ``sparse``: the indices of the variables kept whole, and
    ``sparse_owner`` the rank owning each (each goes to the least loaded rank, in
    variable order). ``pieces(rank)`` lists what a rank owns, in group order."""

    def __init__(self, shapes, dtypes, world_size, sparse=()):
        self.world_size = world_size
        self.shapes = tuple(tuple(int(n) for n in s) for s in shapes)
        self.dtypes = tuple(np.dtype(d) for d in dtypes)
        self.sparse = frozenset(sparse)
        by_dtype = {}
        for i, dtype in enumerate(self.dtypes):
            by_dtype.setdefault(dtype, []).append(i)
        self.groups = tuple(
            GroupPlan(position, dtype, idx, [_size(self.shapes[i]) for i in idx],
                      world_size, self.sparse)
            for position, (dtype, idx) in enumerate(by_dtype.items()))
        self.location = {}  # variable -> (group position, k)
        for group in self.groups:
            for k, i in enumerate(group.indices):
                self.location[i] = (group.position, k)
        load = [sum(int(g.counts[r]) for g in self.groups) for r in range(world_size)]
        self.sparse_owner = {}
        for i in sorted(self.sparse):
            r = int(np.argmin(load))
            self.sparse_owner[i] = r
            load[r] += _size(self.shapes[i])

    def pieces(self, rank):
        """Every ``PlanPiece`` of ``rank``, ordered by group and position in the group."""
        out = [p for group in self.groups for p in group.dense_pieces(rank)]
        for i, r in self.sparse_owner.items():
            if r == rank and _size(self.shapes[i]):
                g, k = self.location[i]
                group = self.groups[g]
                out.append(PlanPiece(i, 0, group.sizes[k], g, k, group.comm_offsets[k],
                                     group.sizes[k]))
        return sorted(out, key=lambda p: (p.group, p.k))

    def holders(self, i):
        """The ranks holding part of variable ``i``, ascending (empty for a zero-size one)."""
        if not _size(self.shapes[i]):
            return []
        if i in self.sparse_owner:
            return [self.sparse_owner[i]]
        g, k = self.location[i]
        group = self.groups[g]
        lo, hi = group.comm_offsets[k], group.comm_offsets[k] + group.sizes[k]
        return [r for r in range(self.world_size)
                if group.cuts[r] < hi and group.cuts[r + 1] > lo]

    def slot_elements(self, rank):
        """Slot elements this rank allocates per slot: its pieces, each padded to the
        alignment as a state's flat buffer pads its variables."""
        return aligned_offsets([p.size for p in self.pieces(rank)])[1]

    def key(self):
        """A hashable description every rank must agree on."""
        return (self.world_size, self.shapes, tuple(d.str for d in self.dtypes),
                tuple(sorted(self.sparse)))


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def shard_plan(params, world_size: int, *, sparse_variables=()) -> ShardPlan:
    """The ``ShardPlan`` of ``params`` (a ``FlatBuffer``, or a list/tuple/dict of arrays)
    over ``world_size`` ranks, with the variables named or indexed in
    ``sparse_variables`` kept whole. Mutates nothing; needs no communication."""
    shapes, dtypes, names = describe(params)
    if isinstance(world_size, bool) or not check.is_int(world_size) or world_size < 1:
        raise ValueError(f"`world_size` must be an int >= 1, got {world_size!r}")
    return ShardPlan(shapes, dtypes, int(world_size),
                     sparse_indices(sparse_variables, names))


def describe(params):
    """``(shapes, dtypes, names)`` of a ``FlatBuffer`` or a list/tuple/dict of arrays."""
    if isinstance(params, FlatBuffer):
        arrays, names = params.arrays, params.names
    elif isinstance(params, dict):
        arrays, names = list(params.values()), tuple(str(k) for k in params)
    else:
        arrays = check.sequence(params, "`params`")
        names = tuple(f"variable_{i}" for i in range(len(arrays)))
    for i, a in enumerate(arrays):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"`params[{i}]` must be an array, got {check.describe(a)}")
    return [tuple(a.shape) for a in arrays], [a.dtype for a in arrays], names


def sparse_indices(sparse_variables, names):
    """The variable indices named (by name or index) in ``sparse_variables``."""
    if sparse_variables is None:
        return frozenset()
    if isinstance(sparse_variables, (str, bytes)) or not isinstance(
            sparse_variables, (list, tuple, set, frozenset)):
        raise TypeError("`sparse_variables` must be a list of variable names or indices, got "
                        f"{check.describe(sparse_variables)}")
    out = set()
    for entry in sparse_variables:
        if isinstance(entry, str):
            if entry not in names:
                raise ValueError(f"`sparse_variables` names {entry!r}, which is not a "
                                 f"variable; the names are {list(names)}")
            out.add(names.index(entry))
        elif check.is_int(entry) and not isinstance(entry, bool) and 0 <= entry < len(names):
            out.add(int(entry))
        else:
            raise ValueError(f"`sparse_variables` entries must be variable names or indices "
                             f"in [0, {len(names)}), got {entry!r}")
    return frozenset(out)
