"""Sharded checkpoints: every rank saves the parts of the optimizer state it holds, any
number of ranks loads them back, and ``consolidate`` turns them into one single-file
checkpoint.

The functions here know nothing of how an optimizer partitions its state. A rank
describes what it holds as a list of ``Piece`` (a contiguous element range of one
flattened variable) and passes, per slot name, one 1-D host array per piece.

On disk a checkpoint is a directory::

    <path>/
        shard-00000-of-00003.npz    one per rank of the saving group
        shard-00001-of-00003.npz
        shard-00002-of-00003.npz
        manifest.json               written last: the commit point

* A **shard** is a signed ``.npz`` archive written atomically, the container of the
  single-file format (``numba_adamax._checkpoint``: the SHA-256 of the file in the archive
  comment). Its members are ``metadata`` (uint8 UTF-8 JSON: ``magic``, the save's
  ``token``, ``rank``, ``world_size``, and this file's ``fragments`` and ``whole`` entries
  as the manifest lists them, less ``file``), one ``fNNNNNN`` array per fragment (the
  elements of one slot of one piece) and one ``wNNNNNN`` array per array kept whole.
* The **manifest** is UTF-8 JSON followed by a last line ``sha256=<64 hex digits>``, the
  SHA-256 of every byte before that line. Its fields: ``magic``, ``format_version``,
  ``token`` (random, shared by the save's shards), ``header`` (the saver's header),
  ``shards`` (``file``, ``rank``, ``sha256`` of the whole shard file), ``fragments``
  (``file``, ``slot``, ``variable``, ``begin``, ``end``, ``member``: elements
  ``[begin, end)`` of the flattened variable's slot are the member's array) and
  ``whole`` (``file``, ``variable``, ``name``, ``member``).

Fragments are addressed by variable and element range, never by how the saving
optimizer laid out its buffers, so a group of any size can load them: each rank opens
only the shard files holding elements of its own pieces (and the arrays kept whole of
the variables it touches), and checks their digests against the manifest.

Saving writes into a temporary directory ``.<name>.tmp-<token>`` next to the target:
every rank writes its shard, rank 0 gathers the digests and writes the manifest, then
renames the directory onto the target. Over an existing checkpoint that is one atomic
exchange where the system has it (Linux), so the target is always the old complete
checkpoint or the new one; elsewhere it is two renames (old aside, new in), and a crash
between them leaves the target absent with both complete copies beside it. A save that
dies before the rename leaves the old checkpoint in place (and possibly its temporary
directory, which may be deleted). A directory without a valid manifest is not a
checkpoint. ``load`` also reads a single-file checkpoint (``na.save_state``), each rank
slicing its pieces out of it. ``verify`` checks a checkpoint as far as that needs no
pieces (for an optimizer that is not built yet).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import errno
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import _checkpoint, _state_dict
from .. import _validation as check
from .._checkpoint import CheckpointError
from .._state import slot_names as configured_slot_names
from ._collective import AGREED, together
from ._comm import Comm

MANIFEST = "manifest.json"
MANIFEST_MAGIC = "numba_adamax.distributed.manifest"
SHARD_MAGIC = "numba_adamax.distributed.shard"
#: The version of the manifest layout this code writes and reads.
FORMAT_VERSION = 1
#: The header fields every save must give (more JSON fields may be added; they are kept).
HEADER_KEYS = ("config", "raw_steps", "iterations", "skipped_steps", "names", "shapes",
               "dtypes", "slot_names", "world_size", "zero_stage")
_SHARD_NAME = re.compile(r"shard-(\d{5,})-of-(\d{5,})\.npz")
_HEX = re.compile(r"[0-9a-f]{64}")
_TRAILER = b"sha256="


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
class _Layout:
    """What a checked header says about the variables and slots."""

    header: dict          # the header as JSON values (a private copy)
    names: tuple
    shapes: tuple
    dtypes: tuple         # variable dtypes
    slot_dtypes: tuple    # per variable, the dtype of its slots
    sizes: tuple
    slot_names: tuple
    use_accumulator: bool


# ============================================================================ save

def save(path, comm: Comm, *, header: dict, pieces: Sequence[Piece],
         slots: Mapping[str, Sequence[np.ndarray]],
         whole: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> None:
    """Save this rank's part of the optimizer state into the checkpoint directory
    ``path`` (collective: every rank of ``comm`` calls it with the same ``path`` and
    ``header``).

    ``header`` holds JSON values: ``config``, ``raw_steps``, ``iterations``,
    ``skipped_steps``, ``names``, ``shapes``, ``dtypes``, ``slot_names`` (the configured
    slots: ``m``, ``u``, plus ``ema`` and ``accumulator`` when they exist), ``world_size``
    (``comm.size``) and ``zero_stage``. ``slots[name][i]`` is the 1-D host array of the
    elements of ``pieces[i]`` in slot ``name`` (slot dtype: float32 for float16
    variables). ``whole[variable]`` maps names to arrays this rank keeps whole for that
    variable (``touched_rows``: the ascending int rows touched in the open accumulation
    window). The pieces of all ranks must cover every element of every variable exactly
    once.

    Every argument is checked on every rank first: a bad one raises TypeError or
    ValueError on every rank and nothing is written. An existing checkpoint at ``path`` is
    replaced only once the new one is complete; any failure leaves it as it was. Mutates
    nothing but the files.
    """
    _check_comm(comm)
    target, layout, pieces, slots, whole = together(
        comm, _check_save, path, comm, header, pieces, slots, whole)
    summary = comm.allgather_object((target, json.dumps(layout.header, sort_keys=True),
                                     [(p.variable, p.begin, p.end) for p in pieces],
                                     sorted(whole)))
    _check_group(summary, layout)
    temporary, token = _on_root(comm, _make_temporary, target)
    try:
        written = together(comm, _write_shard, temporary, token, comm, layout, pieces, slots,
                           whole)
        written = comm.allgather_object(written)
        _on_root(comm, _write_manifest, temporary, token, layout, written)
        _on_root(comm, _commit, temporary, target, token)
    except AGREED:
        if comm.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    comm.barrier()


def _check_save(path, comm, header, pieces, slots, whole):
    target = _target_directory(path)
    layout = _check_header(header, "`header`")
    if layout.header["world_size"] != comm.size:
        raise ValueError(f"`header`['world_size'] is {layout.header['world_size']}, but the "
                         f"communicator has {comm.size} ranks.")
    pieces = _check_pieces(pieces, layout)
    slots = _check_slots(slots, pieces, layout)
    whole = _check_whole(whole, layout)
    return target, layout, pieces, slots, whole


def _target_directory(path):
    """The absolute path of the directory a save may create or replace."""
    target = _path(path, "`path`")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ValueError(f"`path`: the directory {parent!r} that should hold the checkpoint "
                         "does not exist; create it first.")
    if os.path.lexists(target):
        if not os.path.isdir(target) or os.path.islink(target):
            raise ValueError(f"`path` {target!r} exists and is not a directory (or is a "
                             "symbolic link); a sharded checkpoint is a directory "
                             "(na.save_state writes single files).")
        foreign = sorted(n for n in os.listdir(target)
                         if n != MANIFEST and not _SHARD_NAME.fullmatch(n))
        if foreign:
            raise ValueError(f"`path` {target!r} is a directory that is not a numba_adamax "
                             f"checkpoint (it holds {foreign[:5]}); pass a new path or an "
                             "existing checkpoint directory.")
    return target


def _check_pieces(pieces, layout, label="`pieces`"):
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


def _check_slots(slots, pieces, layout):
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


def _check_whole(whole, layout):
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
                _check_touched_rows(array, layout, variable, f"{label}['touched_rows']")
        checked[int(variable)] = dict(arrays)
    return checked


def _check_touched_rows(rows, layout, variable, label):
    shape = layout.shapes[variable]
    limit = shape[0] if shape else 1
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(f"{label} must be a 1-D integer array, got {rows.dtype} with shape "
                        f"{rows.shape}.")
    if rows.size and (rows[0] < 0 or rows[-1] >= limit or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"{label} must hold ascending distinct row numbers in [0, {limit}).")


def _check_group(summary, layout):
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
        _check_cover(sorted(ranges), layout.sizes[variable],
                     f"variable {variable} ({layout.names[variable]!r})", ValueError,
                     "`pieces` of all ranks")
    owners = {}
    for rank, (_, _, _, variables) in enumerate(summary):
        for variable in variables:
            if variable in owners:
                raise ValueError(f"`whole`[{variable}] is given by ranks {owners[variable]} and "
                                 f"{rank}; the rank that owns a variable saves its whole arrays.")
            owners[variable] = rank


def _check_cover(ranges, size, what, error, whose):
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


def _make_temporary(target):
    token = secrets.token_hex(8)
    temporary = os.path.join(os.path.dirname(target),
                             f".{os.path.basename(target)}.tmp-{token}")
    os.mkdir(temporary)
    return temporary, token


def _shard_name(rank, size):
    return f"shard-{rank:05d}-of-{size:05d}.npz"


def _write_shard(temporary, token, comm, layout, pieces, slots, whole):
    """Write this rank's shard into ``temporary``; return its file name, digest and
    entries (for the manifest)."""
    name = _shard_name(comm.rank, comm.size)
    arrays, fragments, kept = {}, [], []
    for slot in layout.slot_names:
        for piece, array in zip(pieces, slots[slot]):
            if piece.end > piece.begin:
                member = f"f{len(fragments):06d}"
                arrays[member] = array
                fragments.append({"slot": slot, "variable": piece.variable,
                                  "begin": piece.begin, "end": piece.end, "member": member})
    for variable in sorted(whole):
        for key in sorted(whole[variable]):
            member = f"w{len(kept):06d}"
            arrays[member] = whole[variable][key]
            kept.append({"variable": variable, "name": key, "member": member})
    metadata = {"magic": SHARD_MAGIC, "token": token, "rank": comm.rank,
                "world_size": comm.size, "fragments": fragments, "whole": kept}
    arrays = {"metadata": _json_bytes(metadata), **arrays}
    digest = _checkpoint.write_signed(os.path.join(temporary, name), arrays)
    return name, digest, fragments, kept


def _write_manifest(temporary, token, layout, written):
    shards, fragments, kept = [], [], []
    for rank, (name, digest, rank_fragments, rank_whole) in enumerate(written):
        shards.append({"file": name, "rank": rank, "sha256": digest})
        fragments += [{"file": name, **f} for f in rank_fragments]
        kept += [{"file": name, **w} for w in rank_whole]
    body = {"magic": MANIFEST_MAGIC, "format_version": FORMAT_VERSION, "token": token,
            "header": layout.header, "shards": shards, "fragments": fragments, "whole": kept}
    text = json.dumps(body, sort_keys=True, allow_nan=False, indent=1).encode() + b"\n"
    signed = text + _TRAILER + hashlib.sha256(text).hexdigest().encode() + b"\n"
    _checkpoint.atomic_write(os.path.join(temporary, MANIFEST), lambda f: f.write(signed))


def _commit(temporary, target, token):
    """Put the complete checkpoint ``temporary`` at ``target`` (rank 0 only)."""
    parent = os.path.dirname(target)
    if not os.path.lexists(target):
        os.rename(temporary, target)
    elif _exchange(temporary, target):
        shutil.rmtree(temporary, ignore_errors=True)  # now the previous checkpoint
    else:
        previous = os.path.join(parent, f".{os.path.basename(target)}.old-{token}")
        os.rename(target, previous)
        try:
            os.rename(temporary, target)
        except BaseException:
            os.rename(previous, target)  # the previous checkpoint back in place
            raise
        shutil.rmtree(previous, ignore_errors=True)
    _checkpoint.fsync_directory(parent)


def _exchange(a, b):
    """Swap the directories ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``). Returns False where the system or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


# ============================================================================ load

def load(path, comm: Comm, *, pieces: Sequence[Piece], expect: Callable[[dict], None]
         ) -> tuple[dict, dict[str, list[np.ndarray]], dict[int, dict[str, np.ndarray]]]:
    """Read the elements of ``pieces`` from the checkpoint at ``path`` (collective).

    ``path`` is a checkpoint directory written by ``save`` at any world size, or a
    single-file checkpoint written by ``na.save_state``. ``expect(header)`` is called on
    every rank with a copy of the saved header (for a single file: its fields, with
    ``slot_names`` as configured, ``world_size`` 1 and ``zero_stage`` 0) and raises
    TypeError/ValueError when it does not fit the loading optimizer.

    Returns ``(header, slots, whole)``: ``slots[name][i]`` is a new 1-D array of the
    elements of ``pieces[i]`` in slot ``name``; ``whole[variable]`` the arrays kept whole
    for each variable the pieces name (for a single file: ``touched_rows`` of the
    variables with rows touched in the open accumulation window). Each rank opens only
    the shard files its pieces need and checks them against the manifest.

    Any failure on any rank raises on every rank: ``CheckpointError`` for a missing,
    corrupted or foreign checkpoint, manifest or shard, ``expect``'s exception for a
    mismatch, TypeError/ValueError for bad arguments. Mutates nothing.
    """
    _check_comm(comm)
    result = together(comm, _load_local, path, pieces, expect)
    tokens = comm.allgather_object(result[0])
    if len(set(tokens)) > 1:
        raise CheckpointError(f"The checkpoint {os.fspath(path)!r} was replaced while it was "
                              "being loaded (the ranks read different saves); load it again.")
    return result[1:]


def _load_local(path, pieces, expect):
    source = _path(path, "`path`")
    check.sequence(pieces, "`pieces`", "a list or a tuple of Piece")
    if not callable(expect):
        raise TypeError(f"`expect` must be a callable taking the header, got "
                        f"{check.describe(expect)}.")
    if os.path.isdir(source):
        manifest = _read_manifest(source)
        single, layout = None, manifest["layout"]
    elif os.path.isfile(source):
        manifest = None
        single, layout = _read_single_file(source)
    else:
        raise CheckpointError(f"There is no checkpoint at {source!r}.")
    pieces = _check_pieces(pieces, layout)
    expect(copy.deepcopy(layout.header))
    if manifest is None:
        slots, whole = _slice_single_file(single, layout, pieces)
        token = None
    else:
        slots, whole = _read_pieces(source, manifest, layout, pieces)
        token = manifest["token"]
    return token, copy.deepcopy(layout.header), slots, whole


def verify(path, comm: Comm) -> dict:
    """Check the checkpoint at ``path`` as far as that needs no pieces (collective): the
    manifest and every shard (each rank reads every ``comm.size``-th one: signature,
    digest, metadata, members), or the single file. Returns a copy of the header (for a
    single file: as ``load`` gives it to ``expect``).

    Raises ``CheckpointError`` on every rank for a missing, corrupted or foreign
    checkpoint, TypeError for a bad ``path``. Mutates nothing."""
    _check_comm(comm)
    return together(comm, _verify_local, path, comm.rank, comm.size)


def _verify_local(path, rank, size):
    source = _path(path, "`path`")
    if os.path.isdir(source):
        manifest = _read_manifest(source)
        layout = manifest["layout"]
        for shard in manifest["shards"][rank::size]:
            fragments, kept = manifest["by_file"][shard["file"]]
            with _shard(source, manifest, shard["file"]) as archive:
                for fragment in fragments:
                    _member(archive, fragment, layout)
                for entry in kept:
                    _whole_member(archive, entry, layout)
    elif os.path.isfile(source):
        layout = _read_single_file(source)[1]
    else:
        raise CheckpointError(f"There is no checkpoint at {source!r}.")
    return copy.deepcopy(layout.header)


def _read_pieces(directory, manifest, layout, pieces):
    """New arrays for ``pieces`` from the overlapping fragments; opens only their files,
    one at a time."""
    by_variable = {}
    for i, piece in enumerate(pieces):
        if piece.end > piece.begin:
            by_variable.setdefault(piece.variable, []).append((i, piece))
    variables = {p.variable for p in pieces}
    needed = {}  # file -> the fragments and whole arrays to read from it
    for fragment in manifest["fragments"]:
        if any(p.begin < fragment["end"] and fragment["begin"] < p.end
               for _, p in by_variable.get(fragment["variable"], ())):
            needed.setdefault(fragment["file"], ([], []))[0].append(fragment)
    for entry in manifest["whole"]:
        if entry["variable"] in variables:
            needed.setdefault(entry["file"], ([], []))[1].append(entry)
    slots = {name: [np.empty(p.end - p.begin, layout.slot_dtypes[p.variable]) for p in pieces]
             for name in layout.slot_names}
    whole = {}
    for name in sorted(needed):
        fragments, kept = needed[name]
        with _shard(directory, manifest, name) as archive:
            for fragment in fragments:
                source = _member(archive, fragment, layout)
                for i, piece in by_variable[fragment["variable"]]:
                    begin = max(piece.begin, fragment["begin"])
                    end = min(piece.end, fragment["end"])
                    if begin < end:
                        slots[fragment["slot"]][i][begin - piece.begin:end - piece.begin] = \
                            source[begin - fragment["begin"]:end - fragment["begin"]]
            for entry in kept:
                whole.setdefault(entry["variable"], {})[entry["name"]] = \
                    _whole_member(archive, entry, layout)
    return slots, {v: whole[v] for v in sorted(whole)}


def _read_member(archive, entry):
    try:
        return archive[entry["member"]]
    except Exception as exc:  # zipfile and npy-header errors alike
        raise CheckpointError(f"Shard {entry['file']!r}: member {entry['member']!r} is not "
                              f"readable: {type(exc).__name__}: {exc}") from exc


def _member(archive, fragment, layout):
    array = _read_member(archive, fragment)
    dtype = layout.slot_dtypes[fragment["variable"]]
    if array.dtype != dtype or array.shape != (fragment["end"] - fragment["begin"],):
        raise CheckpointError(f"Shard {fragment['file']!r}: member {fragment['member']!r} has "
                              f"dtype {array.dtype} and shape {array.shape}; the manifest "
                              f"expects {dtype} and ({fragment['end'] - fragment['begin']},).")
    return array


def _whole_member(archive, entry, layout):
    array = _read_member(archive, entry)
    if entry["name"] == "touched_rows":
        try:
            _check_touched_rows(array, layout, entry["variable"], "touched_rows")
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Shard {entry['file']!r}: {exc}") from None
    return array


@contextlib.contextmanager
def _shard(directory, manifest, name):
    """The open archive of shard ``name`` (members read on access), once its signature,
    its digest in the manifest and its own metadata are checked."""
    path = os.path.join(directory, name)
    try:
        data, digest = _checkpoint.read_signed_digest(path)
    except FileNotFoundError:
        raise CheckpointError(f"Shard {name!r} of the checkpoint {directory!r} is missing.") \
            from None
    if not hmac.compare_digest(digest, manifest["digests"][name]):
        raise CheckpointError(f"Shard {path!r} does not match the manifest's SHA-256: it is from "
                              "another save, or it was changed.")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        metadata = json.loads(archive["metadata"].tobytes().decode("utf-8"))
    except Exception as exc:  # zipfile, npy-header, JSON and decoding errors alike
        raise CheckpointError(f"Shard {path!r} is not readable: {type(exc).__name__}: {exc}") \
            from exc
    with archive:
        fragments, kept = manifest["by_file"][name]
        expected = {"magic": SHARD_MAGIC, "token": manifest["token"],
                    "rank": manifest["ranks"][name],
                    "world_size": manifest["layout"].header["world_size"],
                    "fragments": [_without_file(f) for f in fragments],
                    "whole": [_without_file(w) for w in kept]}
        if metadata != expected:
            raise CheckpointError(f"Shard {path!r} does not describe itself as the manifest "
                                  "describes it.")
        listed = {"metadata"} | {e["member"] for e in fragments + kept}
        if set(archive.files) != listed:
            raise CheckpointError(f"Shard {path!r} holds other members than its metadata "
                                  "lists.")
        yield archive


def _without_file(entry):
    return {k: v for k, v in entry.items() if k != "file"}


def _read_single_file(path):
    """A format-1 file's state dict and its layout (its fields as a header)."""
    d = _checkpoint.read(path)
    try:
        config, raw, skipped, names, shapes, dtypes, _ = _state_dict.check_format(d)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r} is not a valid single-file checkpoint: {exc}") from None
    use_ema = config.get("use_ema", False)
    use_accumulator = config.get("gradient_accumulation_steps") is not None
    header = {"config": config, "raw_steps": raw, "iterations": d["iterations"],
              "skipped_steps": skipped, "names": list(names),
              "shapes": [list(s) for s in shapes], "dtypes": [t.name for t in dtypes],
              "slot_names": configured_slot_names(use_ema, use_accumulator),
              "world_size": 1, "zero_stage": 0}
    return d, _check_header(header, f"{path!r}")


def _single_file_slots(slots, layout):
    """Per slot name, the per-variable arrays of a format-1 slot list (EMA averages,
    accumulators, then m0, u0, m1, u1, ...)."""
    count, per_name, j = len(layout.sizes), {}, 0
    for name in ("ema", "accumulator"):
        if name in layout.slot_names:
            per_name[name], j = slots[j:j + count], j + count
    per_name["m"], per_name["u"] = slots[j::2], slots[j + 1::2]
    return per_name


def _single_file_order(per_name):
    """The format-1 slot list of per-variable arrays by slot name (the inverse of
    ``_single_file_slots``)."""
    return [*per_name.get("ema", ()), *per_name.get("accumulator", ()),
            *(a for pair in zip(per_name["m"], per_name["u"]) for a in pair)]


def _slice_single_file(d, layout, pieces):
    per_name = _single_file_slots(d["slots"], layout)
    slots = {name: [per_name[name][p.variable].reshape(-1)[p.begin:p.end].copy()
                    for p in pieces] for name in layout.slot_names}
    whole = {}
    if layout.use_accumulator:
        for variable in sorted({p.variable for p in pieces}):
            rows = d["touched_rows"][variable]
            if len(rows):
                whole[variable] = {"touched_rows": np.array(rows, np.int64)}
    return slots, whole


# ============================================================================ manifest

def _read_manifest(directory):
    """The checked manifest of the checkpoint ``directory``: its JSON fields plus
    ``layout`` (the checked header), ``digests`` and ``ranks`` (per shard file)."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{directory!r} has no {MANIFEST}: it is not a complete "
                              "checkpoint (a save that did not finish leaves none).") from None
    cut = data.rfind(b"\n" + _TRAILER) + 1
    trailer = data[cut:]
    if (not cut or len(trailer) != len(_TRAILER) + 65 or not trailer.endswith(b"\n")
            or not hmac.compare_digest(hashlib.sha256(data[:cut]).hexdigest().encode(),
                                       trailer[len(_TRAILER):-1])):
        raise CheckpointError(f"{path!r} failed its SHA-256 check: the manifest is corrupted, "
                              "truncated or not a numba_adamax manifest.")
    try:
        body = json.loads(data[:cut].decode("utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path!r} is not readable JSON: {exc}") from None
    try:
        return _check_manifest(body)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path!r} is not a valid numba_adamax manifest: "
                              f"{exc.args[0] if exc.args else exc}") from None


def _check_manifest(body):
    if not isinstance(body, dict) or body.get("magic") != MANIFEST_MAGIC:
        raise ValueError("wrong magic")
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version is {body.get('format_version')!r}; this version of "
                         f"numba_adamax reads {FORMAT_VERSION}")
    keys = {"magic", "format_version", "token", "header", "shards", "fragments", "whole"}
    if set(body) != keys:
        raise ValueError(f"fields {sorted(body)}; expected {sorted(keys)}")
    if not isinstance(body["token"], str):
        raise TypeError("token must be a str")
    layout = _check_header(body["header"], "header")
    world = layout.header["world_size"]
    shards = _entries(body["shards"], "shards", ("file", "rank", "sha256"))
    if sorted((s["rank"], s["file"]) for s in shards) != [
            (r, _shard_name(r, world)) for r in range(world)]:
        raise ValueError(f"shards must list {_shard_name(0, world)} ... "
                         f"{_shard_name(world - 1, world)}, one per rank")
    for s in shards:
        if not isinstance(s["sha256"], str) or not _HEX.fullmatch(s["sha256"]):
            raise ValueError(f"shard {s['file']!r}: sha256 must be 64 hex digits")
    files = {s["file"] for s in shards}
    fragments = _entries(body["fragments"], "fragments",
                         ("file", "slot", "variable", "begin", "end", "member"))
    held = {(slot, v): [] for slot in layout.slot_names for v in range(len(layout.sizes))}
    for f in fragments:
        _check_entry(f, files, layout)
        if f["slot"] not in layout.slot_names:
            raise ValueError(f"fragment {f}: unknown slot")
        if not (check.is_int(f["begin"]) and check.is_int(f["end"])
                and 0 <= f["begin"] < f["end"] <= layout.sizes[f["variable"]]):
            raise ValueError(f"fragment {f}: bad element range")
        held[f["slot"], f["variable"]].append((f["begin"], f["end"], repr(f["file"])))
    for (slot, v), ranges in held.items():
        _check_cover(sorted(ranges), layout.sizes[v], f"slot {slot!r} of variable {v}",
                     ValueError, "the fragments")
    kept = _entries(body["whole"], "whole", ("file", "variable", "name", "member"))
    for w in kept:
        _check_entry(w, files, layout)
        if not isinstance(w["name"], str):
            raise TypeError(f"whole entry {w}: name must be a str")
    if len({(w["variable"], w["name"]) for w in kept}) != len(kept):
        raise ValueError("an array kept whole is listed twice")
    by_file = {name: ([], []) for name in files}
    for f in fragments:
        by_file[f["file"]][0].append(f)
    for w in kept:
        by_file[w["file"]][1].append(w)
    return {**body, "layout": layout, "digests": {s["file"]: s["sha256"] for s in shards},
            "ranks": {s["file"]: s["rank"] for s in shards}, "by_file": by_file}


def _entries(value, label, keys):
    if not isinstance(value, list) or not all(
            isinstance(e, dict) and set(e) == set(keys) for e in value):
        raise ValueError(f"{label} must be a list of entries with the fields {list(keys)}")
    return value


def _check_entry(entry, files, layout):
    if entry["file"] not in files:
        raise ValueError(f"entry {entry}: the file is not one of the shards")
    if not check.is_int(entry["variable"]) or not 0 <= entry["variable"] < len(layout.sizes):
        raise ValueError(f"entry {entry}: bad variable index")
    if not isinstance(entry["member"], str):
        raise TypeError(f"entry {entry}: member must be a str")


# ============================================================================ consolidate

def consolidate(path, out) -> None:
    """Read every shard of the checkpoint directory ``path``, verify it, and write the
    single-file checkpoint ``out`` (the format ``na.save_state`` writes), which
    ``na.load_state`` / ``Adamax.load_state`` read into a one-process optimizer with the
    same variables and configuration. Needs no communicator.

    Raises ``CheckpointError`` for a missing, corrupted or foreign checkpoint,
    TypeError/ValueError for bad arguments; then nothing is written. ``out`` is replaced
    atomically. Mutates nothing else.
    """
    source = _path(path, "`path`")
    destination = _path(out, "`out`")
    if os.path.isfile(source):
        raise ValueError(f"`path` {source!r} is a file; consolidate reads a checkpoint "
                         "directory written by numba_adamax.distributed (a single file needs "
                         "no consolidation).")
    if not os.path.isdir(source):
        raise CheckpointError(f"There is no checkpoint at {source!r}.")
    if os.path.isdir(destination):
        raise ValueError(f"`out` {destination!r} is a directory; pass a file path.")
    if not os.path.isdir(os.path.dirname(destination)):
        raise ValueError(f"`out`: the directory {os.path.dirname(destination)!r} does not "
                         "exist; create it first.")
    if os.path.commonpath([source, destination]) == source:
        raise ValueError(f"`out` {destination!r} is inside the checkpoint directory; write it "
                         "elsewhere.")
    manifest = _read_manifest(source)
    layout = manifest["layout"]
    full = {name: [np.empty(size, dtype) for size, dtype in zip(layout.sizes, layout.slot_dtypes)]
            for name in layout.slot_names}
    touched: list[list[int]] = [[] for _ in layout.sizes] if layout.use_accumulator else []
    for shard in manifest["shards"]:  # every shard, the ones without fragments too
        fragments, kept = manifest["by_file"][shard["file"]]
        with _shard(source, manifest, shard["file"]) as archive:
            for fragment in fragments:
                full[fragment["slot"]][fragment["variable"]][fragment["begin"]:fragment["end"]] \
                    = _member(archive, fragment, layout)
            for entry in kept:
                array = _whole_member(archive, entry, layout)
                if entry["name"] == "touched_rows" and layout.use_accumulator:
                    touched[entry["variable"]] = array.tolist()
    ordered = _single_file_order({name: [a.reshape(s) for a, s in zip(arrays, layout.shapes)]
                                  for name, arrays in full.items()})
    header = layout.header
    d = {"format_version": _state_dict.STATE_FORMAT_VERSION, "config": header["config"],
         "raw_steps": header["raw_steps"], "iterations": header["iterations"],
         "skipped_steps": header["skipped_steps"], "names": header["names"],
         "shapes": header["shapes"], "dtypes": header["dtypes"], "slots": ordered,
         "touched_rows": touched}
    try:
        _state_dict.check_format(d)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source!r} does not make a valid single-file checkpoint: "
                              f"{exc}") from None
    _checkpoint.write(d, destination)


# ============================================================================ shared checks

def _check_comm(comm):
    if not isinstance(comm, Comm):
        raise TypeError(f"`comm` must be a numba_adamax.distributed communicator (SelfComm(), "
                        f"MPIComm(MPI.COMM_WORLD)), got {check.describe(comm)}.")


def _path(path, label):
    """``path`` as an absolute str path; TypeError unless it is a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{label} must be a str or an os.PathLike path, got "
                        f"{check.describe(path)}.")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise TypeError(f"{label} must name a path as a non-empty str, got {path!r}.")
    return os.path.abspath(path)


def _on_root(comm, function, *args):
    """Run ``function(*args)`` on rank 0, agree on its failure, and return its result on
    every rank (collective)."""
    result = together(comm, lambda: function(*args) if comm.rank == 0 else None)
    return comm.bcast_object(result, root=0)


def _json_bytes(value):
    return np.frombuffer(json.dumps(value, sort_keys=True, allow_nan=False).encode(), np.uint8)


def _check_header(header, label):
    """Check a header (the fields listed in ``HEADER_KEYS``; more JSON fields are kept)
    and return its ``_Layout``. Raises TypeError/ValueError naming the field; mutates
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
    return _Layout(header=header, names=names, shapes=shapes, dtypes=dtypes,
                   slot_dtypes=tuple(check.slot_dtype(t) for t in dtypes),
                   sizes=tuple(math.prod(s) for s in shapes), slot_names=tuple(slot_names),
                   use_accumulator=steps is not None)


def _prefixed(label, function, *args):
    """``function(*args)``, its TypeError/ValueError prefixed with ``label``."""
    try:
        return function(*args)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{label}: {exc}") from None
