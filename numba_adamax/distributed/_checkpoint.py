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

import copy
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import _checkpoint, _state_dict
from .. import _validation as check
from .._checkpoint import CheckpointError
from . import _checkpoint_files as files
from ._checkpoint_layout import (Piece, absolute_path, check_comm, check_group, check_header,
                                 check_pieces, check_slots, check_whole)
from ._collective import AGREED, together
from ._comm import Comm

__all__ = ["Piece", "consolidate", "load", "save", "verify"]


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
    check_comm(comm)
    target, layout, pieces, slots, whole = together(
        comm, _check_save, path, comm, header, pieces, slots, whole)
    summary = comm.allgather_object((target, json.dumps(layout.header, sort_keys=True),
                                     [(p.variable, p.begin, p.end) for p in pieces],
                                     sorted(whole)))
    check_group(summary, layout)
    temporary, token = _on_root(comm, files.make_temporary, target)
    try:
        written = together(comm, files.write_shard, temporary, token, comm, layout, pieces, slots,
                           whole)
        written = comm.allgather_object(written)
        _on_root(comm, files.write_manifest, temporary, token, layout, written)
        _on_root(comm, files.commit, temporary, target, token)
    except AGREED:
        if comm.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    comm.barrier()


def _check_save(path, comm, header, pieces, slots, whole):
    target = files.target_directory(path)
    layout = check_header(header, "`header`")
    if layout.header["world_size"] != comm.size:
        raise ValueError(f"`header`['world_size'] is {layout.header['world_size']}, but the "
                         f"communicator has {comm.size} ranks.")
    pieces = check_pieces(pieces, layout)
    slots = check_slots(slots, pieces, layout)
    whole = check_whole(whole, layout)
    return target, layout, pieces, slots, whole


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
    check_comm(comm)
    result = together(comm, _load_local, path, pieces, expect)
    tokens = comm.allgather_object(result[0])
    if len(set(tokens)) > 1:
        raise CheckpointError(f"The checkpoint {os.fspath(path)!r} was replaced while it was "
                              "being loaded (the ranks read different saves); load it again.")
    return result[1:]


def _load_local(path, pieces, expect):
    source = absolute_path(path, "`path`")
    check.sequence(pieces, "`pieces`", "a list or a tuple of Piece")
    if not callable(expect):
        raise TypeError(f"`expect` must be a callable taking the header, got "
                        f"{check.describe(expect)}.")
    if os.path.isdir(source):
        manifest = files.read_manifest(source)
        single, layout = None, manifest["layout"]
    elif os.path.isfile(source):
        manifest = None
        single, layout = files.read_single_file(source)
    else:
        raise CheckpointError(f"There is no checkpoint at {source!r}.")
    pieces = check_pieces(pieces, layout)
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
    check_comm(comm)
    return together(comm, _verify_local, path, comm.rank, comm.size)


def _verify_local(path, rank, size):
    source = absolute_path(path, "`path`")
    if os.path.isdir(source):
        manifest = files.read_manifest(source)
        layout = manifest["layout"]
        for shard in manifest["shards"][rank::size]:
            fragments, kept = manifest["by_file"][shard["file"]]
            with files.open_shard(source, manifest, shard["file"]) as archive:
                for fragment in fragments:
                    files.member(archive, fragment, layout)
                for entry in kept:
                    files.whole_member(archive, entry, layout)
    elif os.path.isfile(source):
        layout = files.read_single_file(source)[1]
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
        with files.open_shard(directory, manifest, name) as archive:
            for fragment in fragments:
                source = files.member(archive, fragment, layout)
                for i, piece in by_variable[fragment["variable"]]:
                    begin = max(piece.begin, fragment["begin"])
                    end = min(piece.end, fragment["end"])
                    if begin < end:
                        slots[fragment["slot"]][i][begin - piece.begin:end - piece.begin] = \
                            source[begin - fragment["begin"]:end - fragment["begin"]]
            for entry in kept:
                whole.setdefault(entry["variable"], {})[entry["name"]] = \
                    files.whole_member(archive, entry, layout)
    return slots, {v: whole[v] for v in sorted(whole)}


def _slice_single_file(d, layout, pieces):
    per_name = files.single_file_slots(d["slots"], layout)
    slots = {name: [per_name[name][p.variable].reshape(-1)[p.begin:p.end].copy()
                    for p in pieces] for name in layout.slot_names}
    whole = {}
    if layout.use_accumulator:
        for variable in sorted({p.variable for p in pieces}):
            rows = d["touched_rows"][variable]
            if len(rows):
                whole[variable] = {"touched_rows": np.array(rows, np.int64)}
    return slots, whole


def consolidate(path, out) -> None:
    """Read every shard of the checkpoint directory ``path``, verify it, and write the
    single-file checkpoint ``out`` (the format ``na.save_state`` writes), which
    ``na.load_state`` / ``Adamax.load_state`` read into a one-process optimizer with the
    same variables and configuration. Needs no communicator.

    Raises ``CheckpointError`` for a missing, corrupted or foreign checkpoint,
    TypeError/ValueError for bad arguments; then nothing is written. ``out`` is replaced
    atomically. Mutates nothing else.
    """
    source = absolute_path(path, "`path`")
    destination = absolute_path(out, "`out`")
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
    manifest = files.read_manifest(source)
    layout = manifest["layout"]
    full = {name: [np.empty(size, dtype) for size, dtype in zip(layout.sizes, layout.slot_dtypes)]
            for name in layout.slot_names}
    touched: list[list[int]] = [[] for _ in layout.sizes] if layout.use_accumulator else []
    for shard in manifest["shards"]:  # every shard, the ones without fragments too
        fragments, kept = manifest["by_file"][shard["file"]]
        with files.open_shard(source, manifest, shard["file"]) as archive:
            for fragment in fragments:
                full[fragment["slot"]][fragment["variable"]][fragment["begin"]:fragment["end"]] \
                    = files.member(archive, fragment, layout)
            for entry in kept:
                array = files.whole_member(archive, entry, layout)
                if entry["name"] == "touched_rows" and layout.use_accumulator:
                    touched[entry["variable"]] = array.tolist()
    ordered = files.single_file_order({name: [a.reshape(s) for a, s in zip(arrays, layout.shapes)]
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


def _on_root(comm, function, *args):
    """Run ``function(*args)`` on rank 0, agree on its failure, and return its result on
    every rank (collective)."""
    result = together(comm, lambda: function(*args) if comm.rank == 0 else None)
    return comm.bcast_object(result, root=0)
