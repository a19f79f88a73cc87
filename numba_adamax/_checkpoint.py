"""Checkpoint files: one ``.npz`` archive holding a state dict.

Layout: a ZIP archive of ``.npy`` members, so ``numpy.load`` opens it and loading
never needs pickle:

* ``metadata.npy``: uint8 array, the UTF-8 JSON of every state-dict field except the
  slots, plus ``"magic"`` and ``"slot_count"``;
* ``slot_00000.npy``, ``slot_00001.npy``, ...: the slots in ``variables`` order;
* the archive comment: ``SIGNATURE`` followed by the hex SHA-256 of every byte of the
  file before those 64 hex digits. Any truncation or changed byte anywhere in the
  file (data, headers or the digest itself) is therefore detected.

Writing goes to a temporary file in the target's directory, which is flushed,
``fsync``-ed and renamed over the target with ``os.replace``; the directory is then
``fsync``-ed. A reader sees the old file or the new one, never a mix.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from . import _state_dict
from . import _validation as check
from ._state import AdamaxState
from ._typing import PathLike

MAGIC = "numba_adamax.checkpoint"
SIGNATURE = b"numba_adamax.checkpoint sha256="
_HEX = 64  # length of a hex SHA-256


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, corrupted, or not a
    numba_adamax checkpoint."""


def _slot_key(j):
    return f"slot_{j:05d}"


def write(d, path):
    """Write the state dict ``d`` to ``path`` atomically (see the module docstring).

    ``d`` is written as given (``save_state`` passes a fresh ``state_dict()``); its
    non-slot fields must be JSON values. On any failure the previous file at ``path``
    is intact and the temporary file is removed.
    """
    fields = {k: v for k, v in d.items() if k != "slots"}
    fields["magic"] = MAGIC
    fields["slot_count"] = len(d["slots"])
    metadata = json.dumps(fields, sort_keys=True, allow_nan=False).encode()
    arrays = {"metadata": np.frombuffer(metadata, np.uint8)}
    arrays.update((_slot_key(j), np.asarray(a)) for j, a in enumerate(d["slots"]))
    write_signed(os.fspath(path), arrays)


def write_signed(path, arrays):
    """Write the named arrays ``arrays`` as one signed ``.npz`` archive at ``path``,
    atomically (see the module docstring). Returns the hex SHA-256 of the whole file
    as written. On any failure the previous file at ``path`` is intact."""
    return atomic_write(path, lambda f: _write_archive(f, arrays))


def _write_archive(f, arrays):
    """Write ``arrays`` as a signed ``.npz`` archive into the binary file ``f``; return
    the hex SHA-256 of the complete file (signature included)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        archive.comment = SIGNATURE + b"0" * _HEX
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    digest = hashlib.sha256()
    remaining = size - _HEX
    while remaining:
        chunk = f.read(min(remaining, 1 << 20))
        digest.update(chunk)
        remaining -= len(chunk)
    signature = digest.hexdigest().encode("ascii")
    f.write(signature)
    digest.update(signature)
    return digest.hexdigest()


def atomic_write(path, fill):
    """Create or replace the file ``path`` atomically: ``fill(f)`` writes the content
    into ``f``, a temporary file opened ``w+b`` in the same directory, which is then
    flushed, ``fsync``-ed and renamed over ``path``; the directory is ``fsync``-ed.
    Returns what ``fill`` returned. On any failure the previous file at ``path`` is
    intact and the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "w+b") as f:
            result = fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)
    return result


def fsync_directory(directory):
    """Make renames and new entries in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name == "posix":
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read(path):
    """Read a checkpoint written by ``write`` and return its state dict (not yet
    validated against any optimizer). The file is read once, its signature checked,
    then parsed from memory. Raises ``CheckpointError`` when it is not a complete,
    unmodified checkpoint; ``OSError`` (e.g. ``FileNotFoundError``) when it cannot be
    opened. Never unpickles anything."""
    path = os.fspath(path)
    data = read_signed(path)
    try:
        return _parse(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path!r}: {exc}") from None
    except Exception as exc:  # zipfile, npy-header, JSON and decoding errors alike
        raise CheckpointError(f"{path!r} is not a readable numba_adamax checkpoint: "
                              f"{type(exc).__name__}: {exc}") from exc


def read_signed(path):
    """The bytes of the signed archive at ``path``, once its signature is checked.
    Raises ``CheckpointError`` when the signature is missing or does not match;
    ``OSError`` when the file cannot be read. Mutates nothing."""
    return read_signed_digest(path)[0]


def read_signed_digest(path):
    """``(data, digest)``: what ``read_signed`` returns, and the hex SHA-256 of the whole
    file (signature included), the value ``write_signed`` returned."""
    with open(path, "rb") as f:
        data = f.read()
    tail = data[-(len(SIGNATURE) + _HEX):]
    if not tail.startswith(SIGNATURE):
        raise CheckpointError(f"{path!r} is not a numba_adamax checkpoint, or it is truncated "
                              "(no signature at its end).")
    digest = hashlib.sha256(memoryview(data)[:len(data) - _HEX])
    if not hmac.compare_digest(digest.hexdigest().encode(), tail[-_HEX:]):
        raise CheckpointError(f"{path!r} failed its SHA-256 check: the file is corrupted.")
    digest.update(tail[-_HEX:])
    return data, digest.hexdigest()


def _parse(data):
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        files = set(archive.files)
        if "metadata" not in files:
            raise CheckpointError("no metadata entry.")
        metadata = archive["metadata"]
        if metadata.dtype != np.uint8 or metadata.ndim != 1:
            raise CheckpointError("the metadata entry is not a 1-D uint8 array.")
        fields = json.loads(metadata.tobytes().decode("utf-8"))
        if not isinstance(fields, dict) or fields.pop("magic", None) != MAGIC:
            raise CheckpointError("not a numba_adamax checkpoint (wrong magic).")
        count = fields.pop("slot_count", None)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CheckpointError(f"bad slot count {count!r}.")
        if files != {"metadata"} | {_slot_key(j) for j in range(count)}:
            raise CheckpointError(f"the archive's entries {sorted(files)} do not match "
                                  f"{count} slots.")
        fields["slots"] = [archive[_slot_key(j)] for j in range(count)]
    return fields


def save_state(state: AdamaxState, path: PathLike) -> None:
    """Save the functional ``AdamaxState`` ``state`` to ``path`` (one ``.npz`` file,
    written atomically, with a checksum). Mutates nothing but the file. ``state`` must be
    an ``AdamaxState`` (TypeError otherwise; an ``Adamax`` has ``save_state(path)``)."""
    check.adamax_state(state, AdamaxState, "save_state", "save_state(path)")
    write(_state_dict.state_dict(state), path)


def load_state(state: AdamaxState, path: PathLike) -> None:
    """Restore ``state`` (an ``AdamaxState`` built for the same variables) from a file
    written by ``save_state``. The file and its contents are fully checked first: on
    ``CheckpointError``/``ValueError``/``TypeError`` nothing has changed. ``state`` must
    be an ``AdamaxState`` (TypeError otherwise, before the file is read; an ``Adamax``
    has ``load_state(path)``)."""
    check.adamax_state(state, AdamaxState, "load_state", "load_state(path)")
    _state_dict.load_state_dict(state, read(path))
