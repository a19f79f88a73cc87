"""The optimizer state: slots in flat per-dtype buffers, counters and the layout."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from . import _state_dict
from . import _validation as check
from . import backends
from ._flat_buffer import FlatBuffer, aligned_offsets
from ._sparse import TouchedRows
from .kernels import config

SLOT_NAMES = ("m", "u", "ema", "accumulator")


def slot_names(use_ema, use_accumulator):
    """``["m", "u"]``, plus ``"ema"`` and ``"accumulator"`` when those slots exist."""
    return ["m", "u"] + ["ema"] * use_ema + ["accumulator"] * use_accumulator


class SlotGroup:
    """The variables of one dtype: their slots, each one contiguous buffer, and the
    tables that let one kernel call update all of them.

    ``indices[k]`` is the state's variable stored at ``offsets[k]`` (its ``sizes[k]``
    elements); ``m``, ``u``, ``ema`` and ``accumulator`` are flat arrays of ``total``
    elements in the driver's memory (``ema``/``accumulator`` are None when not
    configured). ``position`` is the group's index in ``state.groups``.

    Kernel tables (int64): ``table[k] = (data address, size, slot offset, weight
    decay on)`` per variable, and ``chunks[c] = (k, begin, end)``, the element ranges
    (at most ``config.CHUNK`` long) that are the kernels' units of (parallel) work.
    """

    def __init__(self, position, dtype, indices, arrays, use_ema, use_accumulator, backend):
        self.position = position
        self.dtype = np.dtype(dtype)
        self.slot_dtype = check.slot_dtype(dtype)
        self.indices = tuple(indices)
        self.sizes = tuple(a.size for a in arrays)
        offsets, self.total = aligned_offsets(self.sizes)
        self.offsets = tuple(offsets)
        self.table = np.array([(backend.data_address(a), a.size, offset, 1)
                               for a, offset in zip(arrays, offsets)],
                              dtype=np.int64).reshape(-1, 4)
        chunk = config.CHUNK
        self.chunks = np.array([(k, begin, min(begin + chunk, size))
                                for k, size in enumerate(self.sizes)
                                for begin in range(0, size, chunk)],
                               dtype=np.int64).reshape(-1, 3)
        self.covers_all = False  # set by AdamaxState: indices == range(len(params))
        self.gradient_refs = np.zeros(len(self.indices), dtype=np.int64)
        self.device_group = None  # the CUDA driver's ``DeviceGroup`` (device variables)
        self.m = backend.zeros(self.total, self.slot_dtype)
        self.u = backend.zeros(self.total, self.slot_dtype)
        self.ema = backend.zeros(self.total, self.slot_dtype) if use_ema else None
        self.accumulator = (backend.zeros(self.total, self.slot_dtype) if use_accumulator
                            else None)

    def slot_view(self, slot, k):
        """1-D view of variable ``k`` of this group inside ``slot``'s buffer, or None
        when the slot is not configured."""
        buf = getattr(self, slot)
        if buf is None:
            return None
        return buf[self.offsets[k]:self.offsets[k] + self.sizes[k]]

    def set_weight_decay(self, mask):
        """Set the weight-decay column of ``table`` from the state-wide ``mask``."""
        self.table[:, 3] = [bool(mask[i]) for i in self.indices]


class VariableViews(NamedTuple):
    """Where one variable lives: its ``group`` and position ``k`` there, and 1-D views
    of the variable and of its slots (None for a slot that is not configured)."""

    group: SlotGroup
    k: int
    w: object
    m: object
    u: object
    ema: object
    accumulator: object


class AdamaxState:
    """Everything the optimizer keeps between calls (the functional API's record).

    Attributes:
        hyperparameters: the ``Hyperparameters`` in force (mutable, validated).
        params: tuple of the variables (updated in place), in order, as given: numpy
            arrays, or CUDA device arrays (Numba, CuPy, PyTorch CUDA tensors, ...).
        arrays: the same variables as numpy arrays or Numba device arrays (zero-copy
            views of ``params``); dtypes and shapes are read from these.
        device: None for numpy variables, ``"cuda"`` for device variables, whose
            slots are Numba device arrays (float32 for float16 variables).
        stream: the ``numba.cuda`` stream CUDA steps run on (None: the default stream).
        names: tuple of variable names (used by weight-decay exclusion and saving).
        raw_steps: int, calls applied so far (Keras' internal iteration counter).
        skipped_steps: int, calls dropped by ``nonfinite="skip"`` (not in ``raw_steps``).
        m, u: tuples of per-variable views (shape of the variable) of the first
            moment and the infinity norm.
        ema: per-variable EMA averages (empty tuple unless ``use_ema``).
        accumulators: per-variable gradient accumulators (empty tuple unless
            ``gradient_accumulation_steps``).
        weight_decay_mask: list of bools, True where weight decay applies.
        touched_rows: per-variable bool arrays over axis 0 (a snapshot): the rows a
            gradient touched since the last update (empty tuple unless
            ``gradient_accumulation_steps``). The next update of a variable with a
            sparse gradient covers these rows (``touched``).
        groups: tuple of ``SlotGroup``, one per dtype, owning the flat buffers.
        buffer: the ``FlatBuffer`` the variables were given as, or None.
        backend: the host driver the steps run on (``backends.cpu`` or
            ``backends.cuda``).
        views: per variable, its ``VariableViews``.
        window: the ``_sparse.TouchedRows`` of the open accumulation window (None
            without gradient accumulation).

    Derived counters: ``iterations`` (Keras' property: ``raw_steps``, or
    ``raw_steps // gradient_accumulation_steps``) and ``bias_correction_step``
    (the ``t`` of ``1 - beta_1**t`` the next update uses, ``iterations + 1``).

    ``copy.deepcopy(state)`` and pickling give an independent state over copies of the
    variables (of the ``FlatBuffer`` when the state was built on one), as a deep copy of
    a PyTorch optimizer copies its parameters: the same names, hyperparameters,
    weight-decay mask, slots, counters and touched rows, with kernel tables made for
    the new arrays. Variables copied in the same ``deepcopy`` call (or pickled in the
    same ``dumps``) are the state's copies: ``copy.deepcopy((params, state))`` keeps
    them together. A state on CUDA, or with a stream, is refused (``TypeError``).
    """

    def __init__(self, params, names, hyperparameters):
        self.hyperparameters = hyperparameters
        self.params = tuple(params)
        self.backend = backend = backends.for_arrays(self.params)
        self.device = backend.device
        self.stream = None
        self.arrays = backend.device_arrays(self.params)
        self.names = tuple(names)
        self.raw_steps = 0
        self.buffer = None
        self.skipped_steps = 0
        self.weight_decay_mask = [True] * len(self.params)
        use_ema = hyperparameters.use_ema
        use_acc = hyperparameters.gradient_accumulation_steps is not None
        by_dtype = {}
        for i, p in enumerate(self.arrays):
            by_dtype.setdefault(p.dtype, []).append(i)
        self.groups = tuple(
            SlotGroup(position, dtype, idx, [self.arrays[i] for i in idx], use_ema, use_acc,
                      backend)
            for position, (dtype, idx) in enumerate(by_dtype.items()))
        backend.attach(self)
        if len(self.groups) == 1:
            self.groups[0].covers_all = True
        n = len(self.params)
        views = [None] * n
        for group in self.groups:
            for k, i in enumerate(group.indices):
                views[i] = VariableViews(group, k, self.arrays[i].reshape(self.arrays[i].size),
                                         *(group.slot_view(s, k) for s in SLOT_NAMES))
        self.views = tuple(views)
        self.m = self._shaped("m")
        self.u = self._shaped("u")
        self.ema = self._shaped("ema") if use_ema else ()
        self.accumulators = self._shaped("accumulator") if use_acc else ()
        self.window = TouchedRows(self.arrays) if use_acc else None
        self.step_settings = None  # the ``_apply.StepSettings`` of the last call
        self.fast_step = None  # the ``_apply.FastStep`` for the current settings, if any
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.name_index = {name: i for i, name in enumerate(self.names)}

    def __reduce__(self):
        if self.device is not None or self.stream is not None:
            where = "on CUDA" if self.device is not None else "with a CUDA stream"
            raise TypeError(f"An AdamaxState {where} cannot be pickled or copied; save it "
                            "with `state_dict()` (host arrays) and load that into a state "
                            "built on the copied variables.")
        variables = self.params if self.buffer is None else self.buffer
        saved = (self.state_arrays(), self.raw_steps, self.skipped_steps,
                 _state_dict.touched_rows(self))
        return _restored, (variables, self.names, self.hyperparameters,
                           self.weight_decay_mask, saved)

    def __repr__(self) -> str:
        dtypes = sorted({str(a.dtype) for a in self.arrays})
        return (f"AdamaxState(variables={len(self.params)}, "
                f"elements={sum(a.size for a in self.arrays)}, dtypes={dtypes}, "
                f"device={self.device or 'cpu'!r}, raw_steps={self.raw_steps}, "
                f"iterations={self.iterations}, skipped_steps={self.skipped_steps}, "
                f"{', '.join(self.hyperparameters.changed_settings())})")

    def _shaped(self, slot):
        """Per variable, its view of ``slot`` shaped like the variable."""
        return tuple(getattr(view, slot).reshape(array.shape)
                     for view, array in zip(self.views, self.arrays))

    # ------------------------------------------------------------ counters

    @property
    def iterations(self) -> int:
        """Completed updates: ``raw_steps`` or ``raw_steps // gradient_accumulation_steps``."""
        steps = self.hyperparameters.gradient_accumulation_steps
        return self.raw_steps // steps if steps else self.raw_steps

    @property
    def bias_correction_step(self) -> int:
        """The step ``t`` the next update's bias correction ``1 - beta_1**t`` uses."""
        return self.iterations + 1

    @property
    def touched_rows(self) -> tuple[np.ndarray, ...]:
        """Per variable, a bool mask of the rows touched in the open accumulation window
        (a snapshot; an empty tuple without accumulation)."""
        return () if self.window is None else self.window.snapshot()

    def touched(self, i: int) -> np.ndarray:
        """The rows of variable ``i`` touched in the open accumulation window, ascending
        (int64; empty without accumulation)."""
        return np.empty(0, np.int64) if self.window is None else self.window.touched(i)

    # ------------------------------------------------------------ lookup

    def index_of(self, variable: Any) -> int:
        """Position of ``variable`` (matched by identity), or ValueError ``Unknown variable``."""
        i = self._index.get(id(variable))
        if i is None or self.params[i] is not variable:
            raise ValueError(f"Unknown variable: an array of shape {np.shape(variable)} that "
                             "the optimizer was not built with.")
        return i

    def slot_names(self) -> list[str]:
        """The slot names this configuration has, Keras-style."""
        return slot_names(bool(self.ema), bool(self.accumulators))

    def slot(self, i: int, slot_name: str) -> Any:
        """The shaped slot array ``slot_name`` (``m``, ``u``/``v``, ``ema``, ``accumulator``)
        of variable ``i``."""
        table = {"m": self.m, "u": self.u, "v": self.u, "ema": self.ema,
                 "accumulator": self.accumulators}
        if slot_name not in table:
            raise ValueError(f"Unknown slot name {slot_name!r}; expected one of "
                             "'m', 'u' (or 'v'), 'ema', 'accumulator'.")
        slots = table[slot_name]
        if not slots:
            raise ValueError(f"Slot {slot_name!r} does not exist in this configuration; "
                             f"available: {self.slot_names()}.")
        return slots[i]

    def state_arrays(self) -> list[Any]:
        """The slot arrays in Keras' ``variables`` order after the counter:
        EMA averages, accumulators, then m0, u0, m1, u1, ..."""
        interleaved = [s for pair in zip(self.m, self.u) for s in pair]
        return [*self.ema, *self.accumulators, *interleaved]

    # ------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """A plain-dict snapshot: ``format_version``, ``config`` (JSON values),
        ``raw_steps``, ``iterations``, ``skipped_steps``, ``names``, ``shapes``,
        ``dtypes``, ``slots`` (NumPy copies in ``variables`` order) and
        ``touched_rows``. Mutates nothing."""
        return _state_dict.state_dict(self)

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the slots, ``raw_steps`` and ``skipped_steps`` from ``state_dict()``
        output. Everything (format version, counters, names, shapes, dtypes, ``use_ema``,
        ``gradient_accumulation_steps``) is checked first; on ``TypeError``/``ValueError``
        nothing has changed. The hyperparameters in force are kept."""
        _state_dict.load_state_dict(self, d)

    def set_weight_decay_exclusions(self, pattern: re.Pattern[str] | None = None,
                                    var_list: Iterable[Any] | None = None) -> None:
        """Recompute ``weight_decay_mask``: a variable is excluded if it is in
        ``var_list`` (identity) or the compiled regex ``pattern`` is found in its name
        (see ``_validation.exclusion_pattern``)."""
        ids = {id(v) for v in var_list or ()}
        self.set_weight_decay_mask([
            not (id(p) in ids or (pattern is not None and pattern.search(name)))
            for p, name in zip(self.params, self.names)])

    def set_weight_decay_mask(self, mask: Iterable[bool]) -> None:
        """Set ``weight_decay_mask`` (one bool per variable, True where weight decay
        applies) and the kernel tables' weight-decay column."""
        self.weight_decay_mask = [bool(m) for m in mask]
        for group in self.groups:
            group.set_weight_decay(self.weight_decay_mask)
            self.backend.upload_table(group)


def create(params, names, hyperparameters):
    """Validate ``params`` (and ``names``) and return a fresh ``AdamaxState``.

    ``params`` is a list/tuple of arrays, a dict name -> array or a ``FlatBuffer``;
    ``names`` names a list (default ``variable_0``, ``variable_1``, ..., or the
    buffer's names). Raises before allocating.
    The caller locks ``hyperparameters`` once it adopts the state.
    """
    params, names, buffer = variables(params, names)
    state = AdamaxState(params, names, hyperparameters)
    state.buffer = buffer
    return state


def variables(params, names):
    """``(arrays, names, buffer)`` of the ``params`` and ``names`` ``create`` takes,
    validated (``buffer``: the ``FlatBuffer`` given, else None). Mutates nothing."""
    buffer = None
    if isinstance(params, FlatBuffer):
        buffer, names = params, params.names if names is None else names
        params = list(params.arrays)
    if isinstance(params, dict):
        if names is not None:
            raise ValueError("`names` cannot be given when the variables are a dict.")
        names = tuple(str(k) for k in params)
        params = list(params.values())
    else:
        params = check.sequence(params, "`variables`")
        names = (check.names(names, len(params)) if names is not None
                 else tuple(f"variable_{i}" for i in range(len(params))))
    if not params:
        raise ValueError("`variables` is empty; there is nothing to optimize.")
    labels = [f"variable {n!r}" for n in names]
    for p, label in zip(params, labels):
        check.variable(p, label)
    check.same_device(params, labels)
    if len({id(p) for p in params}) != len(params):
        raise ValueError("The same array appears more than once in `variables`.")
    return params, names, buffer


def _restored(variables, names, hyperparameters, weight_decay_mask, saved):
    """The state ``AdamaxState.__reduce__`` describes, over ``variables`` (the unpickled
    or copied arrays, or ``FlatBuffer``)."""
    state = create(variables, list(names), hyperparameters)
    state.set_weight_decay_mask(weight_decay_mask)
    hyperparameters.lock()
    _state_dict.write(state, *saved)
    return state
