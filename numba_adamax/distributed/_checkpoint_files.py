"""The files of a sharded checkpoint (the layout is in ``_checkpoint``'s docstring): the
shard archives and the signed manifest, written and read back with every check, the
commit of a save's temporary directory, and a single-file checkpoint read as a header
and slots. Failures of the files raise ``CheckpointError``; nothing here communicates."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import shutil
import sys

import numpy as np

from .. import _checkpoint, _state_dict
from .. import _validation as check
from .._checkpoint import CheckpointError
from .._state import slot_names as configured_slot_names
from ._checkpoint_layout import absolute_path, check_cover, check_header, check_touched_rows

MANIFEST = "manifest.json"


MANIFEST_MAGIC = "numba_adamax.distributed.manifest"


SHARD_MAGIC = "numba_adamax.distributed.shard"


#: The version of the manifest layout this code writes and reads.
FORMAT_VERSION = 1


_SHARD_NAME = re.compile(r"shard-(\d{5,})-of-(\d{5,})\.npz")


_HEX = re.compile(r"[0-9a-f]{64}")


_TRAILER = b"sha256="


def target_directory(path):
    """The absolute path of the directory a save may create or replace."""
    target = absolute_path(path, "`path`")
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


def make_temporary(target):
    token = secrets.token_hex(8)
    temporary = os.path.join(os.path.dirname(target),
                             f".{os.path.basename(target)}.tmp-{token}")
    os.mkdir(temporary)
    return temporary, token


def shard_name(rank, size):
    return f"shard-{rank:05d}-of-{size:05d}.npz"


def json_bytes(value):
    return np.frombuffer(json.dumps(value, sort_keys=True, allow_nan=False).encode(), np.uint8)


def write_shard(temporary, token, comm, layout, pieces, slots, whole):
    """Write this rank's shard into ``temporary``; return its file name, digest and
    entries (for the manifest)."""
    name = shard_name(comm.rank, comm.size)
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
    arrays = {"metadata": json_bytes(metadata), **arrays}
    digest = _checkpoint.write_signed(os.path.join(temporary, name), arrays)
    return name, digest, fragments, kept


def write_manifest(temporary, token, layout, written):
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


def commit(temporary, target, token):
    """Put the complete checkpoint ``temporary`` at ``target`` (rank 0 only)."""
    parent = os.path.dirname(target)
    if not os.path.lexists(target):
        os.rename(temporary, target)
    elif exchange(temporary, target):
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


def exchange(a, b):
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


def read_manifest(directory):
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
    layout = check_header(body["header"], "header")
    world = layout.header["world_size"]
    shards = _entries(body["shards"], "shards", ("file", "rank", "sha256"))
    if sorted((s["rank"], s["file"]) for s in shards) != [
            (r, shard_name(r, world)) for r in range(world)]:
        raise ValueError(f"shards must list {shard_name(0, world)} ... "
                         f"{shard_name(world - 1, world)}, one per rank")
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
        check_cover(sorted(ranges), layout.sizes[v], f"slot {slot!r} of variable {v}",
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


@contextlib.contextmanager
def open_shard(directory, manifest, name):
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


def _read_member(archive, entry):
    try:
        return archive[entry["member"]]
    except Exception as exc:  # zipfile and npy-header errors alike
        raise CheckpointError(f"Shard {entry['file']!r}: member {entry['member']!r} is not "
                              f"readable: {type(exc).__name__}: {exc}") from exc


def member(archive, fragment, layout):
    array = _read_member(archive, fragment)
    dtype = layout.slot_dtypes[fragment["variable"]]
    if array.dtype != dtype or array.shape != (fragment["end"] - fragment["begin"],):
        raise CheckpointError(f"Shard {fragment['file']!r}: member {fragment['member']!r} has "
                              f"dtype {array.dtype} and shape {array.shape}; the manifest "
                              f"expects {dtype} and ({fragment['end'] - fragment['begin']},).")
    return array


def whole_member(archive, entry, layout):
    array = _read_member(archive, entry)
    if entry["name"] == "touched_rows":
        try:
            check_touched_rows(array, layout, entry["variable"], "touched_rows")
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Shard {entry['file']!r}: {exc}") from None
    return array


def _without_file(entry):
    return {k: v for k, v in entry.items() if k != "file"}


def read_single_file(path):
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
    return d, check_header(header, f"{path!r}")


def single_file_slots(slots, layout):
    """Per slot name, the per-variable arrays of a format-1 slot list (EMA averages,
    accumulators, then m0, u0, m1, u1, ...)."""
    count, per_name, j = len(layout.sizes), {}, 0
    for name in ("ema", "accumulator"):
        if name in layout.slot_names:
            per_name[name], j = slots[j:j + count], j + count
    per_name["m"], per_name["u"] = slots[j::2], slots[j + 1::2]
    return per_name


def single_file_order(per_name):
    """The format-1 slot list of per-variable arrays by slot name (the inverse of
    ``single_file_slots``)."""
    return [*per_name.get("ema", ()), *per_name.get("accumulator", ()),
            *(a for pair in zip(per_name["m"], per_name["u"]) for a in pair)]
