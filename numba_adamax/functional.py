"""The functional API, ``init``, ``step`` and ``bind``, and the two things every
entry point shares: ``match`` (a call's arguments to a state) and ``adopt`` (a new
state's exclusions, stream and lock)."""
from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from . import _apply
from . import _state
from . import _validation as check
from ._flat_buffer import FlatBuffer
from ._hyperparameters import Hyperparameters
from ._indexed_slices import IndexedSlices
from ._typing import Gradients, Variables


def init(params: Variables, *, names: Iterable[str] | None = None,
         exclude_from_weight_decay: Iterable[str] | str | None = None, stream: Any = None,
         **hyperparameters: Any) -> _state.AdamaxState:
    """Create the optimizer state for ``params``.

    Args:
        params: list/tuple of numpy arrays, a dict name -> array, or a
            ``FlatBuffer``. The arrays are the variables; ``step`` updates them in
            place.
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
    adopt(state, (pattern, None), stream)
    return state


def adopt(state, exclusions=(None, None), stream=None):
    """Make a freshly created ``state`` ready to step: set its weight-decay
    ``exclusions`` (``(compiled name pattern, variables)``, see
    ``AdamaxState.set_weight_decay_exclusions``) and ``stream``, and lock its
    hyperparameters (the slots now exist). Mutates ``state``."""
    state.set_weight_decay_exclusions(*exclusions)
    state.stream = stream
    state.hyperparameters.lock()


def step(params: Variables, grads: Gradients, state: _state.AdamaxState, *,
         stream: Any = None) -> _state.AdamaxState:
    """Apply one optimizer call: update ``params`` and ``state`` in place.

    ``params`` must be the structure given to ``init`` (the same arrays, in the same
    order or with the same keys, or the same ``FlatBuffer``); ``grads`` the same
    structure of arrays, with ``None`` for a variable without a gradient and
    ``IndexedSlices`` for a sparse one, or a ``FlatBuffer`` laid out like the
    variables' (checked in O(1)). Everything is validated before the first write.
    ``stream``, when given, becomes ``state.stream`` (the ``numba.cuda`` stream CUDA
    steps run on) before the call. Returns ``state`` (the same object). A ``state``
    that is not an ``AdamaxState`` raises TypeError.
    """
    check.adamax_state(state, _state.AdamaxState, "step", "apply(grads, variables)")
    if stream is not None:
        state.stream = check.stream(stream)
    grads, passed = match(state, grads, params, argument="params", in_order=True)
    _apply.run(state, grads, passed)
    return state


def bind(params: Variables, grads: Gradients, state: _state.AdamaxState) -> _apply.BoundStep:
    """A ``BoundStep`` for ``step(params, grads, state)`` with these very arrays: the
    arguments are matched and checked once, here, and each call of the result applies
    one step with the arrays' current contents (write the gradients into them in
    place). ``grads`` are dense arrays or None (an ``IndexedSlices`` is refused:
    sparse gradients change every step). Mutates nothing; raises as ``step`` would.
    """
    check.adamax_state(state, _state.AdamaxState, "bind", "bind(grads, variables)")
    grads, _ = match(state, grads, params, argument="params", in_order=True)
    return _bound(state, grads)


def _bound(state, grads):
    """``BoundStep`` over the per-variable ``grads`` (or a ``FlatBuffer``), checked."""
    if type(grads) is FlatBuffer:
        grads = list(grads.arrays)
    if any(type(g) is IndexedSlices for g in grads):
        raise TypeError("An IndexedSlices gradient cannot be bound: its rows change every "
                        "step. Pass sparse gradients to apply()/step() instead.")
    check.gradients(grads, state.arrays, state.names)
    return _apply.BoundStep(state, grads)


def is_flat_gradient(state, grads):
    """True when ``grads`` is a ``FlatBuffer`` laid out like the state's variables."""
    return (type(grads) is FlatBuffer and state.buffer is not None
            and grads.layout == state.buffer.layout)


def match(state, grads, variables, *, argument="variables", in_order=False):
    """Match one call's ``grads`` to the variables of ``state``; mutates nothing.

    ``grads`` is a list/tuple (matched to ``variables`` by position), a dict (matched
    by key) or a ``FlatBuffer``; ``variables`` the same structure of the state's
    variables, a ``FlatBuffer``, or None for every variable of the state (a dict of
    gradients then names them). With ``in_order`` (the functional API) ``variables``
    must be exactly the state's variables, in order or keyed by their names;
    otherwise any of them, in any order, matched by identity. ``argument`` names
    ``variables`` in messages.

    Returns ``(grads, passed)``: one gradient per state variable (None for the
    variables not passed) and the indices of the variables passed (None: all of
    them, in order); or the ``FlatBuffer`` itself and None when it is laid out like
    a state built on a ``FlatBuffer`` (checked in O(1)). Raises ``TypeError`` for a
    wrong kind of argument and ``ValueError`` for a mismatch.
    """
    kind = type(grads)
    if kind is list or kind is tuple:
        n = len(state.params)
        if len(grads) == n and (variables is None or (
                type(variables) in (list, tuple) and len(variables) == n
                and all(map(operator.is_, variables, state.params)))):
            return grads, None  # the common case: every built variable, in order
    elif kind is FlatBuffer:
        if is_flat_gradient(state, grads) and (variables is None or variables is state.buffer):
            return grads, None
        grads = list(grads.arrays)
    if isinstance(variables, FlatBuffer):
        if variables is not state.buffer:
            raise ValueError(f"`{argument}` is not the FlatBuffer the state was built with.")
        variables = list(variables.arrays)
    if isinstance(grads, dict) or isinstance(variables, dict):
        return _match_dicts(state, grads, variables, argument, in_order)
    grads = check.sequence(grads, "`grads`")
    n = len(state.params)
    if variables is None:
        if len(grads) != n:
            raise ValueError(f"Got {len(grads)} gradients for {n} built variables.")
        return grads, None
    variables = check.sequence(variables, f"`{argument}`")
    if len(variables) != len(grads):
        raise ValueError(f"Got {len(grads)} gradients for {len(variables)} {argument}.")
    if len(variables) == n and all(map(operator.is_, variables, state.params)):
        return grads, None  # the built variables, in order
    if in_order:
        if len(variables) != n:
            raise ValueError(f"Got {len(variables)} {argument} for a state built with {n} "
                             "variables; pass all of them, in order.")
        bad = next(i for i, (v, p) in enumerate(zip(variables, state.params)) if v is not p)
        raise ValueError(f"Unknown variable: {argument}[{bad}] is not the array the state "
                         "was built with.")
    return _scatter(state, grads, [state.index_of(v) for v in variables])


def _match_dicts(state, grads, variables, argument, in_order):
    """``match`` for a dict of gradients (and a dict of variables, or None)."""
    if not isinstance(grads, dict) or not (variables is None or isinstance(variables, dict)) \
            or (variables is not None and set(grads) != set(variables)):
        raise ValueError(f"`grads` and `{argument}` must be dicts with the same keys.")
    if variables is None:
        unknown = [k for k in grads if str(k) not in state.name_index]
        if unknown:
            raise ValueError(f"Unknown variable name(s) in `grads`: {unknown}")
        indices = [state.name_index[str(k)] for k in grads]
        return _scatter(state, list(grads.values()), indices)
    keys = list(variables)
    if in_order:
        indices = [state.name_index.get(str(k), -1) for k in keys]
        if sorted(indices) != list(range(len(state.params))):
            raise ValueError(f"`{argument}` keys do not match the names the state was built "
                             "with.")
        for k, i in zip(keys, indices):
            if variables[k] is not state.params[i]:
                raise ValueError(f"Unknown variable: {argument}[{k!r}] is not the array the "
                                 "state was built with.")
    else:
        indices = [state.index_of(variables[k]) for k in keys]
    grads, passed = _scatter(state, [grads[k] for k in keys], indices)
    return grads, None if len(indices) == len(state.params) else passed


def _scatter(state, grads, indices):
    """One gradient per state variable from ``grads[j]`` for variable ``indices[j]``."""
    if len(set(indices)) != len(indices):
        raise ValueError("The same variable appears more than once in `variables`.")
    full = [None] * len(state.params)
    for j, i in enumerate(indices):
        full[i] = grads[j]
    return full, indices
