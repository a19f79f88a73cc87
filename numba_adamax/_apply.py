"""One optimizer call: ``prepare`` checks it and decides what it does, ``commit``
runs it through the state's driver.

Every entry point (``Adamax.apply``, ``step``, the PyTorch optimizer) matches its
arguments to a state with ``functional.match`` and then calls these two, so a call
is decided and run in one place:

* ``prepare`` validates the gradients, applies the ``nonfinite`` policy and computes
  the learning rate; it mutates nothing and returns a ``Call``.
* ``commit`` turns the call into ``StepSettings`` (every host-side scalar, the bias
  correction included), lets ``_sparse`` deduplicate sparse gradients, then per
  dtype group asks the driver for the clip factors (when clipping by norm), the
  lazy row updates and the fused dense pass, or the accumulation micro-step.

``run`` is the two together for the class and ``step``, with a short path: a state
whose settings need no per-call decision beyond a few scalars keeps a ``FastStep``,
its update kernels' arguments packed once, and a plain dense call runs through it
(the same kernels and arguments, so the same bits). ``BoundStep`` uses it as well.
"""
import math
import operator
import os
import sys
import warnings

import numpy as np

from . import _sparse
from . import _validation as check
from ._flat_buffer import FlatBuffer
from ._indexed_slices import IndexedSlices
from .kernels import config
from .kernels.addresses import OBJECT_DATA_OFFSET


class Call:
    """A validated call, ready for ``commit``.

    ``state``: the ``AdamaxState``. ``grads``: one entry per variable of the state
    (None: no gradient) or a ``FlatBuffer`` laid out like the variables.
    ``hyperparameters``: the settings it runs with. ``learning_rate``: the rate of
    an update step, None on an accumulation micro-step. ``skipped``: True when the
    ``"skip"`` policy drops the call (only ``skipped_steps`` changes). ``refs``: the
    drivers' references to the dense gradients when already made for this call (by
    the finite check, or packed once by a ``BoundStep``), else None.
    """

    __slots__ = ("state", "grads", "hyperparameters", "learning_rate", "skipped", "refs")

    def __init__(self, state, grads, hyperparameters, learning_rate, skipped, refs=None):
        self.state, self.grads, self.hyperparameters = state, grads, hyperparameters
        self.learning_rate, self.skipped, self.refs = learning_rate, skipped, refs


def prepare(state, grads, passed=None, hyperparameters=None, refs=None):
    """Check one call's gradients and decide what it does; mutates nothing.

    ``grads`` has one entry per state variable (or is a ``FlatBuffer`` that
    ``functional.match`` accepted). ``passed`` lists the variable indices the caller
    named (default: all); a ``None`` gradient among them is reported with a
    ``UserWarning`` pointing at the caller's code. ``hyperparameters`` (default
    ``state.hyperparameters``) are the settings the call runs with: a caller about
    to install new settings of the same structure passes them here. ``refs``: the
    packed references of gradients a ``BoundStep`` checked when it was made.

    Raises ``ValueError`` if no gradient at all is given, ``TypeError`` /
    ``ValueError`` for a bad gradient, ``FloatingPointError`` for a NaN/inf gradient
    under ``nonfinite="raise"``, and ``ValueError`` for a learning rate a schedule
    or callable got wrong.
    """
    hp = state.hyperparameters if hyperparameters is None else hyperparameters
    flat = type(grads) is FlatBuffer
    if flat or refs is not None:
        missing = 0
    else:
        missing, grads = check.gradients(grads, state.arrays, state.names)
    skipped = False
    if hp.nonfinite != "propagate":
        skipped, refs = _screen_nonfinite(state, grads, hp.nonfinite, refs)
    learning_rate = None
    if not skipped and _is_update_step(state, hp):
        learning_rate = hp.learning_rate_at(state.raw_steps)
    if missing:
        names = [state.names[i] for i in (range(len(grads)) if passed is None else passed)
                 if grads[i] is None]
        if names:
            warnings.warn(f"Gradients do not exist for variables {names} when minimizing "
                          "the loss.", UserWarning, stacklevel=_first_frame_outside_package())
    return Call(state, grads, hp, learning_rate, skipped, refs)


def _first_frame_outside_package():
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point
    at the innermost frame whose code is not in this package (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _is_update_step(state, hp):
    return is_update_call(state.raw_steps, hp.gradient_accumulation_steps)


def is_update_call(raw_steps, accumulation_steps):
    """Whether the call after ``raw_steps`` calls updates the variables (always without
    accumulation; else the last micro-step of each window of ``accumulation_steps``)."""
    return accumulation_steps is None or (raw_steps + 1) % accumulation_steps == 0


def _screen_nonfinite(state, grads, policy, refs=None):
    """``(skip, refs)``: whether the call must be skipped (``"skip"``) because a
    gradient holds NaN or inf, and the dense gradients' references made for the check
    (or ``refs`` as given). Raises ``FloatingPointError`` naming the first such
    variable under ``"raise"``. Dense gradients are checked per dtype group (one read
    pass each), then the values of sparse ones. Mutates nothing."""
    bad, refs = _first_nonfinite(state, grads, refs)
    if bad is not None and policy == "raise":
        raise FloatingPointError(f"The gradient for variable {state.names[bad]!r} holds NaN "
                                 "or inf (nonfinite='raise'); nothing was changed.")
    return bad is not None, refs


def _first_nonfinite(state, grads, refs):
    backend = state.backend
    sparse = type(grads) is not FlatBuffer and _sparse.has_sparse(grads)
    dense = _dense_part(grads) if sparse else grads
    if type(dense) is FlatBuffer or any(g is not None for g in dense):
        if refs is None:
            refs = backend.gradient_refs(state, _kernel_view(dense))
        for group, group_refs in zip(state.groups, refs):
            flags = backend.nonfinite_flags(state, group, group_refs)
            if flags.any():
                return group.indices[int(np.flatnonzero(flags)[0])], refs
    return (_sparse.first_nonfinite(state, grads) if sparse else None), refs


def _dense_part(grads):
    """``grads`` with its ``IndexedSlices`` entries replaced by None."""
    return [None if type(g) is IndexedSlices else g for g in grads]


def _kernel_view(grads):
    """What the drivers take for ``grads``: the data addresses of a ``FlatBuffer``,
    else the per-variable list."""
    return grads.addresses if type(grads) is FlatBuffer else grads


class StepSettings:
    """Every host-side scalar of one call, computed once for every driver.

    ``micro_step`` (an accumulation micro-step: no update), ``learning_rate``,
    ``ema_momentum`` (0 on the first update), ``overwrite`` (this update copies the
    EMA into the variables), ``loss_scale`` (None when off), ``steps`` (the
    accumulation steps as a float, 1 without accumulation), the clipping arguments,
    ``clip_norm`` (the ``clipnorm`` or ``global_clipnorm`` in force, else None),
    ``clip`` (``(1, 1, clipvalue)`` when clipping by value, else None), ``row_clip``
    (the clip triple of a sparse row update when not clipping by norm),
    ``weight_decay`` (None: no decay at all), ``beta_1``, ``one_minus_beta_1``,
    ``beta_2``, ``epsilon``, ``t`` (the update number, from 1) and
    ``bias_correction``: per group of the state, ``1 - beta_1**t`` computed in the
    group's math dtype (as Keras does), as a Python float.

    A state keeps one (``for_call``): the fields that depend only on the settings
    are recomputed when the hyperparameters object or its ``revision`` changes, the
    others on every call.
    """

    __slots__ = ("micro_step", "learning_rate", "ema_momentum", "overwrite", "loss_scale",
                 "steps", "clipnorm", "global_clipnorm", "clipvalue", "clip_norm", "clip",
                 "row_clip", "weight_decay", "beta_1", "one_minus_beta_1", "beta_2", "epsilon",
                 "t", "bias_correction", "_source", "_revision", "_powers")

    def __init__(self, state, hp):
        self._source, self._revision = hp, hp.revision
        self.loss_scale = hp.loss_scale_factor
        self.steps = float(hp.gradient_accumulation_steps or 1)
        self.clipnorm, self.global_clipnorm = hp.clipnorm, hp.global_clipnorm
        self.clipvalue = hp.clipvalue
        self.clip_norm = hp.clipnorm or hp.global_clipnorm
        self.clip = (1.0, 1.0, hp.clipvalue) if hp.clipvalue else None
        self.row_clip = self.clip or (1.0, 1.0, math.inf)
        self.weight_decay = hp.weight_decay
        self.beta_1, self.beta_2, self.epsilon = hp.beta_1, hp.beta_2, hp.epsilon
        self.one_minus_beta_1 = 1.0 - hp.beta_1
        # ``1 - beta_1**t`` in each group's math dtype: its constant operands, converted
        # once (NumPy converts the int ``t`` to the scalar's dtype before the power).
        self._powers = tuple((g.slot_dtype.type(1), g.slot_dtype.type(hp.beta_1))
                             for g in state.groups)
        self.bias_correction = [None] * len(state.groups)

    @classmethod
    def for_call(cls, call):
        """The state's settings object, brought up to date for ``call``; mutates it
        (and creates it on the first call or after the settings changed)."""
        state, hp = call.state, call.hyperparameters
        settings = state.step_settings
        if settings is None or settings._source is not hp or settings._revision != hp.revision:
            settings = state.step_settings = cls(state, hp)
        settings.t = t = state.bias_correction_step
        iterations = t - 1
        settings.micro_step = call.learning_rate is None
        settings.learning_rate = call.learning_rate
        settings.ema_momentum = 0.0 if iterations == 0 else hp.ema_momentum
        settings.overwrite = bool(hp.use_ema and hp.ema_overwrite_frequency
                                  and t % hp.ema_overwrite_frequency == 0)
        if not settings.micro_step:
            bias_correction = settings.bias_correction
            for position, (one, beta_1) in enumerate(settings._powers):
                bias_correction[position] = float(one - beta_1 ** t)
        return settings

    def decays(self, state, i):
        """True when weight decay applies to variable ``i`` in this call."""
        return self.weight_decay is not None and state.weight_decay_mask[i]


def commit(call, clip_tables=None):
    """Run a call ``prepare`` accepted: mutates the variables, the slots and the
    counters (only ``skipped_steps`` for a skipped call). ``clip_tables``, when given,
    replaces ``_clip_tables`` (same arguments and result): the sharded optimizer
    computes the norms of variables split across processes there."""
    state = call.state
    if call.skipped:
        state.skipped_steps += 1
        return
    settings = StepSettings.for_call(call)
    backend, grads = state.backend, call.grads
    sparse = {}
    if state.window is not None or (type(grads) is not FlatBuffer and _sparse.has_sparse(grads)):
        sparse = _sparse.prepare(state, grads, settings)
    dense = [None if i in sparse else g for i, g in enumerate(grads)] if sparse else grads
    refs = call.refs or backend.gradient_refs(state, _kernel_view(dense))
    if settings.micro_step:
        for group, group_refs in zip(state.groups, refs):
            backend.accumulate(state, group, group_refs, settings)
    else:
        clip_tables = ((clip_tables or _clip_tables)(state, refs, sparse, settings)
                       if settings.clip_norm else None)
        for i, rows in sparse.items():  # lazy row updates, before the dense pass's EMA
            backend.update_rows(state, i, rows, settings, clip_tables)
        for group, group_refs in zip(state.groups, refs):
            backend.update(state, group, group_refs, settings,
                           None if clip_tables is None else clip_tables[group.position])
    state.raw_steps += 1


def _clip_tables(state, refs, sparse, settings):
    """Per group, the ``(clip_scale, clip_divisor)`` table of its variables (clipping by
    norm).

    Keras' priority: ``clipnorm`` (``g * c / max(||g||, c)``, per variable), then
    ``global_clipnorm`` (every gradient times ``c * min(1/N, 1/c) + (N - N)``, NaN
    when N is not finite), then ``clipvalue``. Norms are of the effective gradient
    (unscaled, accumulated mean): each chunk's squares summed in float64, the chunk
    sums added per variable in chunk order, and finished in each variable's dtype. A
    variable with a sparse gradient counts with the norm of its rows.
    """
    backend = state.backend
    sums = backend.new_square_sums(state)
    for group, group_refs in zip(state.groups, refs):
        partials = backend.chunk_square_partials(state, group, group_refs, settings)
        backend.fold_square_partials(state, group, partials, sums)
    for i, rows in sparse.items():
        backend.sparse_square_sum(state, i, rows, settings, sums)
    return backend.clip_tables(state, sums, settings)


def run(state, grads, passed=None):
    """``commit(prepare(state, grads, passed))``: check and run one call with the
    state's own settings, through the state's ``FastStep`` when it has a current one
    and every gradient is a plain dense array of its variable's dtype and shape (or
    ``grads`` is a ``FlatBuffer`` ``match`` accepted); anything else (a missing or
    sparse gradient, one that needs the detailed checks) takes the general path,
    which raises before any write. Mutates the variables, slots and counters."""
    def refs(fast):
        return None if passed is not None else fast.gradient_refs(state, grads)

    _fast_or_general(state, refs, lambda: commit(prepare(state, grads, passed)))


def _fast_or_general(state, fast_refs, general):
    """Run one call through the state's ``FastStep`` when it is current and
    ``fast_refs(fast)`` locates the gradients (not None), else through ``general()``;
    after a general call made under other settings, attach a ``FastStep`` for the
    settings now in force. Mutates the variables, slots and counters."""
    fast = state.fast_step
    if fast is None or not fast.matches(state):
        general()
        FastStep.attach(state)
        return
    refs = fast_refs(fast) if fast.calls is not None else None
    if refs is None:
        general()
    else:
        fast(state, refs)


class FastStep:
    """A state's update calls packed once, for the calls whose only per-call values
    are the learning rate, the bias correction and the EMA coefficients.

    That is a CPU state with ``nonfinite="propagate"``, no gradient accumulation and
    no clipping by norm, stepped with dense gradients: each call then runs exactly
    the kernels ``commit`` runs, with the same arguments, but skips the matching,
    the per-call settings record and numba's type dispatch (the kernels are called
    through the entry points compiled for these argument types). ``attach`` makes one
    after a call of the general path (the kernels are compiled then); it serves while
    the state's hyperparameters object, its ``revision`` and the serial/parallel
    threshold are those it was made with (``is_current``), and is replaced otherwise.
    A state whose settings do not qualify keeps a ``FastStep`` with no calls
    (``is_current`` is then False), so that the check is not repeated on every call.
    """

    __slots__ = ("_one_table", "calls", "frequency", "hp", "momentum", "positions", "rate",
                 "revision", "threshold")

    def __init__(self, state, calls):
        hp = state.hyperparameters
        self.hp, self.revision, self.threshold = hp, hp.revision, config.PARALLEL_THRESHOLD
        self.calls = calls
        # a constant rate needs no call of ``learning_rate_at``
        self.rate = (hp.learning_rate if type(hp.learning_rate) is float and hp.decay is None
                     else None)
        self.momentum = hp.ema_momentum
        # the update number at which the EMA overwrites the variables divides by this
        self.frequency = (hp.ema_overwrite_frequency
                          if hp.use_ema and hp.ema_overwrite_frequency else None)
        backend = state.backend
        self.positions = (None if calls is None else
                          (backend.UPDATE_REFS, backend.UPDATE_OFFSET,
                           backend.UPDATE_LEARNING_RATE, backend.UPDATE_BIAS_CORRECTION,
                           backend.UPDATE_EMA_MOMENTUM, backend.UPDATE_OVERWRITE))
        # one group of at most 8 variables: the gradients' references go into its table
        group = state.groups[0]
        self._one_table = (group.gradient_refs if calls is not None and group.covers_all
                           and len(group.indices) <= 8 and OBJECT_DATA_OFFSET >= 0 else None)

    @classmethod
    def attach(cls, state):
        """Set ``state.fast_step`` for the state's current settings; mutates ``state``."""
        hp = state.hyperparameters
        calls = None
        backend = state.backend
        if (hasattr(backend, "packed_update") and hp.nonfinite == "propagate"
                and hp.gradient_accumulation_steps is None and state.window is None
                and not (hp.clipnorm or hp.global_clipnorm)):
            settings = StepSettings(state, hp)
            settings.learning_rate, settings.ema_momentum, settings.overwrite = 0.0, 0.0, False
            settings.bias_correction = [0.0] * len(state.groups)
            refs = backend.gradient_refs(state, [None] * len(state.params))
            calls = tuple((*backend.packed_update(state, group, group_refs, settings),
                           *settings._powers[group.position])
                          for group, group_refs in zip(state.groups, refs))
        state.fast_step = cls(state, calls)

    def matches(self, state):
        """True when this was made for the state's settings as they are now."""
        hp = state.hyperparameters
        return (self.hp is hp and self.revision == hp.revision
                and self.threshold == config.PARALLEL_THRESHOLD)

    def is_current(self, state):
        """True when this serves the state's calls: it has calls and ``matches``."""
        return self.calls is not None and self.matches(state)

    def gradient_refs(self, state, grads):
        """The drivers' references to ``grads`` (one entry per variable, or a
        ``FlatBuffer`` ``match`` accepted) when each is a C-contiguous NumPy array of
        its variable's dtype and shape (what ``_validation.gradients`` accepts at
        once), else None. Writes only the groups' scratch tables."""
        if type(grads) is FlatBuffer:
            return ((grads.addresses, -1),)
        ndarray = np.ndarray
        table = self._one_table
        for k, (g, a) in enumerate(zip(grads, state.arrays)):
            if type(g) is not ndarray or g.dtype is not a.dtype or g.shape != a.shape \
                    or not g.flags.c_contiguous:
                return None
            if table is not None:
                table[k] = id(g)
        if table is not None:
            return ((table, OBJECT_DATA_OFFSET),)
        return state.backend.gradient_refs(state, grads)

    def __call__(self, state, refs):
        """One update with the gradients located by ``refs`` (per group, as
        ``gradient_refs`` gives them); mutates the variables, slots and ``raw_steps``."""
        raw_steps = state.raw_steps
        learning_rate = self.rate
        if learning_rate is None:
            learning_rate = self.hp.learning_rate_at(raw_steps)
        t = raw_steps + 1  # no accumulation: the update number is raw_steps + 1
        ema_momentum = 0.0 if raw_steps == 0 else self.momentum
        frequency = self.frequency
        overwrite = frequency is not None and t % frequency == 0
        at_refs, at_offset, at_rate, at_correction, at_momentum, at_overwrite = self.positions
        for (kernel, arguments, one, beta_1), (table, offset) in zip(self.calls, refs):
            arguments[at_refs], arguments[at_offset] = table, offset
            arguments[at_rate], arguments[at_correction] = learning_rate, float(one - beta_1 ** t)
            arguments[at_momentum], arguments[at_overwrite] = ema_momentum, overwrite
            kernel(*arguments)
        state.raw_steps = t


class BoundStep:
    """One optimizer call over the same gradient arrays every time, packed once.

    Made by ``functional.bind`` (or ``Adamax.bind``), which checks the gradients
    fully; a call then skips the matching and the per-array checks of ``apply``: it
    only confirms that the arrays are the ones bound (when passed) and still have
    their variable's shape and dtype, then applies the ``nonfinite`` policy, the
    learning rate and the update like any call. Write each step's gradients into
    the bound arrays in place.
    """

    __slots__ = ("state", "grads", "_refs", "_expected")

    def __init__(self, state, grads):
        self.state = state
        self.grads = tuple(grads)
        self._refs = state.backend.bound_refs(state, list(self.grads))
        self._expected = tuple((g, tuple(a.shape), a.dtype)
                               for g, a in zip(self.grads, state.arrays) if g is not None)

    def __call__(self, grads=None):
        """Apply one call with the bound gradient arrays' current contents; mutates the
        variables, the slots and the counters. ``grads``, when given, must hold the
        bound arrays themselves (``ValueError`` otherwise, before anything changes)."""
        if grads is not None and not (len(grads) == len(self.grads)
                                      and all(map(operator.is_, grads, self.grads))):
            raise ValueError("`grads` are not the arrays this step was bound to; pass the "
                             "same arrays (write new values into them), or bind again.")
        for g, shape, dtype in self._expected:
            if g.shape != shape or g.dtype != dtype:
                raise ValueError(f"A bound gradient now has shape {tuple(g.shape)} and dtype "
                                 f"{g.dtype}; its variable has shape {shape} and dtype "
                                 f"{dtype}. Bind again.")
        state = self.state
        _fast_or_general(state, lambda fast: self._refs,
                         lambda: commit(prepare(state, self.grads, refs=self._refs)))
        return state
