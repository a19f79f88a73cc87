"""Compile the kernels a configuration runs ahead of its first step.

``warmup`` runs real steps of that configuration on small scratch variables, so the
kernels compiled are exactly those the real steps will call (same dtypes, same
optional slots and features, the serial or the parallel variant): after it, the
first real step compiles nothing. Compiled code is cached on disk, so a later
process only loads it. ``python -m numba_adamax warmup --all`` fills the cache for
every configuration.
"""
from __future__ import annotations

import itertools
from typing import Any
import logging
import time

import numpy as np

from . import _apply
from . import _state
from . import _validation as check
from . import functional
from ._hyperparameters import FIELDS, Hyperparameters
from ._indexed_slices import IndexedSlices
from .kernels import config

logger = logging.getLogger("numba_adamax")

_DTYPES = ("float32", "float64")

#: The settings that decide which kernel signatures a step compiles, with the values
#: ``warmup --all`` goes through (the others only change numbers the kernels read).
_SIGNATURE_OPTIONS = {
    "loss_scale_factor": (None, 128.0),
    "weight_decay": (None, 0.004),
    "use_ema": (False, True),
    "gradient_accumulation_steps": (None, 2),
    "clip": ({}, {"clipvalue": 1.0}, {"clipnorm": 1.0}),
}


def warmup(target: Any = _DTYPES, *, sparse: bool = False, parallel: bool | None = None,
           dtypes: Any = None, **hyperparameters: Any) -> int:
    """Compile (or load from the on-disk cache) the kernels a configuration runs.

    ``target`` is an ``Adamax`` or an ``AdamaxState``: its settings, the dtypes and
    the device of its variables, and for each dtype group the serial or the
    parallel variant its size selects. Or it is a dtype or a sequence of dtypes
    (``"float32"``, ``np.float64``, ...), with the ``Adamax`` arguments as
    ``**hyperparameters``; then ``parallel`` picks the variant (None: both, since
    the sizes are not known). ``sparse=True`` also compiles the kernels of
    ``IndexedSlices`` gradients (deduplication and row updates). ``dtypes`` is the
    older name of ``target`` for dtypes.

    Runs the configuration's steps (update, accumulation micro-step, norm and
    finite-check passes) on scratch variables of one or ``PARALLEL_THRESHOLD``
    elements; touches no user state. A schedule or callable learning rate is not
    called. Returns the number of CPU kernel signatures compiled in this process.
    Raises ``TypeError``/``ValueError`` for a bad target or argument before
    compiling anything.
    """
    if not isinstance(sparse, (bool, np.bool_)):
        raise TypeError(f"warmup: `sparse` must be a bool, got {sparse!r}.")
    if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
        raise TypeError(f"warmup: `parallel` must be None or a bool, got {parallel!r}.")
    plans = _plans(target if dtypes is None else dtypes, parallel, hyperparameters)
    started = time.perf_counter()
    for hp, backend, dtype, elements in plans:
        _run(hp, backend, dtype, elements, sparse)
    seconds = time.perf_counter() - started
    logger.info("warmup: %d configuration(s) ready in %.1f s (%s).", len(plans), seconds,
                "compiled and cached on disk" if seconds > 1 else "loaded from the disk cache")
    from .kernels import cpu, cpu_sparse
    return sum(len(k.signatures) for k in cpu.DISPATCHERS + cpu_sparse.DISPATCHERS)


def _plans(target, parallel, hyperparameters):
    """``(hyperparameters, backend, dtype, elements)`` for each scratch run; checks
    every argument first."""
    from .optimizer import Adamax
    if isinstance(target, (Adamax, _state.AdamaxState)):
        if hyperparameters:
            raise TypeError("warmup: the settings come from the optimizer or state; do not "
                            f"also pass {sorted(hyperparameters)}.")
        state = target.state if isinstance(target, Adamax) else target
        if state is None:  # an unbuilt optimizer: its settings, the default dtypes
            return _dtype_plans(_scratch_settings(target._hp), _DTYPES, parallel)
        hp = _scratch_settings(state.hyperparameters)
        return [(hp, state.backend, group.dtype,
                 _sizes(group.total >= config.PARALLEL_THRESHOLD)[0]) for group in state.groups]
    dtypes = [target] if isinstance(target, (str, np.dtype, type)) else target
    if not isinstance(dtypes, (list, tuple)):
        raise TypeError("warmup: `target` must be an Adamax, an AdamaxState, a dtype or a "
                        f"list of dtypes, got {check.describe(target)}.")
    hp = _scratch_settings(Hyperparameters(**hyperparameters))
    return _dtype_plans(hp, dtypes, parallel)


def _dtype_plans(hp, dtypes, parallel):
    from .backends import cpu
    resolved = [check.float_dtype(d, "warmup: a dtype in `target`") for d in dtypes]
    return [(hp, cpu, dtype, n) for dtype in resolved for n in _sizes(parallel)]


def _sizes(parallel):
    """Scratch sizes that select the serial (1 element) and/or parallel variant."""
    if parallel is None:
        return (1, config.PARALLEL_THRESHOLD)
    return (config.PARALLEL_THRESHOLD,) if parallel else (1,)


def _scratch_settings(hp):
    """A copy of ``hp`` with a float learning rate and no decay (same kernels)."""
    fields = {name: getattr(hp, name) for name in FIELDS
              if name not in ("learning_rate", "decay", "name")}
    return Hyperparameters(learning_rate=0.001, **fields)


def _run(hp, backend, dtype, elements, sparse):
    """One accumulation window (or one update) of ``hp`` on scratch variables."""
    rows = max(1, elements // 4)
    variables = [backend.zeros(elements, dtype), backend.zeros(rows * 4, dtype).reshape(rows, 4)]
    state = _state.create(variables, None, hp)
    functional.adopt(state)
    calls = hp.gradient_accumulation_steps or 1
    for _ in range(calls):
        grads = [backend.zeros(elements, dtype), None]
        if sparse:
            grads[1] = IndexedSlices(backend.zeros(2 * 4, dtype).reshape(2, 4),
                                     np.zeros(2, np.int64))
        _apply.commit(_apply.prepare(state, grads, passed=()))


def all_configurations():
    """Every combination of the settings in ``_SIGNATURE_OPTIONS``, as ``Adamax``
    keyword arguments."""
    names = list(_SIGNATURE_OPTIONS)
    for values in itertools.product(*_SIGNATURE_OPTIONS.values()):
        options = dict(zip(names, values))
        clip = options.pop("clip")
        yield {**options, **clip}
