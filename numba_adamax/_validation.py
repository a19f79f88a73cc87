"""Checks on user input: hyperparameters, schedule arguments, arrays, ``IndexedSlices``,
names and shapes, with one exception policy:

* a setting (a number, a flag, a name: an optimizer or schedule argument, or the step
  a schedule is called with) that has the wrong type or an unacceptable value raises
  ``ValueError`` naming the argument and the value received;
* an argument that is not the kind of object expected (an array, a sequence, a dict,
  a stream) or has the wrong dtype raises ``TypeError``; an array of the wrong shape,
  layout or count raises ``ValueError``.

Setting checks return the normalised value (Python ``float``/``int``/``bool``). Nothing here
mutates anything; callers run all checks before the first write. The saved-state format is
checked by ``_state_dict``, which defines it.
"""
import inspect
import math
import numbers
import operator
import re

import numpy as np

from . import _devices
from ._indexed_slices import IndexedSlices

#: dtypes the CPU kernels accept for variables and gradients.
CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: dtypes the CUDA kernels accept: float16 variables keep float32 slots and math.
CUDA_DTYPES = CPU_DTYPES + (np.dtype(np.float16),)

LEARNING_RATE_MESSAGE = (
    "Argument `learning_rate` should be float, or an instance of LearningRateSchedule, "
    "or a callable (that takes in the current iteration value and returns the "
    "corresponding learning rate value). Received instead: learning_rate={}")


def _is_real(value):
    return (isinstance(value, (numbers.Real, np.floating, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def _finite_float(value):
    """``float(value)`` if ``value`` is a real number (not bool) with a finite float value,
    else None (huge ints included, which ``float`` cannot convert)."""
    if not _is_real(value):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def is_int(value):
    """True for an integer (Python or NumPy), not a bool."""
    return (isinstance(value, (numbers.Integral, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def real(name, value, *, low=None, high=None, low_open=False, high_open=False,
         optional=False):
    """Return ``value`` as a finite Python float inside the given bounds, else raise ValueError."""
    if value is None and optional:
        return None
    x = _finite_float(value)
    if x is None:
        raise ValueError(f"Argument `{name}` must be a finite real number"
                         f"{' or None' if optional else ''}. Received: {name}={value!r}")
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(part for part in (lo, hi) if part)
        raise ValueError(f"Argument `{name}` must be {bounds}. Received: {name}={value!r}")
    return x


def number(name, value):
    """A finite real setting (not a bool): an int stays an int (``get_config`` then
    reports ``decay_steps=3`` as Keras does), anything else becomes a float; else
    ValueError naming it."""
    x = _finite_float(value)
    if x is None:
        raise ValueError(f"Argument `{name}` must be a finite real number. "
                         f"Received: {name}={value!r}")
    return int(value) if is_int(value) else x


def real_sequence(name, value):
    """A list copy of a non-string iterable of settings (its items are checked by the
    caller); else TypeError."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"Argument `{name}` must be a list of real numbers. "
                        f"Received: {name}={value!r} (of type {describe(value)})")
    return list(value)


def schedule_step(step):
    """The step a schedule is called with: a finite real >= 0 (or a 0-d array of one),
    as a float; else ValueError."""
    if getattr(step, "shape", None) == () and hasattr(step, "item"):
        step = step.item()  # a 0-d array or tensor
    x = _finite_float(step)
    if x is None or x < 0:
        raise ValueError(f"The step must be a finite real number >= 0. Received: step={step!r}")
    return x


def learning_rate(value, schedule_type):
    """Validate a ``learning_rate`` argument: a number, a ``schedule_type`` instance or a
    callable that can be called with no argument (see ``zero_argument_callable``)."""
    if isinstance(value, schedule_type):
        return value
    if callable(value) and not _is_real(value):
        return zero_argument_callable(value)
    if not _is_real(value):
        raise ValueError(LEARNING_RATE_MESSAGE.format(value))
    return real("learning_rate", value, low=0.0)


def zero_argument_callable(value):
    """A callable learning rate is called with no argument before each step. One whose
    signature requires an argument is refused (ValueError): an object with a
    ``get_config`` (a schedule of another library, Keras' among them) with a message
    saying how to convert it, any other with one saying what is called. A callable whose
    signature cannot be read (some builtins) is accepted."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return value
    try:
        signature.bind()
    except TypeError:
        pass
    else:
        return value
    if callable(getattr(value, "get_config", None)):
        raise ValueError(
            f"Argument `learning_rate` is a schedule of another library ({describe(value)}); "
            "numba_adamax calls only its own schedules with the step. Convert a Keras "
            "schedule with `numba_adamax.schedules.deserialize(keras.optimizers.schedules."
            "serialize(schedule))`, or write a subclass of "
            "`numba_adamax.schedules.LearningRateSchedule`. "
            f"Received: learning_rate={value!r}")
    raise ValueError(
        "Argument `learning_rate` is a callable that needs arguments "
        f"{signature}; a callable learning rate is called with no argument before each "
        "step (use a `numba_adamax.schedules.LearningRateSchedule` for a rate that "
        f"depends on the step). Received: learning_rate={value!r}")


def learning_rate_value(value, source):
    """Check the number a schedule or callable learning rate produced; return a float."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    x = _finite_float(value)
    if x is None or x < 0:
        raise ValueError(f"The learning rate {source} returned {value!r}; "
                         "expected a finite real number >= 0.")
    return x


def boolean(name, value):
    """Return ``value`` as a bool; only ``bool`` and ``numpy.bool_`` are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Argument `{name}` must be a bool. Received: {name}={value!r}")
    return bool(value)


def ema_momentum(value):
    """``ema_momentum`` in [0, 1], with Keras' message."""
    x = _finite_float(value)
    if x is None or not 0.0 <= x <= 1.0:
        raise ValueError("`ema_momentum` must be in the range [0, 1]. "
                         f"Received: ema_momentum={value!r}")
    return x


def _optional_int(value, low, message):
    """None, or an int (not bool) >= ``low``; else ``ValueError(message)``."""
    if value is None:
        return None
    if not is_int(value) or value < low:
        raise ValueError(message)
    return int(value)


def ema_overwrite_frequency(value):
    """``ema_overwrite_frequency``: None or an int >= 1, with Keras' message."""
    return _optional_int(value, 1, "`ema_overwrite_frequency` must be an integer >= 1 or "
                                   f"None. Received: ema_overwrite_frequency={value!r}")


def gradient_accumulation_steps(value):
    """``gradient_accumulation_steps``: None or an int >= 2, with Keras' message."""
    return _optional_int(value, 2, "`gradient_accumulation_steps` must be an integer >= 2. "
                                   f"Received: gradient_accumulation_steps={value!r}")


def name(value):
    """The optimizer name: a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"Argument `name` must be a non-empty str. Received: name={value!r}")
    return value


#: The accepted ``nonfinite`` policies (see ``_apply.prepare``).
NONFINITE_POLICIES = ("propagate", "skip", "raise")


def nonfinite(value):
    """``nonfinite``: one of ``NONFINITE_POLICIES`` (an exact str)."""
    if not isinstance(value, str) or value not in NONFINITE_POLICIES:
        raise ValueError("Argument `nonfinite` must be one of 'propagate', 'skip' or 'raise'. "
                         f"Received: nonfinite={value!r}")
    return value


def clip_exclusive(clipnorm, clipvalue, global_clipnorm):
    """At most one clipping argument may be set (Keras' rule and message)."""
    if sum(v is not None for v in (clipnorm, clipvalue, global_clipnorm)) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
            f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
            f"global_clipnorm={global_clipnorm}")


def adamax_state(value, state_type, function, method):
    """``value`` if it is a ``state_type`` (an ``AdamaxState``), else TypeError saying what
    ``function`` expects. An optimizer object that holds one (a ``state`` property, as
    ``Adamax`` has) is pointed to its ``state`` and to its own ``method``, which does
    the same; None (an unbuilt optimizer's state) to the build."""
    if isinstance(value, state_type):
        return value
    message = (f"`{function}` expects an AdamaxState (from `numba_adamax.init`, or an "
               f"optimizer's `.state`), got {describe(value)}.")
    if value is None:
        message += (" An optimizer's `.state` is None until it is built: call "
                    "`optimizer.build(variables)` first.")
    elif isinstance(getattr(type(value), "state", None), property):
        message += (f" To use this {type(value).__name__}, call its own `{method}`, or pass "
                    "its `.state`" + (" once it is built." if value.state is None else "."))
    raise TypeError(message)


# ---------------------------------------------------------------- arrays

def describe(x):
    """``module.qualname`` of ``x``'s type, for messages."""
    return f"{type(x).__module__}.{type(x).__qualname__}"


def float_dtype(dtype, label):
    """``dtype`` as a ``numpy.dtype`` if it is float32 or float64, else TypeError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{label} must be a numpy dtype, got {dtype!r}.") from None
    if resolved not in CPU_DTYPES:
        raise TypeError(f"{label} must be float32 or float64, got {resolved}.")
    return resolved


def slot_dtype(dtype):
    """The dtype of the slots (and of the math) for variables of ``dtype``: float32
    for float16 (CUDA only), else ``dtype`` itself."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def variable(x, label):
    """Check one variable: a writeable, C-contiguous float32/float64 numpy array, or a
    CUDA device array (see ``device_array``)."""
    if _devices.kind(x) == _devices.CUDA:
        device_array(x, label)
        return
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{label} must be a numpy.ndarray or a CUDA device array, got "
                        f"{describe(x)}.")
    if x.dtype not in CPU_DTYPES:
        hint = (" float16 is supported on CUDA only; keep float32 master weights on the CPU."
                if x.dtype == np.float16 else "")
        raise TypeError(f"{label} has dtype {x.dtype}; expected float32 or float64.{hint}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{label} is not C-contiguous; pass np.ascontiguousarray(...) "
                         "and keep that array as the variable.")
    if not x.flags.writeable:
        raise ValueError(f"{label} is read-only; the optimizer updates variables in place.")


def gradients(grads, params, names):
    """Check a call's gradients (one per variable; ``None`` allowed, ``IndexedSlices``
    for a sparse one) against ``params``; see ``gradient`` and ``sparse_gradient``.
    The common case (a plain C-contiguous array of the right dtype and shape) costs
    a few attribute reads; the detailed checks run only for the rest. Raises
    ``ValueError`` when every entry is ``None``.

    Returns ``(missing, grads)``: the number of ``None`` entries, and the gradients
    to run with. Those are ``grads`` itself, unless an ``IndexedSlices`` has device
    ``indices``: its host copy (made for the range check) then replaces them in a
    new ``IndexedSlices`` of a new list, so that the deduplication does not copy them
    again. The caller's objects are not mutated."""
    missing = 0
    checked = grads
    for k, (g, var, name) in enumerate(zip(grads, params, names)):
        if g is None:
            missing += 1
            continue
        if type(g) is np.ndarray and type(var) is np.ndarray and g.dtype is var.dtype \
                and g.shape == var.shape and g.flags.c_contiguous:
            continue
        label = f"gradient for variable {name!r}"
        if isinstance(g, IndexedSlices):
            host = sparse_gradient(g, var, label)
            if host is not None:
                checked = list(checked) if checked is grads else checked
                checked[k] = IndexedSlices(g.values, host, g.dense_shape)
        else:
            gradient(g, var, label)
    if missing == len(grads):
        raise ValueError("No gradients provided for any variable.")
    return missing, checked


def device_array(x, label):
    """Check a CUDA device array (Numba, or any ``__cuda_array_interface__`` object):
    numba-cuda usable, dtype float16/float32/float64, C-contiguous, not declared
    read-only. Returns its Numba device view (no copy)."""
    view = _devices.as_device_array(x, label)
    if view.dtype not in CUDA_DTYPES:
        raise TypeError(f"{label} has dtype {view.dtype}; expected float16, float32 or "
                        "float64 on CUDA.")
    if not view.is_c_contiguous():
        raise ValueError(f"{label} is not C-contiguous; pass a contiguous copy and keep "
                         "that array as the variable.")
    if _devices.read_only(x):
        raise ValueError(f"{label} is read-only; the optimizer updates variables in place.")
    return view


def same_device(arrays, labels):
    """All ``arrays`` are NumPy arrays, or all are CUDA device arrays; else TypeError
    naming the first one that differs from the first array."""
    kinds = [_devices.kind(a) for a in arrays]
    for k, label in zip(kinds, labels):
        if k != kinds[0]:
            first, other = (("a CUDA device array", "a numpy.ndarray") if kinds[0] == _devices.CUDA
                            else ("a numpy.ndarray", "a CUDA device array"))
            raise TypeError(f"{label} is {other} but {labels[0]} is {first}; one optimizer "
                            "keeps all its variables on one device.")


def gradient(g, var, label):
    """Check one gradient against its variable (see ``like_variable``)."""
    like_variable(g, var, label, "a numpy.ndarray or None")


def like_variable(x, var, label, host_kind="a numpy.ndarray"):
    """Check an array that stands for variable ``var`` (a gradient, or the target of a
    copy): same dtype and shape, C-contiguous, and on the variable's device (a
    numpy.ndarray for a NumPy variable, a CUDA device array for a device variable)."""
    shape, dtype, contiguous = _array_facts(
        x, _devices.kind(var) == _devices.CUDA, label, host_kind,
        "; sequences are not converted")
    if dtype != var.dtype:
        raise TypeError(f"{label} has dtype {dtype} but its variable has dtype {var.dtype}.")
    if shape != tuple(var.shape):
        raise ValueError(f"{label} has shape {shape} but its variable has shape "
                         f"{tuple(var.shape)}.")
    if not contiguous:
        raise ValueError(f"{label} is not C-contiguous.")


def _array_facts(x, on_device, label, host_kind, host_hint):
    """``(shape, dtype, C-contiguous)`` of ``x``, which must be on the same side as its
    variable: a CUDA device array when ``on_device``, else a numpy.ndarray
    (``host_kind`` names what is expected, ``host_hint`` ends the message for a wrong
    host object). Raises TypeError naming ``label`` otherwise."""
    if on_device:
        if _devices.kind(x) != _devices.CUDA:
            raise TypeError(f"{label} must be a CUDA device array like its variable, got "
                            f"{describe(x)}; CPU and GPU arrays cannot be mixed.")
        view = _devices.as_device_array(x, label)
        return tuple(view.shape), view.dtype, view.is_c_contiguous()
    if not isinstance(x, np.ndarray):
        mixed = ("; CPU and GPU arrays cannot be mixed" if _devices.is_device_array(x)
                 else host_hint)
        raise TypeError(f"{label} must be {host_kind}, got {describe(x)}{mixed}.")
    return x.shape, x.dtype, x.flags.c_contiguous


def stream(value):
    """A CUDA stream argument: None (the default stream) or a ``numba.cuda`` stream
    (e.g. ``numba.cuda.stream()`` or ``numba.cuda.external_stream(ptr)``)."""
    if value is None or callable(getattr(value, "synchronize", None)):
        return value
    raise TypeError(f"Argument `stream` must be None or a numba.cuda stream, got "
                    f"{describe(value)}.")


def sparse_gradient(g, var, label):
    """Check an ``IndexedSlices`` gradient against its variable.

    ``values``: a C-contiguous array of the variable's dtype, shaped
    ``(len(indices), *var.shape[1:])``, on the variable's device (an ndarray for a
    NumPy variable, a CUDA device array for a device variable). ``indices``: a 1-D
    array of an integer dtype, every entry in ``[0, var.shape[0])``: an ndarray, or
    for a device variable also a CUDA device array (copied to the host for the range
    check). ``dense_shape``: None or the variable's shape. Raises ``TypeError`` for a
    wrong kind of object or dtype and ``ValueError`` for a wrong shape, layout or index.
    Returns the host copy of device ``indices``, else None.
    """
    values, indices, dense_shape = g.values, g.indices, g.dense_shape
    on_device = _devices.kind(var) == _devices.CUDA
    if var.ndim == 0:
        raise ValueError(f"{label} is an IndexedSlices, but its variable is a scalar; "
                         "sparse gradients index axis 0.")
    values_shape, values_dtype, contiguous = _array_facts(
        values, on_device, f"{label}: `values`", "a numpy.ndarray", "")
    if on_device and _devices.kind(indices) == _devices.CUDA:
        indices_view = _devices.as_device_array(indices, f"{label}: `indices`")
        if indices_view.dtype.kind not in "iu":
            raise TypeError(f"{label}: `indices` has dtype {indices_view.dtype}; expected "
                            "an integer dtype.")
        if indices_view.ndim != 1:
            raise ValueError(f"{label}: `indices` must be 1-D, got shape "
                             f"{tuple(indices_view.shape)}.")
        indices = host = indices_view.copy_to_host()
    else:
        host = None
    if not isinstance(indices, np.ndarray):
        kinds = ("a numpy.ndarray or a CUDA device array" if on_device
                 else "a numpy.ndarray")
        raise TypeError(f"{label}: `indices` must be {kinds} of integers, got "
                        f"{describe(indices)}.")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{label}: `indices` has dtype {indices.dtype}; expected an integer "
                        "dtype.")
    if indices.ndim != 1:
        raise ValueError(f"{label}: `indices` must be 1-D, got shape {indices.shape}.")
    if values_dtype != var.dtype:
        raise TypeError(f"{label}: `values` has dtype {values_dtype} but its variable has "
                        f"dtype {var.dtype}.")
    var_shape = tuple(var.shape)
    expected = (indices.shape[0], *var_shape[1:])
    if len(values_shape) == 0 or values_shape[0] != indices.shape[0]:
        raise ValueError(f"{label}: `values` has shape {values_shape} but `indices` has "
                         f"length {indices.shape[0]}; they need one row per index.")
    if values_shape != expected:
        raise ValueError(f"{label}: `values` has shape {values_shape}; expected {expected} "
                         f"(one row of shape {var_shape[1:]} per index).")
    if not contiguous:
        raise ValueError(f"{label}: `values` is not C-contiguous.")
    if indices.size:
        low, high = indices.min(), indices.max()
        if low < 0 or high >= var_shape[0]:
            bad = low if low < 0 else high
            raise ValueError(f"{label}: `indices` contains {int(bad)}, outside [0, "
                             f"{var_shape[0]}) (rows of the variable; negative indices are "
                             "not accepted).")
    if dense_shape is not None:
        try:
            shape = tuple(operator.index(d) for d in dense_shape)
        except TypeError:
            raise TypeError(f"{label}: `dense_shape` must be None or a sequence of ints, got "
                            f"{dense_shape!r}.") from None
        if shape != tuple(var.shape):
            raise ValueError(f"{label}: `dense_shape` is {shape} but its variable has shape "
                             f"{tuple(var.shape)}.")
    return host


def exclusion_pattern(var_names):
    """Compile weight-decay exclusion regexes into one pattern (None when empty).

    Each name must be a str that compiles on its own; they are joined as
    ``"|".join(sorted(set(var_names)))``, so the result never depends on set order.
    """
    if var_names is None:
        return None
    names = strings(var_names, "`var_names`")
    for n in names:
        try:
            re.compile(n)
        except re.error as exc:
            raise ValueError(f"`var_names` is not a valid regular expression: {n!r} ({exc})"
                             ) from None
    return re.compile("|".join(sorted(set(names)))) if names else None


def sequence(value, label, accepted="a list, a tuple or a dict"):
    """Return ``value`` as a list if it is a list or tuple, else raise TypeError saying
    that ``label`` must be ``accepted``: what the caller takes (the default is for
    callers that handle a dict themselves before calling this)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{label} must be {accepted}, got {describe(value)}.")
    return list(value)


def strings(value, label):
    """A list copy of a list or tuple of str; else TypeError (for a lone str, with the
    one-entry list to pass instead)."""
    if isinstance(value, str):
        raise TypeError(f"{label} must be a list or a tuple of str, got the str {value!r}; "
                        f"for one entry pass [{value!r}].")
    values = sequence(value, label, "a list or a tuple of str")
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{label} entries must be str, got {v!r}.")
    return values


def names(values, count):
    """Variable names: ``count`` distinct strings."""
    values = strings(values, "`names`")
    if len(values) != count:
        raise ValueError(f"`names` has {len(values)} entries for {count} variables.")
    if len(set(values)) != len(values):
        raise ValueError(f"`names` must be distinct; got {values}.")
    return tuple(values)


def shape(value, label):
    """A shape: a list or tuple of ints >= 0 (not bools), returned as a tuple of int;
    else ValueError naming ``label``."""
    if (not isinstance(value, (list, tuple))
            or not all(is_int(n) and n >= 0 for n in value)):
        raise ValueError(f"{label} must be a tuple of non-negative ints, got {value!r}.")
    return tuple(int(n) for n in value)


# ------------------------------------------------------------ the distributed optimizer


def communicator(value, comm_type):
    """A ``numba_adamax.distributed`` communicator (an instance of ``comm_type``); else
    TypeError saying which ones to pass."""
    if not isinstance(value, comm_type):
        raise TypeError("`comm` must be a numba_adamax.distributed communicator: "
                        "MPIComm(MPI.COMM_WORLD), TorchComm() or SelfComm(); got "
                        f"{describe(value)}.")
    return value


def zero_stage(value):
    """0 (data parallel) or 1 (sharded optimizer state); else ValueError."""
    if isinstance(value, bool) or not is_int(value) or value not in (0, 1):
        raise ValueError(f"`zero_stage` must be 0 (data parallel) or 1 (sharded optimizer "
                         f"state), got {value!r}.")
    return int(value)


def reduction(value):
    """``"sum"`` or ``"mean"``; else ValueError."""
    if value not in ("sum", "mean") or not isinstance(value, str):
        raise ValueError(f"`reduce` must be 'sum' or 'mean' (of the ranks' gradients), got "
                         f"{value!r}.")
    return value
