"""The optimizer state as a plain dict, and the Keras ``variables`` weight list.

``state_dict`` snapshots an ``AdamaxState`` into NumPy arrays and plain Python
values; ``check`` validates a dict against a state without changing anything;
``apply`` writes an already checked dict. Loading is always check-then-apply, so a
refused dict leaves the state untouched. The same split serves the Keras layout
(``check_weights`` / ``apply_weights``: counter first, then the slots).
"""
import copy
import json

import numpy as np

from . import _validation as check
from ._host import copy_into, to_host


def json_config(hyperparameters):
    """``get_config()`` as plain JSON values (a copy). A callable learning rate cannot be
    saved and is recorded as ``None``; a config that is not JSON-able raises TypeError."""
    config = hyperparameters.get_config()
    if callable(config["learning_rate"]):
        config["learning_rate"] = None
    try:
        return json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"The optimizer config cannot be saved as JSON: {exc}") from None


def state_dict(state):
    """A snapshot of ``state``: format version, JSON config, counters, variable names,
    shapes and dtypes, a NumPy copy of every slot in ``variables`` order (EMA
    averages, accumulators, then m0, u0, m1, u1, ...), and the rows sparse gradients
    touched in the open accumulation window. Mutates nothing."""
    return {
        "format_version": check.STATE_FORMAT_VERSION,
        "config": json_config(state.hyperparameters),
        "raw_steps": state.raw_steps,
        "iterations": state.iterations,
        "skipped_steps": state.skipped_steps,
        "names": list(state.names),
        "shapes": [list(p.shape) for p in state.arrays],
        "dtypes": [p.dtype.name for p in state.arrays],
        "slots": [to_host(a) for a in state.state_arrays()],
        "touched_rows": [state.touched(i).tolist()
                         for i in range(len(state.params))] if state.tracks_touched_rows else [],
    }


def check_state_dict(d, state=None):
    """Validate ``d`` on its own and, when ``state`` is given, against it (names, shapes,
    dtypes, ``use_ema``, ``gradient_accumulation_steps``). Raises ``TypeError`` or
    ``ValueError`` naming the field; mutates nothing. Returns the normalised fields for
    ``apply_state_dict``."""
    saved = check.state_dict(d)
    if state is not None:
        check.state_dict_matches(saved, state)
    return saved


def apply_state_dict(d, saved, state):
    """Write a dict ``check_state_dict(d, state)`` accepted (``saved``) into ``state``:
    every slot, ``raw_steps``, ``skipped_steps`` and the touched-row masks of the
    open accumulation window. Mutates ``state``."""
    _, raw_steps, skipped_steps, *_, touched = saved
    for source, target in zip(d["slots"], state.state_arrays()):
        copy_into(target, source)
    state.set_touched_rows(touched)
    state.raw_steps = raw_steps
    state.skipped_steps = skipped_steps


def load_state_dict(state, d):
    """Check ``d`` against ``state``, then write it. Nothing changes if a check fails."""
    apply_state_dict(d, check_state_dict(d, state), state)


def detached(d):
    """A deep copy of a state dict (its arrays copied), so a pending load cannot be
    changed through the caller's references."""
    result = copy.deepcopy({k: v for k, v in d.items() if k != "slots"})
    result["slots"] = [np.array(a, copy=True) for a in d["slots"]]
    return result


# ---------------------------------------------------------------- Keras layout

def weights(state):
    """Host copies in Keras' ``variables`` order: the 0-d int64 call counter, then the
    slots (a counter alone when ``state`` is None)."""
    counter = np.array(0 if state is None else state.raw_steps, np.int64)
    return [counter] + ([] if state is None else [to_host(a) for a in state.state_arrays()])


def check_weights(state, weights, what="set_weights"):
    """Check a Keras-order weight list against ``state``: the exact count, a 0-d
    non-negative integer counter first, then one array per slot with the slot's shape
    (``ValueError``) and dtype (``TypeError``). Mutates nothing. Returns
    ``(raw_steps, arrays)``."""
    weights = check.sequence(weights, "`weights`")
    targets = state.state_arrays()
    if len(weights) != len(targets) + 1:
        raise ValueError(f"`{what}` expected {len(targets) + 1} arrays (counter first), "
                         f"got {len(weights)}.")
    counter = np.asarray(weights[0])
    if counter.shape != () or counter.dtype.kind not in "iu" or int(counter) < 0:
        raise ValueError(f"weights[0] must be a non-negative integer counter, got {weights[0]!r}.")
    arrays = [np.asarray(w) for w in weights[1:]]
    for j, (src, dst) in enumerate(zip(arrays, targets), start=1):
        if src.shape != dst.shape:
            raise ValueError(f"weights[{j}] has shape {src.shape}; expected {dst.shape}.")
        if src.dtype != dst.dtype:
            raise TypeError(f"weights[{j}] has dtype {src.dtype}; expected {dst.dtype}.")
    return int(counter), arrays


def apply_weights(state, checked):
    """Write what ``check_weights`` returned into ``state`` (slots and ``raw_steps``)."""
    raw_steps, arrays = checked
    for src, dst in zip(arrays, state.state_arrays()):
        copy_into(dst, src)
    state.raw_steps = raw_steps
