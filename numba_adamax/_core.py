"""The functional core: ``init`` and ``step``, and the one numeric code path.

``run_step`` turns one optimizer call into kernel calls: it decides the mode
(update or accumulate), the learning rate, the bias correction and the clip factors
in Python, then makes one norm pass (only when clipping by norm) and one fused pass
(``_cpu``'s ``update`` or ``accumulate`` kernel) per dtype group of variables. The
``Adamax`` class and ``step`` both end here.
A variable with an ``IndexedSlices`` gradient takes the lazy row update of
``_sparse`` before the dense pass, which then only moves its EMA.
"""
import math
import warnings

import numpy as np

from . import _sparse
from . import _state
from . import _validation as check
from ._addresses import gradient_table
from ._flat_buffer import FlatBuffer
from ._hyperparameters import Hyperparameters
from ._indexed_slices import IndexedSlices

_backend = None


def _kernels():
    """The CPU kernel module, imported on first use so importing the package stays cheap."""
    global _backend
    if _backend is None:
        from . import _cpu
        _backend = _cpu
    return _backend


def init(params, *, names=None, exclude_from_weight_decay=None, stream=None, **hyperparameters):
    """Create the optimizer state for ``params``.

    Args:
        params: list/tuple of numpy arrays, or a dict name -> array. The arrays are
            the variables; ``step`` updates them in place.
        names: names for a list of params (default ``variable_<i>``).
        exclude_from_weight_decay: regexes; a variable whose name contains a match
            is not weight-decayed.
        stream: for CUDA variables, the ``numba.cuda`` stream the steps run on
            (``state.stream``; None: the default stream).
        **hyperparameters: the ``Adamax`` constructor arguments (``learning_rate``,
            ``beta_1``, ..., ``decay``).

    Returns:
        A new ``AdamaxState`` with zeroed slots. Mutates nothing.
    """
    hp = Hyperparameters(**hyperparameters)
    pattern = check.exclusion_pattern(exclude_from_weight_decay)
    stream = check.stream(stream)
    state = _state.create(params, names, hp)
    state.stream = stream
    state.set_weight_decay_exclusions(pattern)
    hp.lock()
    return state


def step(params, grads, state, *, stream=None):
    """Apply one optimizer call: update ``params`` and ``state`` in place.

    ``params`` must be the structure given to ``init`` (the same arrays, in the same
    order or with the same keys, or the same ``FlatBuffer``); ``grads`` the same
    structure of arrays, with ``None`` for a variable without a gradient and
    ``IndexedSlices`` for a sparse one, or a ``FlatBuffer`` laid out like the
    variables' (checked in O(1)). Everything is validated before the first write.
    ``stream``, when given, becomes ``state.stream`` (the ``numba.cuda`` stream CUDA
    steps run on) before the call. Returns ``state`` (the same object).
    """
    if stream is not None:
        state.stream = check.stream(stream)
    if isinstance(params, FlatBuffer):
        if params is not state.buffer:
            raise ValueError("`params` is not the FlatBuffer the state was built with.")
        if is_flat_gradient(state, grads):
            commit(state, grads, prepare_call(state, grads))
            return state
        params = list(params.arrays)
    if isinstance(grads, FlatBuffer):
        grads = list(grads.arrays)
    if isinstance(params, dict):
        if not isinstance(grads, dict) or set(grads) != set(params):
            raise ValueError("`grads` must be a dict with the same keys as `params`.")
        keys = list(params)
        params, grads = [params[k] for k in keys], [grads[k] for k in keys]
        order = [state.name_index.get(str(k), -1) for k in keys]
        if sorted(order) != list(range(len(state.params))):
            raise ValueError("`params` keys do not match the names the state was built with.")
        ordered = [None] * len(order)
        for k, i in enumerate(order):
            if params[k] is not state.params[i]:
                raise ValueError(f"Unknown variable: params[{keys[k]!r}] is not the array "
                                 "the state was built with.")
            ordered[i] = grads[k]
        apply_indexed(state, ordered)
        return state
    params = check.sequence(params, "`params`")
    grads = check.sequence(grads, "`grads`")
    if len(params) != len(state.params) or len(grads) != len(params):
        raise ValueError(f"Expected {len(state.params)} params and as many grads; got "
                         f"{len(params)} params and {len(grads)} grads.")
    for i, p in enumerate(params):
        if p is not state.params[i]:
            raise ValueError(f"Unknown variable: params[{i}] is not the array the state "
                             "was built with.")
    apply_indexed(state, grads)
    return state


def apply_indexed(state, grads, in_call=None):
    """Validate ``grads`` (one entry per state variable, ``None`` allowed) and apply them.

    See ``prepare_call`` for the checks; nothing is written unless all pass.
    """
    commit(state, grads, prepare_call(state, grads, in_call))


def is_flat_gradient(state, grads):
    """True when ``grads`` is a ``FlatBuffer`` laid out like the state's variables."""
    return (type(grads) is FlatBuffer and state.buffer is not None
            and grads.layout == state.buffer.layout)


def prepare_call(state, grads, in_call=None, hyperparameters=None):
    """Check one call's gradients and compute its learning rate; mutates nothing.

    ``in_call`` lists the variable indices the caller passed (default: all); a
    ``None`` gradient among them is reported with a ``UserWarning``.
    ``hyperparameters`` (default ``state.hyperparameters``) gives the learning rate:
    a caller about to install new settings with the same structure passes them
    here, so the rate is computed from what the step will run with. Raises
    ``ValueError`` if no gradient at all is given, ``TypeError``/``ValueError`` for a
    bad gradient, ``FloatingPointError`` for a NaN/inf gradient under
    ``nonfinite="raise"``, and ``ValueError`` for a learning rate a schedule or
    callable got wrong. Returns the learning rate, ``None`` on an accumulation
    micro-step, or ``SKIPPED`` for a call the ``"skip"`` policy drops (see ``commit``).
    ``grads`` may also be a ``FlatBuffer`` that ``is_flat_gradient`` accepted.
    """
    flat = type(grads) is FlatBuffer
    missing = 0 if flat else check.gradients(grads, state.arrays, state.names)
    hp = state.hyperparameters if hyperparameters is None else hyperparameters
    lr = None if screen_nonfinite(state, grads, hp.nonfinite) else SKIPPED
    if lr is None and _is_update_step(state):
        lr = hp.learning_rate_at(state.raw_steps)
    if missing:
        missing = [state.names[i] for i in (range(len(grads)) if in_call is None else in_call)
                   if grads[i] is None]
    if missing:
        warnings.warn(f"Gradients do not exist for variables {missing} when minimizing "
                      "the loss.", UserWarning, stacklevel=4)
    return lr


# ---------------------------------------------------------------- non-finite gradients
# The one place the ``nonfinite`` policy acts: ``prepare_call`` asks
# ``screen_nonfinite`` before anything is written, and ``commit`` then either counts
# a skipped call or hands it to ``run_step``. With the default "propagate" this costs
# one attribute test per call.

#: What ``prepare_call`` returns for a call the ``"skip"`` policy drops.
SKIPPED = "skipped"


def screen_nonfinite(state, grads, policy):
    """Apply the ``nonfinite`` ``policy`` to this call's gradients; mutates nothing.

    Returns True when the call runs: always under ``"propagate"`` (NaN/inf flow into
    the state as in Keras), or when every gradient is finite. Otherwise returns False
    under ``"skip"`` and raises ``FloatingPointError`` under ``"raise"``. The check is
    one read pass over the gradients per dtype group (``_cpu.all_finite``), made only
    by those two policies.
    """
    if policy == "propagate":
        return True
    if type(grads) is not FlatBuffer and IndexedSlices in map(type, grads):
        # --- sparse gradients: their values are checked on their own, after the dense ones
        bad = _sparse.first_nonfinite(state, grads)
        dense = [None if type(g) is IndexedSlices else g for g in grads]
        if all(g is None for g in dense) or screen_nonfinite(state, dense, policy):
            if bad is not None and policy == "raise":
                raise FloatingPointError(
                    f"The gradient for variable {state.names[bad]!r} holds NaN or inf "
                    "(nonfinite='raise'); nothing was changed.")
            return bad is None
        return False
    if state.device is not None:
        from . import _cuda
        bad = _cuda.first_nonfinite(state, grads, state.stream)
        if bad is not None and policy == "raise":
            raise FloatingPointError(
                f"The gradient for variable {state.names[bad]!r} holds NaN or inf "
                "(nonfinite='raise'); nothing was changed.")
        return bad is None
    kernels = _kernels()
    for group in state.groups:
        refs, deref = _gradient_refs(group, grads)
        if not kernels.all_finite(group.total >= kernels.PARALLEL_THRESHOLD, group.chunks,
                                  group.table, refs, deref, group.m):
            if policy == "raise":
                listed = grads.arrays if type(grads) is FlatBuffer else grads
                bad = next(state.names[i] for i in group.indices
                           if listed[i] is not None and not np.isfinite(listed[i]).all())
                raise FloatingPointError(
                    f"The gradient for variable {bad!r} holds NaN or inf "
                    "(nonfinite='raise'); nothing was changed.")
            return False
    return True



def commit(state, grads, lr):
    """Finish a call ``prepare_call`` accepted: when it returned ``SKIPPED``, only
    ``state.skipped_steps`` grows by one; otherwise ``run_step(state, grads, lr)``."""
    if lr is SKIPPED:
        state.skipped_steps += 1
        return
    run_step(state, grads, lr)


def _is_update_step(state):
    gas = state.hyperparameters.gradient_accumulation_steps
    return gas is None or (state.raw_steps + 1) % gas == 0


def run_step(state, grads, lr):
    """Run one validated call; ``lr`` is the learning rate (``None`` on an accumulation
    micro-step). Mutates the variables, the slots and ``state.raw_steps``.

    One kernel call per dtype group (plus one norm pass per group when clipping by
    norm), whatever the number of variables.
    """
    settings = StepSettings(state)
    on_device = state.device is not None
    kernels = None if on_device else _kernels()
    threshold = 0 if on_device else kernels.PARALLEL_THRESHOLD
    loss_scale = settings.loss_scale
    # --- sparse gradients: deduplicated (and accumulated) by _sparse; {i: _sparse.Rows}.
    # The dense kernels then see them as absent: only the EMA (and reset) of the rows.
    sparse = (_sparse.prepare(state, grads, lr is not None, loss_scale or 1.0, threshold)
              if state.tracks_touched_rows or (type(grads) is not FlatBuffer
                                        and IndexedSlices in map(type, grads)) else {})
    dense = [None if i in sparse else g for i, g in enumerate(grads)] if sparse else grads
    if on_device:
        from . import _cuda
        if lr is None:
            _cuda.accumulate(state, dense, settings, state.stream)
        else:
            _cuda.update(state, dense, lr, settings, state.stream, sparse)
        state.raw_steps += 1
        return
    calls = [(group, group.total >= threshold, *_gradient_refs(group, dense))
             for group in state.groups]

    if lr is None:  # accumulation micro-step
        for group, parallel, refs, deref in calls:
            kernels.accumulate(parallel, group.chunks, group.table, refs, deref, group.ema,
                               group.accumulator, loss_scale, settings.ema_momentum,
                               settings.overwrite)
        state.raw_steps += 1
        return

    hp = state.hyperparameters
    clip_tables = _clip_tables(kernels, calls, hp, loss_scale, settings.steps, state, sparse)
    clip = (1.0, 1.0, settings.clipvalue) if settings.clipvalue else None
    if sparse:  # --- sparse gradients: lazy row updates, before the dense pass's EMA
        _update_sparse(state, sparse, hp, clip, clip_tables, settings.steps, lr, settings.t,
                       threshold)
    for group, parallel, refs, deref in calls:
        kernels.update(parallel, group.chunks, group.table, refs, deref, clip,
                       clip_tables.get(group.dtype), group.m, group.u, group.ema,
                       group.accumulator, loss_scale, settings.steps, lr,
                       settings.weight_decay, 1.0 - settings.beta_1, settings.beta_1,
                       settings.beta_2, settings.epsilon, float(settings.t),
                       settings.ema_momentum, settings.overwrite)
    state.raw_steps += 1


class StepSettings:
    """The host-side decisions of one call, shared by the CPU and CUDA paths: EMA
    momentum (0 on the first update), EMA overwrite, loss scale, accumulation steps,
    clipping, weight decay, the Adamax constants and ``t`` (see ``run_step``)."""

    __slots__ = ("ema_momentum", "overwrite", "loss_scale", "steps", "clipnorm",
                 "global_clipnorm", "clipvalue", "weight_decay", "beta_1", "beta_2",
                 "epsilon", "t")

    def __init__(self, state):
        hp = state.hyperparameters
        iterations = state.iterations
        self.ema_momentum = 0.0 if iterations == 0 else hp.ema_momentum
        self.overwrite = bool(hp.use_ema and hp.ema_overwrite_frequency
                              and (iterations + 1) % hp.ema_overwrite_frequency == 0)
        self.loss_scale = hp.loss_scale_factor
        self.steps = float(hp.gradient_accumulation_steps or 1)
        self.clipnorm, self.global_clipnorm = hp.clipnorm, hp.global_clipnorm
        self.clipvalue = hp.clipvalue
        self.weight_decay = hp.weight_decay  # None: no decay at all
        self.beta_1, self.beta_2, self.epsilon = hp.beta_1, hp.beta_2, hp.epsilon
        self.t = iterations + 1

    def bias_correction(self, dtype):
        """``1 - beta_1**t`` computed in ``dtype``, as a Python float."""
        return _bias_correction(dtype, self.beta_1, self.t)


def _bias_correction(dtype, beta_1, t):
    """``1 - beta_1**t`` computed in ``dtype`` (as Keras does, and as the dense kernel
    does), as a Python float."""
    dt = dtype.type
    return float(dt(1) - dt(beta_1) ** dt(t))


def _update_sparse(state, sparse, hp, clip, clip_tables, steps, lr, t, threshold):
    """The lazy row updates of the variables in ``sparse`` (``{i: _sparse.Rows}``),
    with the clip factors the dense pass would use; mutates their touched rows."""
    for i, rows in sparse.items():
        group, k = state.group_of(i)
        if group.dtype in clip_tables:
            clip_triple = (*clip_tables[group.dtype][k], math.inf)
        else:
            clip_triple = clip or (1.0, 1.0, math.inf)
        has_wd = hp.weight_decay is not None and state.weight_decay_mask[i]
        _sparse.update(rows, state.flat[i], threshold, hp.loss_scale_factor or 1.0, steps,
                       *clip_triple, lr, has_wd, hp.weight_decay or 0.0, 1.0 - hp.beta_1,
                       hp.beta_2, hp.epsilon, _bias_correction(group.dtype, hp.beta_1, t))


def _gradient_refs(group, grads):
    """``(refs, deref)`` locating ``group``'s gradients for the kernels (``_addresses``)."""
    if type(grads) is FlatBuffer:
        return grads.addresses, -1
    mine = grads if group.covers_all else [grads[i] for i in group.indices]
    return gradient_table(mine, group.gradient_refs)


def _clip_tables(kernels, calls, hp, loss_scale, steps, state, sparse):
    """Per group dtype, the ``(clip_scale, clip_divisor)`` of each variable when
    clipping by norm; empty otherwise.

    Keras' priority: ``clipnorm`` (``g * c / max(||g||, c)``, per variable), then
    ``global_clipnorm`` (every gradient times ``c * min(1/N, 1/c) + (N - N)``, NaN
    when N is not finite), then ``clipvalue``. Norms are of the effective gradient
    (unscaled, accumulated mean), summed in float64 and finished in each variable's
    dtype. Costs one reduction pass per group when clipping by norm. ``sparse``
    maps the variables with a sparse gradient to their rows (``_sparse.prepare``);
    their norm is that of the equivalent dense gradient.
    """
    c = hp.clipnorm or hp.global_clipnorm
    if not c:
        return {}
    sums = {group.dtype: kernels.sum_of_squares(parallel, group.chunks, group.table, refs,
                                                deref, group.m, group.accumulator,
                                                loss_scale, steps)
            for group, parallel, refs, deref in calls}
    for i, rows in sparse.items():  # --- sparse gradients
        group, k = state.group_of(i)
        sums[group.dtype][k] = _sparse.sum_of_squares(rows, state.flat[i], loss_scale or 1.0,
                                                      steps, kernels.PARALLEL_THRESHOLD)
    total = sum(float(s.sum()) for s in sums.values())
    return {group.dtype: kernels.clip_table(sums[group.dtype], total, c,
                                            not hp.clipnorm, group.m)
            for group, *_ in calls}
