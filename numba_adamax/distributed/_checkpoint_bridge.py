"""What a ``ShardedState`` hands to the sharded checkpoint files (``_checkpoint``) and
takes back from them: the header, this rank's pieces and their slot elements, and the
touched rows of the sparse variables it owns."""
import os

import numpy as np

from .. import _state_dict
from .._hyperparameters import Hyperparameters
from .._checkpoint import CheckpointError
from ._checkpoint import Piece
from ._checkpoint import consolidate as consolidate_files
from ._checkpoint import load as load_files
from ._checkpoint import save as save_files
from ._checkpoint import verify
from ._collective import together
from ._comm import Comm
from ._buffers import host_copy, write_host


def _pieces(state, loading):
    """``(Piece list, local index per piece)`` of the elements this rank saves or loads.

    Stage 1: its shard. Stage 0 keeps every slot on every rank: each rank saves the
    shard a ZeRO plan gives it (the files are then the same as at stage 1), and loads
    every variable whole."""
    local_of = {p.variable: j for j, p in enumerate(state.pieces) if p.whole}
    if state.zero_stage == 1:
        return ([Piece(p.variable, p.begin, p.end) for p in state.pieces],
                list(range(len(state.pieces))))
    if loading:
        pieces = list(state.pieces)
    else:
        pieces = state.plan.pieces(state.comm.rank)
    return ([Piece(p.variable, p.begin, p.end) for p in pieces],
            [local_of[p.variable] for p in pieces])


def header(state):
    """The checkpoint header (identical on every rank)."""
    return {"config": _state_dict.json_config(state.hyperparameters),
            "raw_steps": state.raw_steps, "iterations": state.iterations,
            "skipped_steps": state.skipped_steps, "names": list(state.names),
            "shapes": [list(a.shape) for a in state.arrays],
            "dtypes": [a.dtype.name for a in state.arrays],
            "slot_names": state.slot_names(), "world_size": state.comm.size,
            "zero_stage": state.zero_stage}


def save(state, path):
    """Write this rank's part of the checkpoint at ``path`` (collective). Mutates only
    the files."""
    pieces, local = _pieces(state, loading=False)
    slots = {name: [_elements(state, j, piece, name) for piece, j in zip(pieces, local)]
             for name in state.slot_names()}
    whole = {}
    if state.local is not None and state.local.window is not None:
        for piece, j in zip(pieces, local):
            if piece.variable in state.plan.sparse:
                whole[piece.variable] = {"touched_rows": state.local.touched(j)}
    save_files(path, state.comm, header=header(state), pieces=pieces, slots=slots,
               whole=whole)


def _elements(state, j, piece, name):
    """Piece ``piece``'s elements of slot ``name`` from local variable ``j`` (a copy)."""
    view = host_copy(state.local.slot(j, name)).reshape(-1)
    p = state.pieces[j]
    return np.array(view[piece.begin - p.begin:piece.end - p.begin], copy=True)


def load(state, path):
    """Replace this rank's slots, its accumulation window's touched rows and the
    counters with the checkpoint at ``path`` (collective); every rank raises
    ``CheckpointError`` and nothing changes on any rank when the checkpoint is missing,
    damaged, foreign or does not match."""
    pieces, local = _pieces(state, loading=True)
    saved, slots, whole = load_files(path, state.comm, pieces=pieces,
                                     expect=lambda h: expect(state, h))
    for name, arrays in slots.items():
        for j, array in zip(local, arrays):
            write_host(state.local.slot(j, name), np.asarray(array))
    state.raw_steps = int(saved["raw_steps"])
    state.skipped_steps = int(saved["skipped_steps"])
    if state.local is not None:
        state.local.raw_steps, state.local.skipped_steps = state.raw_steps, state.skipped_steps
        if state.local.window is not None:
            rows = [[] for _ in state.pieces]
            for j, p in enumerate(state.pieces):
                if p.variable in whole and "touched_rows" in whole[p.variable]:
                    rows[j] = list(np.asarray(whole[p.variable]["touched_rows"]))
            state.local.window.replace(rows)


def _config_matches(saved, hyperparameters):
    try:
        _state_dict.state_dict_config_matches(saved.get("config", {}), hyperparameters)
    except ValueError as exc:
        raise CheckpointError(f"The checkpoint is of another configuration: {exc}") from None


def expect(state, saved):
    """Raise ``CheckpointError`` when the checkpoint header ``saved`` does not describe
    this optimizer's configuration, variables and slots."""
    _config_matches(saved, state.hyperparameters)
    ours = header(state)
    for field in ("names", "shapes", "dtypes", "slot_names"):
        if list(saved.get(field, [])) != ours[field]:
            raise CheckpointError(f"The checkpoint's {field} are {saved.get(field)}; this "
                                  f"optimizer has {ours[field]}.")


def check(comm: Comm, hyperparameters: Hyperparameters, path: str | os.PathLike) -> None:
    """Check the checkpoint at ``path`` for an optimizer not built yet (collective): its
    files (``_checkpoint.verify``) and the slot-deciding settings. Raises
    ``CheckpointError`` on every rank; mutates nothing."""
    saved = verify(path, comm)
    together(comm, _config_matches, saved, hyperparameters)


def consolidate(path, out) -> None:
    """Turn the sharded checkpoint directory ``path`` into one file ``out`` that
    ``numba_adamax.load_state`` reads (offline: no communicator needed). Mutates only
    ``out``."""
    consolidate_files(path, out)
