"""The functional core: ``init`` and ``step``, and the one numeric code path.

``run_step`` turns one optimizer call into kernel calls: it decides the mode
(update or accumulate), the learning rate, the bias correction and the clip factors
in Python, then makes one norm pass (only when clipping by norm) and one fused pass
per variable. The ``Adamax`` class and ``step`` both end here.
"""
import warnings

import numpy as np

from . import _math
from . import _state
from . import _validation as check
from ._hyperparameters import Hyperparameters

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
    state = _state.create(params, names, hp)
    if exclude_from_weight_decay:
        state.set_weight_decay_exclusions(var_names=list(exclude_from_weight_decay))
    hp.lock()
    return state


def step(params, grads, state):
    """Apply one optimizer call: update ``params`` and ``state`` in place.

    ``params`` must be the structure given to ``init`` (the same arrays, in the same
    order or with the same keys); ``grads`` the same structure of arrays, with
    ``None`` for a variable without a gradient. Everything is validated before the
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
        if g is not None:
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
    hp = state.hyperparameters
    gas = hp.gradient_accumulation_steps
    update = lr is not None
    iterations = state.iterations
    use_acc = gas is not None
    use_ema = hp.use_ema
    overwrite = bool(use_ema and hp.ema_overwrite_frequency
                     and (iterations + 1) % hp.ema_overwrite_frequency == 0)
    mode = _math.MODE_UPDATE if update else _math.MODE_ACCUMULATE
    has_ls = hp.loss_scale_factor is not None
    clip_mode, clip_value = _clip_setting(hp) if update else (_math.CLIP_NONE, 0.0)
    has_wd = update and hp.weight_decay is not None
    base = (lr or 0.0, hp.weight_decay or 0.0, 1.0 - hp.beta_1, hp.beta_2, hp.epsilon, 1.0,
            hp.loss_scale_factor or 1.0, float(gas or 1), 0.0, 0.0,
            0.0 if iterations == 0 else hp.ema_momentum)

    # One coefficient tuple per dtype: the bias correction is computed in that dtype.
    coefficients = {}
    t = iterations + 1
    for group in state.groups:
        dt = group.dtype.type
        bias = _rounded(group.dtype, dt(1) - dt(hp.beta_1) ** dt(t)) if update else 1.0
        coefficients[group.dtype] = base[:5] + (bias,) + base[6:]

    # Clip factors need the norms of the effective gradients first (one reduction pass).
    clip = {}
    if clip_mode in (_math.CLIP_NORM, _math.CLIP_SCALE):
        sums = {}
        flags = (mode, has_ls, use_acc, 0, 0, 0, 0)
        for i, g in enumerate(grads):
            if g is not None:
                group, _, _, _, _, acc = state.flat[i]
                sums[i] = kernels.sum_of_squares(g.reshape(-1), acc,
                                                 coefficients[group.dtype], flags)
        clip = _clip_factors(state, sums, clip_mode, clip_value)
    elif clip_mode == _math.CLIP_VALUE:
        clip = {i: (clip_value, 0.0) for i, g in enumerate(grads) if g is not None}

    for i, g in enumerate(grads):
        group, w, m, u, e, a = state.flat[i]
        c = coefficients[group.dtype]
        if g is None:
            if use_ema:
                kernels.fused_step(w, w, m, u, e, a, c,
                                   (_math.MODE_EMA_ONLY, 0, 0, 0, 0, 1, int(overwrite)))
            if update and use_acc:
                a.fill(0)  # Keras resets every accumulator on an update step
            continue
        if i in clip:
            c = c[:8] + clip[i] + c[10:]
        flags = (mode, int(has_ls), int(use_acc), clip_mode,
                 int(has_wd and state.weight_decay_mask[i]), int(use_ema), int(overwrite))
        kernels.fused_step(w, g.reshape(-1), m, u, e, a, c, flags)
    state.raw_steps += 1


def _clip_setting(hp):
    """The active clipping as ``(CLIP_* mode, value)``, by Keras' priority order."""
    if hp.clipnorm:
        return _math.CLIP_NORM, hp.clipnorm
    if hp.global_clipnorm:
        return _math.CLIP_SCALE, hp.global_clipnorm
    if hp.clipvalue:
        return _math.CLIP_VALUE, hp.clipvalue
    return _math.CLIP_NONE, 0.0


def _clip_factors(state, sums, clip_mode, c):
    """Per-variable ``(clip_a, clip_b)`` from the squared norms, in each variable's dtype.

    ``clipnorm``: ``g * c / max(||g||, c)``. ``global_clipnorm``: every gradient is
    multiplied by ``c * min(1/N, 1/c) + (N - N)``, which is NaN when N is not finite.
    """
    factors = {}
    with np.errstate(all="ignore"):
        if clip_mode == _math.CLIP_NORM:
            for i, s in sums.items():
                dt = state.params[i].dtype.type
                norm = np.sqrt(dt(s))
                factors[i] = (_rounded(np.dtype(dt), c), float(np.maximum(norm, dt(c))))
        else:
            total = sum(sums.values())
            for i in sums:
                dt = state.params[i].dtype.type
                n = np.sqrt(dt(total))
                scale = dt(c) * np.minimum(dt(1) / n, dt(1) / dt(c)) + (n - n)
                factors[i] = (float(scale), 0.0)
    return factors
