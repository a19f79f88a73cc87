"""The optimizer state: slots in flat per-dtype buffers, counters and the layout."""
import numpy as np

from . import _devices
from . import _state_dict
from . import _validation as check
from ._addresses import data_address
from ._flat_buffer import FlatBuffer
from ._layout import aligned_offsets

SLOT_NAMES = ("m", "u", "ema", "accumulator")


def slot_names(use_ema, use_accumulator):
    """``["m", "u"]``, plus ``"ema"`` and ``"accumulator"`` when those slots exist."""
    return ["m", "u"] + ["ema"] * use_ema + ["accumulator"] * use_accumulator


#: Elements per unit of kernel work: a variable is cut into chunks of at most this size.
CHUNK = 16384


class SlotGroup:
    """The variables of one dtype: their slots, each one contiguous buffer, and the
    tables that let one kernel call update all of them.

    ``indices[k]`` is the state's variable stored at ``offsets[k]`` (its ``sizes[k]``
    elements); ``m``, ``u``, ``ema`` and ``accumulator`` are flat arrays of ``total``
    elements (``ema``/``accumulator`` are None when not configured).

    Kernel tables (int64): ``table[k] = (data address, size, slot offset, weight
    decay on)`` per variable, and ``chunks[c] = (k, begin, end)``, the element ranges
    that are the kernels' units of (parallel) work.
    """

    def __init__(self, dtype, indices, arrays, use_ema, use_accumulator, cuda=None):
        self.dtype = np.dtype(dtype)
        self.slot_dtype = check.slot_dtype(dtype)
        self.indices = tuple(indices)
        self.sizes = tuple(a.size for a in arrays)
        offsets, self.total = aligned_offsets(self.sizes)
        self.offsets = tuple(offsets)
        address = data_address if cuda is None else cuda.device_address
        self.table = np.array([(address(a), a.size, offset, 1)
                               for a, offset in zip(arrays, offsets)],
                              dtype=np.int64).reshape(-1, 4)
        self.chunks = np.array([(k, begin, min(begin + CHUNK, size))
                                for k, size in enumerate(self.sizes)
                                for begin in range(0, size, CHUNK)],
                               dtype=np.int64).reshape(-1, 3)
        self.covers_all = False  # set by AdamaxState: indices == range(len(params))
        self.gradient_refs = np.zeros(len(self.indices), dtype=np.int64)
        self.device = None  # a ``_cuda.DeviceGroup`` for device variables

        def buffer(wanted):
            if not wanted:
                return None
            if cuda is None:
                return np.zeros(self.total, dtype=self.slot_dtype)
            return cuda.zeros(self.total, self.slot_dtype)

        self.m = buffer(True)
        self.u = buffer(True)
        self.ema = buffer(use_ema)
        self.accumulator = buffer(use_accumulator)

    def flat_view(self, slot, k):
        """1-D view of variable ``k`` of this group inside ``slot``'s buffer, or None
        when the slot is not configured."""
        buf = getattr(self, slot)
        if buf is None:
            return None
        return buf[self.offsets[k]:self.offsets[k] + self.sizes[k]]

    def set_weight_decay(self, mask):
        """Set the weight-decay column of ``table`` from the state-wide ``mask``."""
        self.table[:, 3] = [bool(mask[i]) for i in self.indices]
        if self.device is not None:
            self.device.upload_table(self.table)


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

    Derived counters: ``iterations`` (Keras' property: ``raw_steps``, or
    ``raw_steps // gradient_accumulation_steps``) and ``bias_correction_step``
    (the ``t`` of ``1 - beta_1**t`` the next update uses, ``iterations + 1``).
    """

    def __init__(self, params, names, hyperparameters):
        self.hyperparameters = hyperparameters
        self.params = tuple(params)
        self.device = _devices.kind(self.params[0]) if self.params else None
        self.device = None if self.device == _devices.CPU else self.device
        self.stream = None
        cuda = None
        if self.device is not None:
            from . import _cuda as cuda
            self.arrays = tuple(_devices.as_device_array(p) for p in self.params)
        else:
            self.arrays = self.params
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
            SlotGroup(dtype, idx, [self.arrays[i] for i in idx], use_ema, use_acc, cuda)
            for dtype, idx in by_dtype.items())
        if cuda is not None:
            self.device_state = cuda.DeviceState(self.groups)
        if len(self.groups) == 1:
            self.groups[0].covers_all = True
        # Per-variable (group, 1-D views) used by the kernels, and shaped views for users.
        n = len(self.params)
        self.flat = [None] * n
        self._group_of = [None] * n
        for group in self.groups:
            for k, i in enumerate(group.indices):
                self._group_of[i] = (group, k)
                self.flat[i] = (group, self.arrays[i].reshape(self.arrays[i].size),
                                *(group.flat_view(s, k) for s in SLOT_NAMES))
        self.m = tuple(self._shaped(i, 2) for i in range(n))
        self.u = tuple(self._shaped(i, 3) for i in range(n))
        self.ema = tuple(self._shaped(i, 4) for i in range(n)) if use_ema else ()
        self.accumulators = tuple(self._shaped(i, 5) for i in range(n)) if use_acc else ()
        # Rows touched since the last update (sparse gradients under accumulation; see _sparse).
        self.tracks_touched_rows = use_acc
        # Rows marked by sparse gradients; a dense gradient marks all rows of its
        # variable through ``_all_marked`` alone, so dense-only training never writes
        # a mask.
        self._row_masks = (tuple(np.zeros(p.shape[0] if p.ndim else 1, bool)
                                 for p in self.arrays) if use_acc else ())
        self._marked, self._all_marked = set(), set()  # variables with some / all rows
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.name_index = {name: i for i, name in enumerate(self.names)}

    def _shaped(self, i, position):
        return self.flat[i][position].reshape(self.arrays[i].shape)

    # ------------------------------------------------------------ counters

    @property
    def iterations(self):
        """Completed updates: ``raw_steps`` or ``raw_steps // gradient_accumulation_steps``."""
        gas = self.hyperparameters.gradient_accumulation_steps
        return self.raw_steps // gas if gas else self.raw_steps

    @property
    def bias_correction_step(self):
        """The step ``t`` the next update's bias correction ``1 - beta_1**t`` uses."""
        return self.iterations + 1

    # ------------------------------------------------------------ touched rows

    @property
    def touched_rows(self):
        """Per variable, a bool mask of the rows touched in the open accumulation window
        (a snapshot; an empty tuple without accumulation)."""
        return tuple(np.ones_like(mask) if i in self._all_marked else mask.copy()
                     for i, mask in enumerate(self._row_masks))

    def touched(self, i):
        """The rows of variable ``i`` touched in the open window, ascending (int64)."""
        if i in self._all_marked:
            return np.arange(self._row_masks[i].size)
        return np.flatnonzero(self._row_masks[i])

    def mark_all_rows(self, i):
        """Mark every row of variable ``i`` touched (a dense gradient in the window)."""
        self._all_marked.add(i)

    def mark_rows(self, i, rows):
        """Mark ``rows`` of variable ``i`` touched (a sparse gradient in the window)."""
        if i not in self._all_marked:
            self._row_masks[i][rows] = True
            self._marked.add(i)

    def clear_touched_rows(self):
        """Start a new accumulation window: no row is touched. Writes only the masks
        that sparse gradients marked."""
        for i in self._marked:
            self._row_masks[i].fill(False)
        self._marked.clear()
        self._all_marked.clear()

    def set_touched_rows(self, rows_per_variable):
        """Replace the touched rows with exactly ``rows_per_variable`` (a checkpoint's
        lists, one per variable)."""
        self.clear_touched_rows()
        for i, rows in enumerate(rows_per_variable):
            if len(rows) == self._row_masks[i].size and len(set(rows)) == len(rows):
                self.mark_all_rows(i)
            elif len(rows):
                self.mark_rows(i, list(rows))

    # ------------------------------------------------------------ lookup

    def group_of(self, i):
        """``(group, k)``: the ``SlotGroup`` holding variable ``i`` and its position there."""
        return self._group_of[i]

    def index_of(self, variable):
        """Position of ``variable`` (matched by identity), or ValueError ``Unknown variable``."""
        i = self._index.get(id(variable))
        if i is None or self.params[i] is not variable:
            raise ValueError(f"Unknown variable: an array of shape {np.shape(variable)} that "
                             "the optimizer was not built with.")
        return i

    def slot_names(self):
        """The slot names this configuration has, Keras-style."""
        return slot_names(bool(self.ema), bool(self.accumulators))

    def slot(self, i, slot_name):
        """The shaped slot array ``slot_name`` (``m``, ``u``/``v``, ``ema``, ``accumulator``) of variable ``i``."""
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

    def state_arrays(self):
        """The slot arrays in Keras' ``variables`` order after the counter:
        EMA averages, accumulators, then m0, u0, m1, u1, ..."""
        interleaved = [s for pair in zip(self.m, self.u) for s in pair]
        return [*self.ema, *self.accumulators, *interleaved]

    # ------------------------------------------------------------ persistence

    def state_dict(self):
        """A plain-dict snapshot: ``format_version``, ``config`` (JSON values),
        ``raw_steps``, ``iterations``, ``skipped_steps``, ``names``, ``shapes``,
        ``dtypes`` and ``slots`` (NumPy copies in ``variables`` order). Mutates nothing."""
        return _state_dict.state_dict(self)

    def load_state_dict(self, d):
        """Restore the slots, ``raw_steps`` and ``skipped_steps`` from ``state_dict()``
        output. Everything (format version, counters, names, shapes, dtypes, ``use_ema``,
        ``gradient_accumulation_steps``) is checked first; on ``TypeError``/``ValueError``
        nothing has changed. The hyperparameters in force are kept."""
        _state_dict.load_state_dict(self, d)

    def set_weight_decay_exclusions(self, pattern=None, var_list=None):
        """Recompute ``weight_decay_mask``: a variable is excluded if it is in
        ``var_list`` (identity) or the compiled regex ``pattern`` is found in its name
        (see ``_validation.exclusion_pattern``)."""
        ids = {id(v) for v in var_list or ()}
        self.weight_decay_mask = [
            not (id(p) in ids or (pattern is not None and pattern.search(name)))
            for p, name in zip(self.params, self.names)]
        for group in self.groups:
            group.set_weight_decay(self.weight_decay_mask)


def create(params, names, hyperparameters):
    """Validate ``params`` (and ``names``) and return a fresh ``AdamaxState``.

    ``params`` is a list/tuple of arrays, a dict name -> array or a ``FlatBuffer``;
    ``names`` names a list (default ``variable_0``, ``variable_1``, ..., or the
    buffer's names). Raises before allocating.
    The caller locks ``hyperparameters`` once it adopts the state.
    """
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
    state = AdamaxState(params, names, hyperparameters)
    state.buffer = buffer
    return state
