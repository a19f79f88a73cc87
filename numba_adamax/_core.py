"""The functional core: ``init`` and ``step``, and the one numeric code path.

``run_step`` turns one optimizer call into kernel calls: it decides the mode
(update or accumulate), the learning rate, the bias correction and the clip factors
in Python, then makes one norm pass (only when clipping by norm) and one fused pass
per variable (``_cpu``'s ``update``, ``accumulate`` or ``ema`` kernel). The ``Adamax`` class and ``step`` both end here.
A variable with an ``IndexedSlices`` gradient takes the lazy row update of ``_sparse``
instead of the dense pass.
"""
import math
import warnings

import numpy as np

from . import _sparse
from . import _state
from . import _validation as check
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


def init(params, *, names=None, exclude_from_weight_decay=None, **hyperparameters):
    """Create the optimizer state for ``params``.

    Args:
        params: list/tuple of numpy arrays, or a dict name -> array. The arrays are
            the variables; ``step`` updates them in place.
        names: names for a list of params (default ``variable_<i>``).
        exclude_from_weight_decay: regexes; a variable whose name contains a match
            is not weight-decayed.
        **hyperparameters: the ``Adamax`` constructor arguments (``learning_rate``,
            ``beta_1``, ..., ``decay``).

    Returns:
        A new ``AdamaxState`` with zeroed slots. Mutates nothing.
    """
    hp = Hyperparameters(**hyperparameters)
    pattern = check.exclusion_pattern(exclude_from_weight_decay)
    state = _state.create(params, names, hp)
    state.set_weight_decay_exclusions(pattern)
    hp.lock()
    return state


def step(params, grads, state):
    """Apply one optimizer call: update ``params`` and ``state`` in place.

    ``params`` must be the structure given to ``init`` (the same arrays, in the same
    order or with the same keys); ``grads`` the same structure of arrays, with
    ``None`` for a variable without a gradient and ``IndexedSlices`` for a sparse one. Everything is validated before the
    first write. Returns ``state`` (the same object).
    """
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
    run_step(state, grads, prepare_call(state, grads, in_call))


def prepare_call(state, grads, in_call=None):
    """Check one call's gradients and compute its learning rate; mutates nothing.

    ``in_call`` lists the variable indices the caller passed (default: all); a
    ``None`` gradient among them is reported with a ``UserWarning``. Raises
    ``ValueError`` if no gradient at all is given, ``TypeError``/``ValueError`` for a
    bad gradient, and ``ValueError`` for a learning rate a schedule or callable got
    wrong. Returns the learning rate, or ``None`` on an accumulation micro-step.
    """
    if all(g is None for g in grads):
        raise ValueError("No gradients provided for any variable.")
    for i, g in enumerate(grads):
        if isinstance(g, IndexedSlices):  # sparse gradient
            check.sparse_gradient(g, state.params[i],
                                  f"gradient for variable {state.names[i]!r}")
        elif g is not None:
            check.gradient(g, state.params[i], f"gradient for variable {state.names[i]!r}")
    lr = None
    if _is_update_step(state):
        lr = state.hyperparameters.learning_rate_at(state.raw_steps)
    missing = [state.names[i] for i in (range(len(grads)) if in_call is None else in_call)
               if grads[i] is None]
    if missing:
        warnings.warn(f"Gradients do not exist for variables {missing} when minimizing "
                      "the loss.", UserWarning, stacklevel=4)
    return lr


def _is_update_step(state):
    gas = state.hyperparameters.gradient_accumulation_steps
    return gas is None or (state.raw_steps + 1) % gas == 0


def _rounded(dtype, value):
    """``value`` rounded to ``dtype`` and returned as a Python float."""
    return float(dtype.type(value))


def run_step(state, grads, lr):
    """Run one validated call; ``lr`` is the learning rate (``None`` on an accumulation
    micro-step). Mutates the variables, the slots and ``state.raw_steps``."""
    kernels = _kernels()
    threshold = kernels.PARALLEL_THRESHOLD
    hp = state.hyperparameters
    iterations = state.iterations
    ema_momentum = 0.0 if iterations == 0 else hp.ema_momentum
    overwrite = bool(hp.use_ema and hp.ema_overwrite_frequency
                     and (iterations + 1) % hp.ema_overwrite_frequency == 0)
    loss_scale = hp.loss_scale_factor or 1.0
    # --- sparse gradients: deduplicated (and accumulated) by _sparse; {i: _sparse.Rows}
    sparse = _sparse.prepare(state, grads, lr is not None, loss_scale, threshold)

    if lr is None:  # accumulation micro-step
        for i, g in enumerate(grads):
            group, w, m, u, e, a = state.flat[i]
            if g is not None and i not in sparse:
                kernels.accumulate(w.size >= threshold, w, g.reshape(-1), e, a, loss_scale,
                                   ema_momentum, overwrite)
            elif e is not None:
                kernels.ema(w.size >= threshold, w, e, ema_momentum, overwrite)
        state.raw_steps += 1
        return

    steps = float(hp.gradient_accumulation_steps or 1)
    clip = _clip_factors(state, grads, hp, loss_scale, steps, threshold, sparse)
    shared_clip = (1.0, 1.0, hp.clipvalue) if hp.clipvalue else _NO_CLIP
    weight_decay = hp.weight_decay
    t = iterations + 1
    bias = {group.dtype: _rounded(group.dtype, group.dtype.type(1)
                                  - group.dtype.type(hp.beta_1) ** group.dtype.type(t))
            for group in state.groups}
    for i, g in enumerate(grads):
        group, w, m, u, e, a = state.flat[i]
        if g is None:
            if e is not None:
                kernels.ema(w.size >= threshold, w, e, ema_momentum, overwrite)
            if a is not None:
                a.fill(0)  # Keras resets every accumulator on an update step
            continue
        clip_scale, clip_divisor, clip_value = shared_clip if clip is None else clip[i]
        has_wd = weight_decay is not None and state.weight_decay_mask[i]
        if i in sparse:  # --- sparse gradient: lazy row update, then the whole-variable EMA
            _sparse.update(sparse[i], state.flat[i], threshold, loss_scale, steps, clip_scale,
                           clip_divisor, clip_value, lr, has_wd, weight_decay or 0.0,
                           1.0 - hp.beta_1, hp.beta_2, hp.epsilon, bias[group.dtype])
            if e is not None:
                kernels.ema(w.size >= threshold, w, e, ema_momentum, overwrite)
            continue
        kernels.update(w.size >= threshold, w, g.reshape(-1), m, u, e, a, loss_scale, steps,
                       clip_scale, clip_divisor, clip_value, lr, has_wd, weight_decay or 0.0,
                       1.0 - hp.beta_1, hp.beta_2, hp.epsilon, bias[group.dtype],
                       ema_momentum, overwrite)
    state.raw_steps += 1


_NO_CLIP = (1.0, 1.0, math.inf)


def _clip_factors(state, grads, hp, loss_scale, steps, threshold, sparse):
    """Per-variable ``(clip_scale, clip_divisor, clip_value)`` for ``_math.clip_gradient``
    when clipping by norm; ``None`` otherwise (the factors are then the same for all).

    Keras' priority: ``clipnorm`` (``g * c / max(||g||, c)``, per variable), then
    ``global_clipnorm`` (every gradient times ``c * min(1/N, 1/c) + (N - N)``, NaN
    when N is not finite), then ``clipvalue``. Norms are of the effective gradient
    (unscaled, accumulated mean), summed in float64 and finished in each variable's
    dtype. Costs one reduction pass when clipping by norm. ``sparse`` maps the
    variables with a sparse gradient to their rows (``_sparse.prepare``).
    """
    c = hp.clipnorm or hp.global_clipnorm
    if not c:
        return None
    present = [i for i, g in enumerate(grads) if g is not None]
    sums = {}
    for i in present:
        if i in sparse:  # --- sparse gradient: the norm of its equivalent dense gradient
            sums[i] = _sparse.sum_of_squares(sparse[i], state.flat[i], loss_scale, steps,
                                             threshold)
            continue
        g, a = grads[i], state.flat[i][5]
        sums[i] = _kernels().sum_of_squares(g.size >= threshold, g.reshape(-1), a,
                                            loss_scale, steps)
    factors = {}
    total = sum(sums.values())
    with np.errstate(all="ignore"):
        for i in present:
            dt = state.params[i].dtype.type
            if hp.clipnorm:
                norm = np.sqrt(dt(sums[i]))
                factors[i] = (_rounded(np.dtype(dt), c), float(np.maximum(norm, dt(c))),
                              math.inf)
            else:
                n = np.sqrt(dt(total))
                scale = dt(c) * np.minimum(dt(1) / n, dt(1) / dt(c)) + (n - n)
                factors[i] = (float(scale), 1.0, math.inf)
    return factors
