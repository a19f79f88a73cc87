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
"""
import math
import os
import sys
import warnings

import numpy as np

from . import _sparse
from . import _validation as check
from ._flat_buffer import FlatBuffer
from ._indexed_slices import IndexedSlices


class Call:
    """A validated call, ready for ``commit``.

    ``state``: the ``AdamaxState``. ``grads``: one entry per variable of the state
    (None: no gradient) or a ``FlatBuffer`` laid out like the variables.
    ``hyperparameters``: the settings it runs with. ``learning_rate``: the rate of
    an update step, None on an accumulation micro-step. ``skipped``: True when the
    ``"skip"`` policy drops the call (only ``skipped_steps`` changes).
    """

    __slots__ = ("state", "grads", "hyperparameters", "learning_rate", "skipped")

    def __init__(self, state, grads, hyperparameters, learning_rate, skipped):
        self.state, self.grads, self.hyperparameters = state, grads, hyperparameters
        self.learning_rate, self.skipped = learning_rate, skipped


def prepare(state, grads, passed=None, hyperparameters=None):
    """Check one call's gradients and decide what it does; mutates nothing.

    ``grads`` has one entry per state variable (or is a ``FlatBuffer`` that
    ``functional.match`` accepted). ``passed`` lists the variable indices the caller
    named (default: all); a ``None`` gradient among them is reported with a
    ``UserWarning`` pointing at the caller's code. ``hyperparameters`` (default
    ``state.hyperparameters``) are the settings the call runs with: a caller about
    to install new settings of the same structure passes them here.

    Raises ``ValueError`` if no gradient at all is given, ``TypeError`` /
    ``ValueError`` for a bad gradient, ``FloatingPointError`` for a NaN/inf gradient
    under ``nonfinite="raise"``, and ``ValueError`` for a learning rate a schedule
    or callable got wrong.
    """
    hp = state.hyperparameters if hyperparameters is None else hyperparameters
    flat = type(grads) is FlatBuffer
    missing, grads = (0, grads) if flat else check.gradients(grads, state.arrays, state.names)
    skipped = hp.nonfinite != "propagate" and _screen_nonfinite(state, grads, hp.nonfinite)
    learning_rate = None
    if not skipped and _is_update_step(state, hp):
        learning_rate = hp.learning_rate_at(state.raw_steps)
    if missing:
        names = [state.names[i] for i in (range(len(grads)) if passed is None else passed)
                 if grads[i] is None]
        if names:
            warnings.warn(f"Gradients do not exist for variables {names} when minimizing "
                          "the loss.", UserWarning, stacklevel=_first_frame_outside_package())
    return Call(state, grads, hp, learning_rate, skipped)


def _first_frame_outside_package():
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point
    at the innermost frame whose code is not in this package (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _is_update_step(state, hp):
    steps = hp.gradient_accumulation_steps
    return steps is None or (state.raw_steps + 1) % steps == 0


def _screen_nonfinite(state, grads, policy):
    """True when the call must be skipped (``"skip"``) because a gradient holds NaN or
    inf; raises ``FloatingPointError`` naming the first such variable under
    ``"raise"``. Dense gradients are checked per dtype group (one read pass each),
    then the values of sparse ones. Mutates nothing."""
    bad = _first_nonfinite(state, grads)
    if bad is None:
        return False
    if policy == "raise":
        raise FloatingPointError(f"The gradient for variable {state.names[bad]!r} holds NaN "
                                 "or inf (nonfinite='raise'); nothing was changed.")
    return True


def _first_nonfinite(state, grads):
    backend = state.backend
    sparse = type(grads) is not FlatBuffer and _sparse.has_sparse(grads)
    dense = _dense_part(grads) if sparse else grads
    if type(dense) is FlatBuffer or any(g is not None for g in dense):
        refs = backend.gradient_refs(state, _kernel_view(dense))
        for group, group_refs in zip(state.groups, refs):
            flags = backend.nonfinite_flags(state, group, group_refs)
            if flags.any():
                return group.indices[int(np.flatnonzero(flags)[0])]
    return _sparse.first_nonfinite(state, grads) if sparse else None


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
    ``bias_correction``: per math dtype of the state's groups, ``1 - beta_1**t``
    computed in that dtype (as Keras does), as a Python float.
    """

    __slots__ = ("micro_step", "learning_rate", "ema_momentum", "overwrite", "loss_scale",
                 "steps", "clipnorm", "global_clipnorm", "clipvalue", "clip_norm", "clip",
                 "row_clip", "weight_decay", "beta_1", "one_minus_beta_1", "beta_2", "epsilon",
                 "t", "bias_correction")

    def __init__(self, call):
        state, hp = call.state, call.hyperparameters
        iterations = state.iterations
        self.micro_step = call.learning_rate is None
        self.learning_rate = call.learning_rate
        self.ema_momentum = 0.0 if iterations == 0 else hp.ema_momentum
        self.overwrite = bool(hp.use_ema and hp.ema_overwrite_frequency
                              and (iterations + 1) % hp.ema_overwrite_frequency == 0)
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
        self.t = state.bias_correction_step
        self.bias_correction = {} if self.micro_step else {
            group.slot_dtype: _bias_correction(group.slot_dtype, hp.beta_1, self.t)
            for group in state.groups}

    def decays(self, state, i):
        """True when weight decay applies to variable ``i`` in this call."""
        return self.weight_decay is not None and state.weight_decay_mask[i]


def _bias_correction(dtype, beta_1, t):
    """``1 - beta_1**t`` computed in ``dtype``, as a Python float."""
    dt = dtype.type
    return float(dt(1) - dt(beta_1) ** dt(t))


def commit(call):
    """Run a call ``prepare`` accepted: mutates the variables, the slots and the
    counters (only ``skipped_steps`` for a skipped call)."""
    state = call.state
    if call.skipped:
        state.skipped_steps += 1
        return
    settings = StepSettings(call)
    backend, grads = state.backend, call.grads
    sparse = {}
    if state.window is not None or (type(grads) is not FlatBuffer and _sparse.has_sparse(grads)):
        sparse = _sparse.prepare(state, grads, settings)
    dense = [None if i in sparse else g for i, g in enumerate(grads)] if sparse else grads
    refs = backend.gradient_refs(state, _kernel_view(dense))
    if settings.micro_step:
        for group, group_refs in zip(state.groups, refs):
            backend.accumulate(state, group, group_refs, settings)
    else:
        clip_tables = _clip_tables(state, refs, sparse, settings)
        for i, rows in sparse.items():  # lazy row updates, before the dense pass's EMA
            backend.update_rows(state, i, rows, settings, clip_tables)
        for group, group_refs in zip(state.groups, refs):
            backend.update(state, group, group_refs, settings,
                           None if clip_tables is None else clip_tables[group.position])
    state.raw_steps += 1


def _clip_tables(state, refs, sparse, settings):
    """Per group, the ``(clip_scale, clip_divisor)`` table of its variables when
    clipping by norm, else None.

    Keras' priority: ``clipnorm`` (``g * c / max(||g||, c)``, per variable), then
    ``global_clipnorm`` (every gradient times ``c * min(1/N, 1/c) + (N - N)``, NaN
    when N is not finite), then ``clipvalue``. Norms are of the effective gradient
    (unscaled, accumulated mean): each chunk's squares summed in float64, the chunk
    sums added per variable in chunk order, and finished in each variable's dtype. A
    variable with a sparse gradient counts with the norm of its rows.
    """
    if not settings.clip_norm:
        return None
    backend = state.backend
    sums = backend.new_square_sums(state)
    for group, group_refs in zip(state.groups, refs):
        partials = backend.chunk_square_partials(state, group, group_refs, settings)
        backend.fold_square_partials(state, group, partials, sums)
    for i, rows in sparse.items():
        backend.sparse_square_sum(state, i, rows, settings, sums)
    return backend.clip_tables(state, sums, settings)
