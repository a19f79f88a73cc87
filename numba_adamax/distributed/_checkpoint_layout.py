"""What a sharded checkpoint describes, and the checks on it: ``Piece`` (a part of one
variable), the header and the ``Layout`` read from it, and the checks of a save's or a
load's arguments, on one rank (``check_pieces``, ``check_slots``, ``check_whole``) and
across the ranks (``check_group``). Every check raises TypeError or ValueError naming
the argument and mutates nothing."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping

import numpy as np

from .. import _state_dict
from .. import _validation as check
from .._state import slot_names as configured_slot_names
from ._comm import Comm

#: The header fields every save must give (more JSON fields may be added; they are kept).
HEADER_KEYS = ("config", "raw_steps", "iterations", "skipped_steps", "names", "shapes",
               "dtypes", "slot_names", "world_size", "zero_stage")


@dataclasses.dataclass(frozen=True)
class Piece:
    """One contiguous part of one variable held by a rank: elements ``[begin, end)`` of
    the flattened variable number ``variable`` (its index in the optimizer's order)."""

    variable: int
    begin: int
    end: int

    def __post_init__(self):
        for field in ("variable", "begin", "end"):
            value = getattr(self, field)
            if not check.is_int(value):
                raise TypeError(f"Piece.{field} must be an int, got {value!r}.")
            object.__setattr__(self, field, int(value))
        if self.variable < 0:
            raise ValueError(f"Piece.variable must be >= 0, got {self.variable}.")
        if not 0 <= self.begin <= self.end:
            raise ValueError(f"A Piece needs 0 <= begin <= end, got begin={self.begin}, "
                             f"end={self.end}.")


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a checked header says about the variables and slots."""

    header: dict          # the header as JSON values (a private copy)
    names: tuple
    shapes: tuple
    dtypes: tuple         # variable dtypes
    slot_dtypes: tuple    # per variable, the dtype of its slots
    sizes: tuple
    slot_names: tuple
    use_accumulator: bool


def check_header(header, label):
    """Check a header (the fields listed in ``HEADER_KEYS``; more JSON fields are kept)
    and return its ``Layout``. Raises TypeError/ValueError naming the field; mutates
    nothing."""
    if not isinstance(header, Mapping):
        raise TypeError(f"{label} must be a dict of JSON values, got {check.describe(header)}.")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ValueError(f"{label} lacks the fields {missing}.")
    try:
        header = json.loads(json.dumps(dict(header), allow_nan=False))
    except (TypeError, ValueError) as exc:  # a type JSON lacks; NaN or infinity
        raise type(exc)(f"{label} must hold JSON values only: {exc}") from None
    config = header["config"]
    if not isinstance(config, dict):
        raise TypeError(f"{label}['config'] must be a dict (_state_dict.json_config), got "
                        f"{check.describe(config)}.")
    use_ema = config.get("use_ema", False)
    steps = config.get("gradient_accumulation_steps")
    if not isinstance(use_ema, bool):
        raise TypeError(f"{label}['config']: use_ema must be a bool, got {use_ema!r}.")
    if steps is not None:
        _prefixed(label + "['config']", check.gradient_accumulation_steps, steps)
    raw = _state_dict.counter(header["raw_steps"], f"{label}['raw_steps']")
    iterations = _state_dict.counter(header["iterations"], f"{label}['iterations']")
    _state_dict.counter(header["skipped_steps"], f"{label}['skipped_steps']")
    if iterations != (raw // steps if steps else raw):
        raise ValueError(f"{label}['iterations'] is {iterations}, inconsistent with "
                         f"raw_steps={raw} and gradient_accumulation_steps={steps}.")
    names = header["names"]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{label}['names'] must be a non-empty list of str.")
    names = _prefixed(f"{label}['names']", check.names, names, len(names))
    shapes, dtypes = header["shapes"], header["dtypes"]
    if not isinstance(shapes, list) or len(shapes) != len(names):
        raise ValueError(f"{label}['shapes'] must be a list of {len(names)} shapes.")
    if not isinstance(dtypes, list) or len(dtypes) != len(names):
        raise ValueError(f"{label}['dtypes'] must be a list of {len(names)} dtype names.")
    shapes = tuple(check.shape(s, f"{label}['shapes'][{i}]") for i, s in enumerate(shapes))
    dtypes = tuple(_state_dict._saved_dtype(t, f"{label}['dtypes'][{i}]")
                   for i, t in enumerate(dtypes))
    expected = configured_slot_names(use_ema, steps is not None)
    slot_names = header["slot_names"]
    if (not isinstance(slot_names, list) or len(slot_names) != len(expected)
            or set(slot_names) != set(expected)):
        raise ValueError(f"{label}['slot_names'] is {slot_names!r}; this configuration has the "
                         f"slots {expected} (in any order).")
    for field, low in (("world_size", 1), ("zero_stage", 0)):
        value = header[field]
        if not check.is_int(value) or value < low:
            raise ValueError(f"{label}['{field}'] must be an int >= {low}, got {value!r}.")
    return Layout(header=header, names=names, shapes=shapes, dtypes=dtypes,
                   slot_dtypes=tuple(check.slot_dtype(t) for t in dtypes),
                   sizes=tuple(math.prod(s) for s in shapes), slot_names=tuple(slot_names),
                   use_accumulator=steps is not None)


def _prefixed(label, function, *args):
    """``function(*args)``, its TypeError/ValueError prefixed with ``label``."""
    try:
        return function(*args)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{label}: {exc}") from None


def check_pieces(pieces, layout, label="`pieces`"):
    pieces = check.sequence(pieces, label, "a list or a tuple of Piece")
    for i, piece in enumerate(pieces):
        if not isinstance(piece, Piece):
            raise TypeError(f"{label}[{i}] must be a Piece(variable, begin, end), got "
                            f"{check.describe(piece)}.")
        count = len(layout.sizes)
        if piece.variable >= count:
            raise ValueError(f"{label}[{i}] is {piece}, but there are {count} variables.")
        size = layout.sizes[piece.variable]
        if piece.end > size:
            raise ValueError(f"{label}[{i}] is {piece}, but variable {piece.variable} "
                             f"({layout.names[piece.variable]!r}) has {size} elements.")
    return pieces


def check_slots(slots, pieces, layout):
    if not isinstance(slots, Mapping):
        raise TypeError(f"`slots` must be a dict of slot name -> list of arrays, got "
                        f"{check.describe(slots)}.")
    missing = [n for n in layout.slot_names if n not in slots]
    unknown = sorted(str(n) for n in slots if n not in layout.slot_names)
    if missing or unknown:
        raise ValueError(f"`slots` must have exactly the keys {list(layout.slot_names)} "
                         f"(`header`['slot_names']): missing {missing}, unknown {unknown}.")
    checked = {}
    for name in layout.slot_names:
        arrays = check.sequence(slots[name], f"`slots`[{name!r}]", "a list or a tuple of arrays")
        if len(arrays) != len(pieces):
            raise ValueError(f"`slots`[{name!r}] has {len(arrays)} arrays for "
                             f"{len(pieces)} pieces (one per piece).")
        for i, (array, piece) in enumerate(zip(arrays, pieces)):
            label = f"`slots`[{name!r}][{i}] (for {piece})"
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{label} must be a 1-D numpy.ndarray (copy device arrays to "
                                f"the host first), got {check.describe(array)}.")
            if array.shape != (piece.end - piece.begin,):
                raise ValueError(f"{label} has shape {array.shape}; expected "
                                 f"({piece.end - piece.begin},), the piece's elements.")
            dtype = layout.slot_dtypes[piece.variable]
            if array.dtype != dtype:
                raise TypeError(f"{label} has dtype {array.dtype}; the slots of variable "
                                f"{piece.variable} ({layout.dtypes[piece.variable]}) are "
                                f"{dtype}.")
        checked[name] = arrays
    return checked


def check_whole(whole, layout):
    if whole is None:
        return {}
    if not isinstance(whole, Mapping):
        raise TypeError(f"`whole` must be None or a dict of variable index -> dict of arrays, "
                        f"got {check.describe(whole)}.")
    checked = {}
    for variable, arrays in whole.items():
        if not check.is_int(variable):
            raise TypeError(f"`whole` keys must be variable indices (int), got {variable!r}.")
        if not 0 <= variable < len(layout.sizes):
            raise ValueError(f"`whole` key {variable} is not a variable index in "
                             f"[0, {len(layout.sizes)}).")
        label = f"`whole`[{variable}]"
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{label} must be a dict of name -> numpy.ndarray, got "
                            f"{check.describe(arrays)}.")
        for name, array in arrays.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"{label} keys must be non-empty str, got {name!r}.")
            if not isinstance(array, np.ndarray) or array.dtype.hasobject:
                raise TypeError(f"{label}[{name!r}] must be a numpy.ndarray of numbers, got "
                                f"{check.describe(array)}.")
            if name == "touched_rows":
                check_touched_rows(array, layout, variable, f"{label}['touched_rows']")
        checked[int(variable)] = dict(arrays)
    return checked


def check_touched_rows(rows, layout, variable, label):
    shape = layout.shapes[variable]
    limit = shape[0] if shape else 1
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(f"{label} must be a 1-D integer array, got {rows.dtype} with shape "
                        f"{rows.shape}.")
    if rows.size and (rows[0] < 0 or rows[-1] >= limit or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"{label} must hold ascending distinct row numbers in [0, {limit}).")


def check_group(summary, layout):
    """The checks that need every rank's arguments (the same verdict on every rank, as
    every rank computes it from the same gathered values): one path, one header, pieces
    covering each variable exactly once, each whole array saved by one rank."""
    for rank, (target, header, _, _) in enumerate(summary[1:], start=1):
        if target != summary[0][0]:
            raise ValueError(f"`path` differs between ranks: {summary[0][0]!r} on rank 0, "
                             f"{target!r} on rank {rank}.")
        if header != summary[0][1]:
            raise ValueError(f"`header` differs between rank 0 and rank {rank}; every rank "
                             "must pass the same header.")
    held = [[] for _ in layout.sizes]
    for rank, (_, _, pieces, _) in enumerate(summary):
        for variable, begin, end in pieces:
            if end > begin:
                held[variable].append((begin, end, f"rank {rank}"))
    for variable, ranges in enumerate(held):
        check_cover(sorted(ranges), layout.sizes[variable],
                     f"variable {variable} ({layout.names[variable]!r})", ValueError,
                     "`pieces` of all ranks")
    owners = {}
    for rank, (_, _, _, variables) in enumerate(summary):
        for variable in variables:
            if variable in owners:
                raise ValueError(f"`whole`[{variable}] is given by ranks {owners[variable]} and "
                                 f"{rank}; the rank that owns a variable saves its whole arrays.")
            owners[variable] = rank


def check_cover(ranges, size, what, error, whose):
    """``ranges`` (sorted ``(begin, end, holder)``, all non-empty) tile ``[0, size)``
    exactly; else ``error`` naming the first gap or overlap."""
    position, previous = 0, None
    for begin, end, holder in ranges:
        if begin > position:
            raise error(f"{whose} do not cover {what}: elements [{position}, {begin}) are in "
                        "none of them.")
        if begin < position:
            raise error(f"{whose} overlap on {what}: elements [{begin}, {min(end, position)}) "
                        f"are in both {previous} and {holder}.")
        position, previous = end, holder
    if position != size:
        raise error(f"{whose} do not cover {what}: elements [{position}, {size}) are in none "
                    "of them.")


def check_comm(comm):
    if not isinstance(comm, Comm):
        raise TypeError(f"`comm` must be a numba_adamax.distributed communicator (SelfComm(), "
                        f"MPIComm(MPI.COMM_WORLD)), got {check.describe(comm)}.")


def absolute_path(path, label):
    """``path`` as an absolute str path; TypeError unless it is a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{label} must be a str or an os.PathLike path, got "
                        f"{check.describe(path)}.")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise TypeError(f"{label} must name a path as a non-empty str, got {path!r}.")
    return os.path.abspath(path)
