"""The optimizer state as a plain dict (its format, writer and reader checks), and
the Keras ``variables`` weight list.

``state_dict`` snapshots an ``AdamaxState`` into NumPy arrays and plain Python values;
``check_state_dict`` validates a dict (on its own, then against a state) without changing
anything; ``apply_state_dict`` writes an already checked dict. Loading is always
check-then-apply, so a refused dict leaves the state untouched. The same split serves the
Keras layout (``check_weights`` / ``apply_weights``: counter first, then the slots).
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
        "format_version": STATE_FORMAT_VERSION,
        "config": json_config(state.hyperparameters),
        "raw_steps": state.raw_steps,
        "iterations": state.iterations,
        "skipped_steps": state.skipped_steps,
        "names": list(state.names),
        "shapes": [list(p.shape) for p in state.arrays],
        "dtypes": [p.dtype.name for p in state.arrays],
        "slots": [to_host(a) for a in state.state_arrays()],
        "touched_rows": touched_rows(state),
    }


def touched_rows(state):
    """Per variable, the list of rows touched in the open accumulation window (an empty
    list without accumulation)."""
    if state.window is None:
        return []
    return [state.window.touched(i).tolist() for i in range(len(state.params))]


def check_state_dict(d, state=None):
    """Validate ``d`` on its own and, when ``state`` is given, against it (names, shapes,
    dtypes, ``use_ema``, ``gradient_accumulation_steps``). Raises ``TypeError`` or
    ``ValueError`` naming the field; mutates nothing. Returns the normalised fields for
    ``apply_state_dict``."""
    saved = check_format(d)
    if state is not None:
        state_dict_matches(saved, state)
    return saved


def apply_state_dict(d, saved, state):
    """Write a dict ``check_state_dict(d, state)`` accepted (``saved``) into ``state``:
    every slot, ``raw_steps``, ``skipped_steps`` and the touched-row masks of the
    open accumulation window. Mutates ``state``."""
    _, raw_steps, skipped_steps, *_, touched = saved
    write(state, d["slots"], raw_steps, skipped_steps, touched)


def write(state, slots, raw_steps, skipped_steps, touched):
    """Write checked values into ``state``: ``slots`` (host arrays in ``variables``
    order), the counters and the touched rows of the open accumulation window (one
    row list per variable; ignored without accumulation). Mutates ``state``."""
    for source, target in zip(slots, state.state_arrays()):
        copy_into(target, source)
    if state.window is not None:
        state.window.replace(touched)
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


# ---------------------------------------------------------------- the format

#: The version of the ``state_dict`` layout this code writes and reads.
STATE_FORMAT_VERSION = 1

STATE_DICT_KEYS = ("format_version", "config", "raw_steps", "iterations", "skipped_steps",
                   "names", "shapes", "dtypes", "slots", "touched_rows")


def counter(value, label, expected="an integer >= 0"):
    """A saved counter: an int (Python or NumPy, or a 0-d integer array) >= 0, as int;
    else ValueError saying ``label`` must be ``expected``."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        value = value[()]
    if not check.is_int(value) or value < 0:
        raise ValueError(f"{label} must be {expected}, got {value!r}.")
    return int(value)


def saved_array(value, shape, dtype, label):
    """A saved slot: a numpy array with exactly ``shape`` and ``dtype``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{label} must be a numpy.ndarray, got {check.describe(value)}.")
    if value.shape != tuple(shape):
        raise ValueError(f"{label} has shape {value.shape}; expected {tuple(shape)}.")
    if value.dtype != dtype:
        raise TypeError(f"{label} has dtype {value.dtype}; expected {np.dtype(dtype)}.")


def check_format(d):
    """Check the self-consistency of a ``state_dict`` (no optimizer needed); mutates nothing.

    Checks the key set, ``format_version``, the counters (``iterations`` must equal
    ``raw_steps`` or ``raw_steps // gradient_accumulation_steps`` of the saved
    ``config``), the ``names`` / ``shapes`` / ``dtypes`` lists, and that ``slots`` holds
    one array per slot of the saved configuration, each with its variable's shape and
    dtype, in ``variables`` order (EMA averages, accumulators, then m, u per variable).
    ``touched_rows`` lists, per variable, the rows sparse gradients touched in the
    open accumulation window (an empty list without accumulation). Raises
    ``TypeError``/``ValueError`` naming the field. Returns ``(config, raw_steps,
    skipped_steps, names, shapes, dtypes, touched_rows)`` normalised (tuples,
    ``np.dtype``).
    """
    if not isinstance(d, dict):
        raise TypeError(f"A state dict must be a dict, got {check.describe(d)}.")
    missing = [k for k in STATE_DICT_KEYS if k not in d]
    unknown = sorted(str(k) for k in d if k not in STATE_DICT_KEYS)
    if missing or unknown:
        raise ValueError(f"State dict keys do not match: missing {missing}, unknown {unknown}.")
    version = d["format_version"]
    if not check.is_int(version) or version != STATE_FORMAT_VERSION:
        raise ValueError(f"State dict field 'format_version' is {version!r}; this version of "
                         f"numba_adamax reads format {STATE_FORMAT_VERSION} only.")
    config = d["config"]
    if not isinstance(config, dict):
        raise TypeError(f"State dict field 'config' must be a dict, got {check.describe(config)}.")
    use_ema = config.get("use_ema", False)
    steps = config.get("gradient_accumulation_steps")
    if not isinstance(use_ema, bool):
        raise ValueError(f"State dict field 'config': use_ema must be a bool, got {use_ema!r}.")
    if steps is not None:
        check.gradient_accumulation_steps(steps)
    raw = counter(d["raw_steps"], "State dict field 'raw_steps'")
    iterations = counter(d["iterations"], "State dict field 'iterations'")
    skipped = counter(d["skipped_steps"], "State dict field 'skipped_steps'")
    if iterations != (raw // steps if steps else raw):
        raise ValueError(f"State dict field 'iterations' is {iterations}, inconsistent with "
                         f"raw_steps={raw} and gradient_accumulation_steps={steps}.")
    saved_names = d["names"]
    if not isinstance(saved_names, (list, tuple)) or not saved_names:
        raise ValueError("State dict field 'names' must be a non-empty list of str.")
    count = len(saved_names)
    saved_names = check.names(saved_names, count)
    shapes, dtypes = d["shapes"], d["dtypes"]
    if not isinstance(shapes, (list, tuple)) or len(shapes) != count:
        raise ValueError(f"State dict field 'shapes' must be a list of {count} shapes.")
    if not isinstance(dtypes, (list, tuple)) or len(dtypes) != count:
        raise ValueError(f"State dict field 'dtypes' must be a list of {count} dtype names.")
    shapes = tuple(check.shape(s, f"State dict field 'shapes'[{i}]")
                   for i, s in enumerate(shapes))
    dtypes = tuple(_saved_dtype(t, f"State dict field 'dtypes'[{i}]") for i, t in enumerate(dtypes))
    slots = d["slots"]
    use_accumulator = steps is not None
    per_variable = 2 + use_ema + use_accumulator
    if not isinstance(slots, (list, tuple)) or len(slots) != per_variable * count:
        got = len(slots) if isinstance(slots, (list, tuple)) else check.describe(slots)
        raise ValueError(f"State dict field 'slots' must be a list of {per_variable * count} "
                         f"arrays ({per_variable} per variable); got {got}.")
    for j, i in enumerate(slot_owners(count, use_ema, use_accumulator)):
        saved_array(slots[j], shapes[i], check.slot_dtype(dtypes[i]),
                    f"State dict field 'slots'[{j}] (variable {saved_names[i]!r})")
    touched = _touched_rows(d["touched_rows"], shapes, use_accumulator)
    return config, raw, skipped, saved_names, shapes, dtypes, touched


def _touched_rows(value, shapes, use_accumulator):
    label = "State dict field 'touched_rows'"
    expected = len(shapes) if use_accumulator else 0
    if not isinstance(value, (list, tuple)) or len(value) != expected:
        raise ValueError(f"{label} must be a list of {expected} row lists.")
    rows = []
    for i, (entry, shape) in enumerate(zip(value, shapes)):
        limit = shape[0] if shape else 1
        if not isinstance(entry, (list, tuple)) or not all(
                check.is_int(r) and 0 <= r < limit for r in entry):
            raise ValueError(f"{label}[{i}] must be a list of row numbers in [0, {limit}).")
        rows.append(tuple(int(r) for r in entry))
    return tuple(rows)


def slot_owners(count, use_ema, use_accumulator):
    """The variable index of each slot array in ``variables`` order (after the counter)."""
    owners = list(range(count)) * use_ema + list(range(count)) * use_accumulator
    return owners + [i for i in range(count) for _ in range(2)]


def _saved_dtype(value, label):
    if not isinstance(value, str) or value not in ("float16", "float32", "float64"):
        raise ValueError(f"{label} must be 'float16', 'float32' or 'float64', got {value!r}.")
    return np.dtype(value)


def state_dict_config_matches(config, hyperparameters):
    """The saved ``config`` and ``hyperparameters`` agree on the settings that decide
    which slots exist (``use_ema``, ``gradient_accumulation_steps``); else ValueError."""
    for field in ("use_ema", "gradient_accumulation_steps"):
        default = False if field == "use_ema" else None
        ours, theirs = getattr(hyperparameters, field), config.get(field, default)
        if ours != theirs:
            raise ValueError(f"State dict field 'config': {field}={theirs!r} in the saved "
                             f"state but {field}={ours!r} in this optimizer; they decide "
                             "which slots exist.")


def state_dict_matches(saved, state):
    """Check a validated state dict (the tuple returned by ``check_format``) against an
    ``AdamaxState``: the same variable names, shapes and dtypes in the same order, and the
    same slot-deciding settings (``use_ema``, ``gradient_accumulation_steps``). Raises
    ``ValueError`` naming the field; mutates nothing."""
    config, _, _, saved_names, shapes, dtypes, _ = saved
    state_dict_config_matches(config, state.hyperparameters)
    if saved_names != tuple(state.names):
        raise ValueError(f"State dict field 'names' is {list(saved_names)}; this optimizer "
                         f"has {list(state.names)}.")
    for i, p in enumerate(state.arrays):
        if shapes[i] != tuple(p.shape):
            raise ValueError(f"State dict field 'shapes'[{i}] (variable {saved_names[i]!r}) is "
                             f"{shapes[i]}; the variable has shape {p.shape}.")
        if dtypes[i] != p.dtype:
            raise TypeError(f"State dict field 'dtypes'[{i}] (variable {saved_names[i]!r}) is "
                            f"{dtypes[i]}; the variable has dtype {p.dtype}.")


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
    weights = check.sequence(weights, "`weights`", "a list or a tuple")
    targets = state.state_arrays()
    if len(weights) != len(targets) + 1:
        raise ValueError(f"`{what}` expected {len(targets) + 1} arrays (counter first), "
                         f"got {len(weights)}.")
    raw_steps = counter(np.asarray(weights[0]), "weights[0]", "a non-negative integer counter")
    arrays = [np.asarray(w) for w in weights[1:]]
    for j, (src, dst) in enumerate(zip(arrays, targets), start=1):
        saved_array(src, dst.shape, dst.dtype, f"weights[{j}]")
    return raw_steps, arrays


def apply_weights(state, checked):
    """Write what ``check_weights`` returned into ``state`` (slots and ``raw_steps``)."""
    raw_steps, arrays = checked
    for src, dst in zip(arrays, state.state_arrays()):
        copy_into(dst, src)
    state.raw_steps = raw_steps
