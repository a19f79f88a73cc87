"""The reference optimizer (tests/reference.py) reproduces every recorded Keras 3 configuration.

Tolerances are those of tests/data/README.md: float32 configs rtol=1e-4, atol=1e-6 (NaN == NaN for
epsilon_zero); float64 ``f64_*`` configs rtol=1e-10.
"""

import functools

import numpy as np
import pytest

from conformance import DATA_DIR, load_keras_configs, load_keras_json, optimizer_kwargs
from conftest import recorded_tolerance
from reference import ReferenceAdamax
from schedule_formulas import FORMULA_SCHEDULES

CONFIGS = load_keras_configs()
CONFIG_NAMES = list(CONFIGS)

# Float32 configs are replayed in float64 (the README's recipe): the float64 reference stays within
# 3% of the float32 tolerance on every config, so none needs the float32 mode of the reference.
# That mode (dtype=np.float32, Keras operation order and scalar casts) is checked separately below.
FLOAT32_CONFIGS = [name for name in CONFIGS if not CONFIGS[name].is_float64]


# --------------------------------------------------------------------------- replay


@functools.lru_cache(maxsize=None)
def replay(name, dtype_name):
    """Run the reference through config ``name``; return its trajectories in the npz layout."""
    cfg = CONFIGS[name]
    dtype = np.dtype(dtype_name)
    assert cfg.set_lr is None  # no recorded config changes the learning rate mid-run

    apply_index = [0]  # the 0-based index of the apply() in progress, as the recorder counted it
    # Schedules as the formulas of tests/schedule_formulas.py: these tests do not depend on
    # numba_adamax.schedules.
    kwargs = optimizer_kwargs(cfg, schedules_module=FORMULA_SCHEDULES,
                              step_fn=lambda: apply_index[0])
    exclude_names, exclude_indices = cfg.exclusion()
    opt = ReferenceAdamax(**kwargs, names=cfg.var_names, exclude_names=exclude_names,
                          exclude_indices=exclude_indices, dtype=dtype)

    variables = cfg.initial_values(dtype)
    n = cfg.n_vars
    out = {key: [] for key in ("iterations", "raw_iterations", "lr_before", "lr_after")}
    for j in range(n):
        for slot in ("value", "m", "u", "ema", "accum"):
            out[f"{slot}{j}"] = []

    def record_state():
        out["iterations"].append(opt.iterations)
        out["raw_iterations"].append(opt.raw)
        for j in range(n):
            out[f"value{j}"].append(variables[j].copy())
            zeros = np.zeros_like(variables[j])
            out[f"m{j}"].append(opt.m[j].copy() if opt.built else zeros)
            out[f"u{j}"].append(opt.u[j].copy() if opt.built else zeros)
            if opt.use_ema:
                out[f"ema{j}"].append(opt.ema[j].copy() if opt.built else zeros)
            if opt.gas:
                out[f"accum{j}"].append(opt.acc[j].copy() if opt.built else zeros)

    record_state()
    for s in range(cfg.steps):
        apply_index[0] = s
        out["lr_before"].append(opt.lr_value())
        grads = cfg.grads(s, dtype)
        if any(g is None for g in grads):
            with pytest.warns(UserWarning, match="Gradients do not exist"):
                opt.apply(grads, variables)
        else:
            opt.apply(grads, variables)
        out["lr_after"].append(opt.lr_value())
        record_state()

    if cfg.meta["finalize"]:
        opt.finalize(variables)
        for j in range(n):
            out[f"final{j}"] = variables[j].copy()

    return {k: np.array(v) for k, v in out.items() if not (isinstance(v, list) and v == [])}


def assert_matches(name, key, actual, expected):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
        equal_nan=(name == "epsilon_zero"), err_msg=f"{name}: {key}",
        **recorded_tolerance(CONFIGS[name].dtype),
    )


def assert_trajectories_match(name, got):
    cfg = CONFIGS[name]
    checked = 0
    for key, expected in cfg.arrays.items():
        if key.startswith(("value", "m", "u", "ema", "accum", "final")):
            assert key in got, f"{name}: reference has no {key}"
            assert_matches(name, key, got[key], expected)
            checked += 1
    slots_per_var = 3 + cfg.has("ema0") + cfg.has("accum0") + cfg.has("final0")
    assert checked == slots_per_var * cfg.n_vars


# --------------------------------------------------------------------------- the data


def test_data_is_complete():
    for filename in ("README.md", "keras_vectors.json", "keras_vectors.npz",
                     "tf_sparse_vectors.json", "tf_sparse_vectors.npz"):
        assert (DATA_DIR / filename).is_file()
    assert len(CONFIGS) == 20
    for cfg in CONFIGS.values():
        assert sorted(cfg.arrays) == sorted(cfg.meta["array_keys"])
        assert cfg.set_lr is None
        assert cfg.arrays["grad_is_none"].shape == (cfg.steps, cfg.n_vars)
        pairs = [list(p) for p in np.argwhere(cfg.arrays["grad_is_none"])]
        assert pairs == [list(p) for p in cfg.meta["none_grad"]]
    assert load_keras_json()["constructor_checks"]


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_counters(name):
    cfg = CONFIGS[name]
    got = replay(name, "float64")
    np.testing.assert_array_equal(got["iterations"], cfg.arrays["iterations"])
    np.testing.assert_array_equal(got["raw_iterations"], cfg.arrays["raw_iterations"])


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_learning_rate_before_and_after(name):
    cfg = CONFIGS[name]
    got = replay(name, "float64")
    # Float32 configs: Keras evaluates schedules in float32 (CosineDecay is off by ~3e-7), so allow a
    # few float32 ulps. Float64 configs only have float learning rates, replayed float32-rounded.
    rtol = 1e-12 if cfg.is_float64 else 1e-6
    for key in ("lr_before", "lr_after"):
        np.testing.assert_allclose(got[key], cfg.arrays[key], rtol=rtol, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_trajectories(name):
    assert_trajectories_match(name, replay(name, "float64"))


@pytest.mark.parametrize("name", FLOAT32_CONFIGS)
def test_float32_mode_reproduces_float32_configs(name):
    """dtype=np.float32 computes in Keras' float32 operation order (bit-exact on most configs;
    the JAX recording multiplies by a reciprocal where we divide by loss_scale_factor, gas and the
    clip norm, and evaluates CosineDecay in float32)."""
    got = replay(name, "float32")
    assert all(got[f"value{j}"].dtype == np.float32 for j in range(CONFIGS[name].n_vars))
    assert_trajectories_match(name, got)
    np.testing.assert_array_equal(got["iterations"], CONFIGS[name].arrays["iterations"])


def test_callable_learning_rate_driven_by_the_raw_counter():
    """The geometric callable built on `lambda: opt.raw` gives the recorded lr inside each apply;
    only lr_after differs, because the recorder's index moved at the start of the next apply."""
    cfg = CONFIGS["callable_lr"]
    holder = []
    kwargs = optimizer_kwargs(cfg, step_fn=lambda: holder[0].raw)
    opt = ReferenceAdamax(**kwargs)
    holder.append(opt)
    variables = cfg.initial_values(np.float64)
    for s in range(cfg.steps):
        assert opt.lr_value() == pytest.approx(cfg.arrays["lr_before"][s], rel=1e-15)
        opt.apply(cfg.grads(s, np.float64), variables)
        assert opt.lr_value() == pytest.approx(0.02 * 0.8 ** (s + 1), rel=1e-15)
    for j in range(cfg.n_vars):
        assert_matches("callable_lr", f"value{j}", variables[j], cfg.arrays[f"value{j}"][-1])


# --------------------------------------------------------------------------- behaviour the vectors
# do not exercise


def test_empty_gradient_list_does_nothing():
    opt = ReferenceAdamax()
    opt.apply([], [])
    assert opt.raw == 0 and not opt.built


def test_all_none_gradients_raise_after_building():
    opt = ReferenceAdamax()
    w = [np.ones(3)]
    with pytest.raises(ValueError, match="No gradients provided"):
        opt.apply([None], w)
    assert opt.built and opt.raw == 0
    np.testing.assert_array_equal(w[0], np.ones(3))


def test_accumulators_of_none_gradient_variables_are_reset_on_update_steps():
    opt = ReferenceAdamax(gradient_accumulation_steps=2)
    w = [np.ones(2), np.ones(2)]
    with pytest.warns(UserWarning):
        opt.apply([np.ones(2), np.full(2, 5.0)], w)  # accumulate both
        opt.apply([np.ones(2), None], w)  # update step: variable 1 has no gradient
    np.testing.assert_array_equal(opt.acc[1], 0)
    np.testing.assert_array_equal(w[1], 1)
    assert opt.iterations == 1 and opt.raw == 2


def test_global_clipnorm_with_zero_norm_keeps_gradients():
    opt = ReferenceAdamax(global_clipnorm=1.0)
    g = {0: np.zeros(3), 1: np.zeros(2)}
    clipped = opt._clip(g)
    np.testing.assert_array_equal(clipped[0], 0)
    np.testing.assert_array_equal(clipped[1], 0)


def test_non_positive_clip_values_disable_clipping():
    for kwargs in ({"clipnorm": 0.0}, {"global_clipnorm": -1.0}, {"clipvalue": 0.0}):
        opt = ReferenceAdamax(**kwargs)
        g = opt._clip({0: np.array([3.0, -4.0])})
        np.testing.assert_array_equal(g[0], [3.0, -4.0])


def test_decay_is_tf1_inverse_time_decay_on_the_raw_counter():
    schedule = FORMULA_SCHEDULES.ExponentialDecay(initial_learning_rate=0.1, decay_steps=2,
                                                  decay_rate=0.5)
    opt = ReferenceAdamax(learning_rate=schedule, decay=0.25, gradient_accumulation_steps=2)
    w = [np.zeros(2)]
    for raw in range(5):
        assert opt.lr_value() == pytest.approx(schedule(raw) / (1 + 0.25 * raw), rel=1e-15)
        opt.apply([np.ones(2)], w)


def test_weight_decay_exclusion_is_one_regex_searched_in_names():
    opt = ReferenceAdamax(learning_rate=0.1, weight_decay=0.5, beta_1=0.0,
                          names=["dense/kernel", "bias", "w_x"], exclude_names=["^w_", "ia"])
    w = [np.ones(1), np.ones(1), np.ones(1)]
    opt.apply([np.zeros(1)] * 3, w)  # a zero gradient: only weight decay moves the variables
    np.testing.assert_allclose([x[0] for x in w], [0.95, 1.0, 1.0])
