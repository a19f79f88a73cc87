"""numba_adamax reproduces every recorded Keras 3 trajectory (tests/data/keras_vectors.*).

Each of the 20 configurations is replayed twice: through the ``Adamax`` class and through the
functional ``init``/``step``. Every recorded array is compared after every call (values, m, u,
EMA averages, accumulators, the ``finalize_variable_values`` result), together with the two
counters and the learning rate read before and after each call.

Tolerances are those of tests/data/README.md: float32 ``rtol=1e-4, atol=1e-6``; float64 (``f64_*``)
``rtol=1e-10`` with a float learning rate rounded to float32 (Keras kept it in a float32 variable;
``optimizer_kwargs`` does the rounding); ``epsilon_zero`` holds NaN by design (``equal_nan``).
The class and the functional API share one code path, so they must agree bit for bit.
"""

import functools
import re

import numpy as np
import pytest

import numba_adamax as na
from configs import call_expecting_missing_warning
from conformance import load_keras_configs, optimizer_kwargs
from conftest import recorded_tolerance, snapshot_state

KERAS = load_keras_configs()
NAMES = list(KERAS)
SLOT_PREFIXES = ("value", "m", "u", "ema", "accum")
#: npz prefix -> the key of ``conftest.snapshot_state`` it records.
SNAPSHOT_KEYS = {"value": "param", "m": "m", "u": "u", "ema": "ema", "accum": "accumulator"}


def _record_arrays(out, state, variables):
    """Append the variables and the slots that ``out`` records (npz layout) after a call."""
    snap = snapshot_state(state, variables)
    for j in range(len(variables)):
        for prefix, key in SNAPSHOT_KEYS.items():
            if f"{prefix}{j}" in out:
                out[f"{prefix}{j}"].append(snap[f"{key}[{j}]"])


def _empty_record(cfg):
    keys = ["iterations", "raw_iterations", "lr_before", "lr_after"]
    for j in range(cfg.n_vars):
        keys += [f"value{j}", f"m{j}", f"u{j}"]
        if cfg.has("ema0"):
            keys.append(f"ema{j}")
        if cfg.has("accum0"):
            keys.append(f"accum{j}")
    return {k: [] for k in keys}


def _apply_checking_warning(cfg, s, call):
    """Run ``call()``; a call with a None gradient must warn "Gradients do not exist"."""
    call_expecting_missing_warning(cfg.arrays["grad_is_none"][s].any(), call)


@functools.lru_cache(maxsize=None)
def replay_class(name):
    """Replay config ``name`` through ``na.Adamax``; trajectories in the npz layout."""
    cfg = KERAS[name]
    apply_index = [0]
    kwargs = optimizer_kwargs(cfg, schedules_module=na.schedules, step_fn=lambda: apply_index[0])
    opt = na.Adamax(**kwargs)
    var_names, var_indices = cfg.exclusion()
    variables = cfg.initial_values()
    if var_names or var_indices:
        opt.exclude_from_weight_decay(var_list=[variables[i] for i in var_indices],
                                      var_names=var_names)
    opt.build(variables, names=cfg.var_names)
    out = _empty_record(cfg)

    def record():
        out["iterations"].append(opt.iterations)
        out["raw_iterations"].append(opt.state.raw_steps)
        _record_arrays(out, opt.state, variables)

    record()
    for s in range(cfg.steps):
        apply_index[0] = s
        out["lr_before"].append(opt.learning_rate)
        grads = cfg.grads(s)
        _apply_checking_warning(cfg, s, lambda: opt.apply(grads, variables))
        out["lr_after"].append(opt.learning_rate)
        record()
    if cfg.meta["finalize"]:
        opt.finalize_variable_values(variables)
        for j in range(cfg.n_vars):
            out[f"final{j}"] = variables[j].copy()
    return {k: np.array(v) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def replay_functional(name):
    """Replay config ``name`` through ``na.init``/``na.step``; same layout as ``replay_class``.

    Exclusions given by object in the recording (``var_indices``) become anchored name regexes,
    since ``init`` takes names only. ``final{j}`` is the EMA average at the end (what
    ``finalize_variable_values`` copies).
    """
    cfg = KERAS[name]
    apply_index = [0]
    kwargs = optimizer_kwargs(cfg, schedules_module=na.schedules, step_fn=lambda: apply_index[0])
    var_names, var_indices = cfg.exclusion()
    exclude = list(var_names) + [f"^{re.escape(cfg.var_names[i])}$" for i in var_indices]
    params = cfg.initial_values()
    state = na.init(params, names=cfg.var_names, exclude_from_weight_decay=exclude or None,
                    **kwargs)
    hp = state.hyperparameters
    out = _empty_record(cfg)

    def record():
        out["iterations"].append(state.iterations)
        out["raw_iterations"].append(state.raw_steps)
        _record_arrays(out, state, params)

    record()
    for s in range(cfg.steps):
        apply_index[0] = s
        out["lr_before"].append(hp.learning_rate_at(state.raw_steps))
        grads = cfg.grads(s)

        def call():
            assert na.step(params, grads, state) is state

        _apply_checking_warning(cfg, s, call)
        out["lr_after"].append(hp.learning_rate_at(state.raw_steps))
        record()
    if cfg.meta["finalize"]:
        for j in range(cfg.n_vars):
            out[f"final{j}"] = np.array(state.ema[j], copy=True)
    return {k: np.array(v) for k, v in out.items()}


REPLAYS = {"class": replay_class, "functional": replay_functional}


@pytest.fixture(params=list(REPLAYS))
def replay(request):
    return REPLAYS[request.param]


# --------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("name", NAMES)
def test_every_recorded_array_matches(name, replay):
    cfg = KERAS[name]
    got = replay(name)
    tol = recorded_tolerance(cfg.dtype)
    checked = set()
    for key, expected in cfg.arrays.items():
        if not key.startswith(SLOT_PREFIXES + ("final",)):
            continue
        assert key in got, f"{name}: no {key} produced"
        assert got[key].shape == expected.shape, f"{name}: {key}"
        assert got[key].dtype == expected.dtype, f"{name}: {key} dtype"
        np.testing.assert_allclose(got[key], expected, equal_nan=(name == "epsilon_zero"),
                                   err_msg=f"{name}: {key}", **tol)
        checked.add(key)
    per_var = 3 + cfg.has("ema0") + cfg.has("accum0") + cfg.has("final0")
    assert len(checked) == per_var * cfg.n_vars
    # The trajectories really move (a replay that did nothing could not pass the above on
    # these configs, but make it explicit).
    assert not np.array_equal(got["value0"][0], got["value0"][-1])


@pytest.mark.parametrize("name", NAMES)
def test_counters_match(name, replay):
    cfg = KERAS[name]
    got = replay(name)
    np.testing.assert_array_equal(got["iterations"], cfg.arrays["iterations"])
    np.testing.assert_array_equal(got["raw_iterations"], cfg.arrays["raw_iterations"])


@pytest.mark.parametrize("name", NAMES)
def test_learning_rate_before_and_after_each_call(name, replay):
    cfg = KERAS[name]
    got = replay(name)
    # float64 configs have float learning rates only (replayed float32-rounded: exact); float32
    # Keras evaluates schedules in float32, a few ulps from our float64 values.
    rtol = 1e-12 if cfg.is_float64 else 1e-6
    for key in ("lr_before", "lr_after"):
        assert got[key].shape == cfg.arrays[key].shape
        np.testing.assert_allclose(got[key], cfg.arrays[key], rtol=rtol, atol=0,
                                   err_msg=f"{name}: {key}")


@pytest.mark.parametrize("name", NAMES)
def test_class_and_functional_are_bit_identical(name):
    a, b = replay_class(name), replay_functional(name)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key], equal_nan=True), f"{name}: {key}"


def test_all_twenty_configs_are_replayed():
    assert len(NAMES) == 20
    assert sum(KERAS[n].is_float64 for n in NAMES) == 3
    # every recorded kind of array is covered by the comparisons above
    kinds = {re.sub(r"\d+$", "", k) for n in NAMES for k in KERAS[n].arrays}
    assert kinds == {"grad", "grad_is_none", "value", "m", "u", "ema", "accum", "final",
                     "iterations", "raw_iterations", "lr_before", "lr_after"}


def test_epsilon_zero_really_contains_nan():
    got = replay_class("epsilon_zero")
    assert any(np.isnan(got[f"value{j}"]).any() for j in range(KERAS["epsilon_zero"].n_vars))
