"""The optimizer's surface, apart from numerics: state layout, slots, weights, config, counters,
learning-rate reporting, exclusions, None gradients, the functional API and import cost.

Covered: the constructor and deprecated keywords, the exact float learning rate, names, the
state surface (``variables``, slots, weights), the order of ``apply``, None gradients and
accumulation counters, weight-decay exclusions, the EMA and ``finalize_variable_values``, the
learning rate, ``scale_loss`` and the config.
Trajectories are compared bit for bit between two runs of this library, never with a tolerance.
"""
import json
import warnings

import numpy as np
import pytest

import numba_adamax as na
from conformance import load_keras_json
from conftest import bit_identical as same
from conftest import make_grads, make_variables, run_python, slow
from numba_adamax import Adamax, schedules

KERAS_CONFIG_KEYS = ["name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm",
                     "clipvalue", "use_ema", "ema_momentum", "ema_overwrite_frequency",
                     "loss_scale_factor", "gradient_accumulation_steps", "beta_1", "beta_2",
                     "epsilon"]


# --------------------------------------------------------------------------------- helpers

def assert_same_list(xs, ys):
    assert len(xs) == len(ys)
    for k, (x, y) in enumerate(zip(xs, ys)):
        assert same(x, y), f"entry {k} differs"


def run(opt, vs, steps, start=0):
    """Apply ``steps`` calls; return the variables after each one (copies)."""
    out = []
    for k in range(start, start + steps):
        opt.apply(make_grads(k), vs)
        out.append([v.copy() for v in vs])
    return out


SCHEDULES = {
    "ExponentialDecay": lambda: schedules.ExponentialDecay(0.05, 3, 0.5, staircase=True),
    "PiecewiseConstantDecay": lambda: schedules.PiecewiseConstantDecay([2, 5], [0.05, 0.02, 0.01]),
    "PolynomialDecay": lambda: schedules.PolynomialDecay(0.05, 4, end_learning_rate=0.001,
                                                         power=2.0, cycle=True),
    "InverseTimeDecay": lambda: schedules.InverseTimeDecay(0.05, 2, 0.5),
    "CosineDecay": lambda: schedules.CosineDecay(0.01, 5, alpha=0.1, warmup_target=0.05,
                                                 warmup_steps=2),
    "CosineDecayRestarts": lambda: schedules.CosineDecayRestarts(0.05, 3, t_mul=2.0, m_mul=0.8,
                                                                 alpha=0.01),
}


# ===================================================================== variables and slots

SLOT_CONFIGS = {
    "plain": (dict(), ["m", "u"]),
    "ema": (dict(use_ema=True), ["m", "u", "ema"]),
    "accumulation": (dict(gradient_accumulation_steps=2), ["m", "u", "accumulator"]),
    "ema+accumulation": (dict(use_ema=True, gradient_accumulation_steps=3),
                         ["m", "u", "ema", "accumulator"]),
}


@pytest.mark.parametrize("config", SLOT_CONFIGS, ids=list(SLOT_CONFIGS))
def test_get_slot_names_per_config(config):
    kwargs, names = SLOT_CONFIGS[config]
    opt = Adamax(**kwargs)
    assert opt.get_slot_names() == names  # known before build
    vs = make_variables()
    opt.apply(make_grads(), vs)
    assert opt.get_slot_names() == names
    for v in vs:
        for slot in names:
            s = opt.get_slot(v, slot)
            assert s.shape == v.shape and s.dtype == v.dtype


@pytest.mark.parametrize("config", SLOT_CONFIGS, ids=list(SLOT_CONFIGS))
def test_variables_order(config):
    """[counter, ema..., accumulators..., m0, u0, m1, u1, ...] (Keras order)."""
    kwargs, names = SLOT_CONFIGS[config]
    opt = Adamax(**kwargs)
    assert len(opt.variables) == 1 and same(opt.variables[0], np.array(0, np.int64))
    vs = make_variables()
    opt.build(vs)
    expected = []
    if "ema" in names:
        expected += [opt.get_slot(v, "ema") for v in vs]
    if "accumulator" in names:
        expected += [opt.get_slot(v, "accumulator") for v in vs]
    for v in vs:
        expected += [opt.get_slot(v, "m"), opt.get_slot(v, "u")]
    variables = opt.variables
    assert len(variables) == 1 + len(expected)
    counter = variables[0]
    assert counter.shape == () and counter.dtype == np.int64 and int(counter) == 0
    for k, (got, want) in enumerate(zip(variables[1:], expected), start=1):
        assert got.shape == want.shape and got.dtype == want.dtype, k
        assert np.shares_memory(got, want), f"variables[{k}] is not the expected slot"
    # slots of different variables (and different kinds) never overlap
    for i in range(1, len(variables)):
        for j in range(i + 1, len(variables)):
            assert not np.shares_memory(variables[i], variables[j]), (i, j)


def test_variables_slots_hold_what_their_names_say():
    """After a micro-step the accumulator holds g and EMA the variable; after the update step m
    and u follow the Adamax rule for the mean gradient, and accumulators are reset."""
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True, gradient_accumulation_steps=2)
    g0, g1 = make_grads(0), make_grads(1)
    opt.apply(g0, vs)
    v = opt.variables
    # [counter, ema0, ema1, acc0, acc1, m0, u0, m1, u1]
    assert int(v[0]) == 1
    assert same(v[1], vs[0]) and same(v[2], vs[1])          # EMA of the first call = copy
    assert same(v[3], g0[0]) and same(v[4], g0[1])          # accumulators = the raw gradients
    assert all(not x.any() for x in v[5:])                   # no update yet
    opt.apply(g1, vs)
    v = opt.variables
    assert int(v[0]) == 2
    assert not v[3].any() and not v[4].any()                 # reset on the update step
    for j in range(2):
        mean = (g1[j] + g0[j]) / g0[j].dtype.type(2)
        m, u = v[5 + 2 * j], v[6 + 2 * j]
        np.testing.assert_allclose(m, mean * (1 - 0.9), rtol=1e-6)
        np.testing.assert_allclose(u, np.abs(mean), rtol=1e-6)


def test_variables_slots_are_live_views():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True)
    opt.apply(make_grads(0), vs)
    before = opt.variables
    snapshot = [x.copy() for x in before]
    opt.apply(make_grads(1), vs)
    # the arrays obtained before the call show the new values (counter excepted: a snapshot)
    assert int(before[0]) == 1 and int(opt.variables[0]) == 2
    for k in range(1, len(before)):
        assert not np.array_equal(before[k], snapshot[k]), k
        assert same(before[k], opt.variables[k])
    # writing through a view changes the optimizer's state
    m0 = opt.get_slot(vs[0], "m")
    m0[...] = 0.25
    assert np.all(opt.variables[3] == 0.25)  # [counter, ema0, ema1, m0, ...]
    assert np.all(opt.get_weights()[3] == 0.25)


def test_get_slot_by_array_and_by_name_and_v_alias():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True, gradient_accumulation_steps=2)
    opt.build(vs, names=["kernel", "bias"])
    opt.apply(make_grads(0), vs)
    opt.apply(make_grads(1), vs)
    for v, name in zip(vs, ["kernel", "bias"]):
        for slot in ("m", "u", "ema", "accumulator"):
            by_array, by_name = opt.get_slot(v, slot), opt.get_slot(name, slot)
            assert np.shares_memory(by_array, by_name) and same(by_array, by_name)
        assert np.shares_memory(opt.get_slot(v, "v"), opt.get_slot(v, "u"))
        assert same(opt.get_slot(name, "v"), opt.get_slot(v, "u"))
    assert not np.shares_memory(opt.get_slot("kernel", "m"), opt.get_slot("kernel", "u"))


def test_get_slot_by_dict_key():
    a, b = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.apply({"dense/kernel": make_grads()[0], "dense/bias": make_grads()[1]},
              {"dense/kernel": a, "dense/bias": b})
    assert np.shares_memory(opt.get_slot("dense/bias", "m"), opt.get_slot(b, "m"))
    assert opt.get_slot("dense/kernel", "u").shape == a.shape


# ============================================================================ weights

def test_get_weights_returns_copies():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.apply(make_grads(), vs)
    weights = opt.get_weights()
    for w in weights[1:]:
        w[...] = 123
    assert not np.any(opt.get_slot(vs[0], "m") == 123)
    assert [w.dtype for w in opt.get_weights()] == [np.int64, np.float64, np.float64,
                                                    np.float32, np.float32]


ROUND_TRIP_KWARGS = dict(learning_rate=schedules.ExponentialDecay(0.05, 2, 0.7), use_ema=True,
                         ema_momentum=0.9, ema_overwrite_frequency=3, gradient_accumulation_steps=2,
                         weight_decay=0.02, clipnorm=0.8)


def test_set_weights_restores_a_trajectory_exactly():
    """Step K, save weights and variables, step more; restore; the same steps give the same
    result bit for bit (the counter drives the schedule, bias correction, EMA and accumulation)."""
    vs = make_variables()
    opt = Adamax(**ROUND_TRIP_KWARGS)
    run(opt, vs, 5)                                   # odd: stops mid-accumulation
    saved_weights, saved_vars = opt.get_weights(), [v.copy() for v in vs]
    assert int(saved_weights[0]) == 5
    first = run(opt, vs, 6, start=5)
    first_weights = opt.get_weights()
    # restore in place
    for v, s in zip(vs, saved_vars):
        np.copyto(v, s)
    opt.set_weights(saved_weights)
    assert opt.state.raw_steps == 5 and opt.iterations == 2
    assert_same_list(opt.get_weights(), saved_weights)
    second = run(opt, vs, 6, start=5)
    for x, y in zip(first, second):
        assert_same_list(x, y)
    assert_same_list(opt.get_weights(), first_weights)


def test_set_weights_into_a_new_optimizer():
    vs = make_variables()
    opt = Adamax(**ROUND_TRIP_KWARGS)
    run(opt, vs, 3)
    weights, copies = opt.get_weights(), [v.copy() for v in vs]
    other = Adamax.from_config(json.loads(json.dumps(opt.get_config())))
    other.build(copies)
    other.set_weights(weights)
    assert other.iterations == opt.iterations
    for x, y in zip(run(opt, vs, 4, start=3), run(other, copies, 4, start=3)):
        assert_same_list(x, y)


def test_set_weights_accepts_a_plain_int_counter_and_array_likes():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.build(vs)
    weights = opt.get_weights()
    weights[0] = 7
    weights[1] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # float64 slot: a list of floats is fine
    opt.set_weights(tuple(weights))
    assert opt.iterations == 7
    assert same(opt.get_slot(vs[0], "m"), np.arange(1.0, 7.0).reshape(2, 3))


# ============================================================================ config

def test_get_config_has_exactly_the_keras_keys_in_order():
    assert list(Adamax().get_config()) == KERAS_CONFIG_KEYS
    recorded = load_keras_json()["configs"]["defaults"]["optimizer_get_config"]
    assert list(recorded) == KERAS_CONFIG_KEYS


def test_get_config_values_are_verbatim():
    kwargs = dict(learning_rate=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-6, weight_decay=0.004,
                  clipnorm=None, clipvalue=0.5, global_clipnorm=None, use_ema=True,
                  ema_momentum=0.9, ema_overwrite_frequency=4, loss_scale_factor=128.0,
                  gradient_accumulation_steps=3, name="opt_a")
    config = Adamax(**kwargs).get_config()
    assert config == kwargs
    assert config["learning_rate"] == 0.1  # exact, not float32-rounded (0.10000000149...)
    assert Adamax().get_config()["name"] == "adamax"


def test_get_config_decay_only_when_set():
    assert "decay" not in Adamax().get_config()
    assert "decay" not in Adamax(decay=None).get_config()
    with pytest.warns(DeprecationWarning):
        config = Adamax(decay=0.25).get_config()
    assert list(config) == KERAS_CONFIG_KEYS + ["decay"] and config["decay"] == 0.25
    with pytest.warns(DeprecationWarning):
        assert Adamax(decay=0.0).get_config()["decay"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # from_config restores it without warning
        assert Adamax.from_config(config).decay == 0.25


def _json_round_trip(opt):
    text = json.dumps(opt.get_config())
    config = json.loads(text)
    assert config == opt.get_config()
    return Adamax.from_config(config)


@pytest.mark.parametrize("lr", ["float", *SCHEDULES])
def test_config_json_round_trip_then_identical_steps(lr):
    learning_rate = 0.05 if lr == "float" else SCHEDULES[lr]()
    opt = Adamax(learning_rate=learning_rate, beta_1=0.85, epsilon=1e-6, weight_decay=0.01,
                 global_clipnorm=2.0, use_ema=True, ema_momentum=0.95, name="round_trip")
    copy = _json_round_trip(opt)
    assert copy.get_config() == opt.get_config()
    if lr != "float":
        assert copy.get_config()["learning_rate"]["class_name"] == lr
    vs, ws = make_variables(), make_variables()
    for k in range(7):
        assert copy.learning_rate == opt.learning_rate
        opt.apply(make_grads(k), vs)
        copy.apply(make_grads(k), ws)
        assert_same_list(vs, ws)
    assert_same_list(opt.get_weights(), copy.get_weights())


def test_from_config_accepts_recorded_keras_configs():
    """Keras' own ``get_config()`` output loads (float learning rates float32-rounded by Keras,
    schedules as Keras dicts); our ``get_config`` then reports the same dict."""
    configs = load_keras_json()["configs"]
    loaded = 0
    for name, meta in configs.items():
        config = meta["optimizer_get_config"]
        lr = config["learning_rate"]
        if isinstance(lr, dict) and lr.get("module") != "keras.optimizers.schedules":
            continue  # a serialised Python function: not loadable by design
        opt = Adamax.from_config(json.loads(json.dumps(config)))
        assert opt.get_config() == config, name
        loaded += 1
    assert loaded >= 15


def test_callable_learning_rate_in_config():
    def lr():
        return 0.0125

    opt = Adamax(learning_rate=lr)
    config = opt.get_config()
    assert config["learning_rate"] is lr
    copy = Adamax.from_config(config)
    assert copy.get_config()["learning_rate"] is lr and copy.learning_rate == 0.0125
    vs, ws = make_variables(), make_variables()
    run(opt, vs, 2)
    run(copy, ws, 2)
    assert_same_list(vs, ws)


def test_from_config_does_not_share_state():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.apply(make_grads(), vs)
    copy = Adamax.from_config(opt.get_config())
    assert copy.built is False and copy.iterations == 0
    copy.beta_1 = 0.5
    assert opt.beta_1 == 0.9


# ===================================================================== counters

@pytest.mark.parametrize("gas", [None, 2, 3])
def test_iterations_and_apply_gradients_return_value(gas):
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, gradient_accumulation_steps=gas)
    assert opt.iterations == 0 and opt.apply_gradients([]) == 0
    for raw in range(1, 8):
        returned = opt.apply_gradients(zip(make_grads(raw), vs))
        assert returned == raw == opt.state.raw_steps == int(opt.variables[0])
        assert opt.iterations == (raw if gas is None else raw // gas)
        assert opt.state.bias_correction_step == opt.iterations + 1


def test_accumulation_updates_only_on_every_gas_th_call():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, gradient_accumulation_steps=3)
    history = [[v.copy() for v in vs]] + run(opt, vs, 6)
    changed = [not same(history[k][0], history[k + 1][0]) for k in range(6)]
    assert changed == [False, False, True, False, False, True]


# ========================================================================= learning rate

def test_learning_rate_getter_float_and_setter():
    opt = Adamax(learning_rate=0.1)
    assert opt.learning_rate == 0.1 and type(opt.learning_rate) is float
    opt.learning_rate = 0.3
    assert opt.learning_rate == 0.3


@pytest.mark.parametrize("gas", [None, 2])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_learning_rate_getter_follows_schedule_with_raw_counter(name, gas):
    sched = SCHEDULES[name]()
    opt = Adamax(learning_rate=sched, gradient_accumulation_steps=gas)
    vs = make_variables()
    for raw in range(7):
        assert opt.learning_rate == sched(raw)
        opt.apply(make_grads(raw), vs)


def test_learning_rate_getter_follows_decay_and_compounds_with_schedule():
    with pytest.warns(DeprecationWarning):
        plain = Adamax(learning_rate=0.1, decay=0.5)
    sched = schedules.PiecewiseConstantDecay([1, 3], [0.1, 0.05, 0.02])
    with pytest.warns(DeprecationWarning):
        compound = Adamax(learning_rate=sched, decay=0.25, gradient_accumulation_steps=2)
    vs, ws = make_variables(), make_variables()
    for n in range(6):
        assert plain.learning_rate == 0.1 / (1 + 0.5 * n)
        assert compound.learning_rate == sched(n) / (1 + 0.25 * n)
        plain.apply(make_grads(n), vs)
        compound.apply(make_grads(n), ws)


def test_learning_rate_getter_calls_the_callable_each_time():
    calls = []

    def lr():
        calls.append(1)
        return 0.01 * len(calls)

    opt = Adamax(learning_rate=lr)
    assert opt.learning_rate == 0.01
    assert opt.learning_rate == 0.02
    opt.apply(make_grads(), make_variables())
    assert len(calls) == 3  # once per apply (no weight decay)


@pytest.mark.parametrize("case", ["schedule", "decay", "schedule+decay+wd", "callable", "gas"])
def test_learning_rate_getter_reports_what_the_next_step_uses(case):
    """A twin with a float learning rate set, before each call, to the getter's value follows
    the same trajectory bit for bit."""
    step_box = [0]
    kwargs = {
        "schedule": dict(learning_rate=schedules.CosineDecay(0.05, 5)),
        "decay": dict(learning_rate=0.05, decay=0.3),
        "schedule+decay+wd": dict(learning_rate=schedules.ExponentialDecay(0.05, 2, 0.5),
                                  decay=0.1, weight_decay=0.05),
        "callable": dict(learning_rate=lambda: 0.05 * 0.8 ** step_box[0]),
        "gas": dict(learning_rate=schedules.InverseTimeDecay(0.05, 1, 1.0),
                    gradient_accumulation_steps=2),
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opt = Adamax(**kwargs)
    twin_kwargs = {k: v for k, v in kwargs.items() if k not in ("learning_rate", "decay")}
    twin = Adamax(learning_rate=0.0, **twin_kwargs)
    vs, ws = make_variables(), make_variables()
    for k in range(7):
        twin.learning_rate = opt.learning_rate
        opt.apply(make_grads(k), vs)
        twin.apply(make_grads(k), ws)
        step_box[0] += 1
        assert_same_list(vs, ws)


# ============================================================================ misc surface

def test_scale_loss():
    assert Adamax(loss_scale_factor=128.0).scale_loss(0.5) == 64.0
    loss = np.array([1.0, 2.0])
    assert np.array_equal(Adamax(loss_scale_factor=4).scale_loss(loss), [4.0, 8.0])
    sentinel = object()
    assert Adamax().scale_loss(sentinel) is sentinel


def test_loss_scale_factor_unscales_gradients():
    vs, ws = make_variables(), make_variables()
    scaled, plain = Adamax(learning_rate=0.05, loss_scale_factor=4.0), Adamax(learning_rate=0.05)
    for k in range(3):
        g = make_grads(k)
        scaled.apply([x * x.dtype.type(4) for x in g], vs)
        plain.apply(g, ws)
    assert_same_list(vs, ws)  # scaling by a power of two is exact


def test_finalize_variable_values_copies_ema():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True, ema_momentum=0.5)
    run(opt, vs, 3)
    averages = [opt.get_slot(v, "ema").copy() for v in vs]
    assert not np.array_equal(averages[0], vs[0])
    targets = [np.zeros_like(v) for v in vs]
    assert opt.finalize_variable_values(targets) is None
    assert_same_list(targets, averages)
    opt.finalize_variable_values(vs)
    assert_same_list(vs, averages)
    assert_same_list([opt.get_slot(v, "ema") for v in vs], averages)  # averages untouched
    as_dict = {"a": np.zeros_like(vs[0]), "b": np.zeros_like(vs[1])}
    opt.finalize_variable_values(as_dict)
    assert_same_list(list(as_dict.values()), averages)


def test_finalize_variable_values_without_ema_is_a_no_op():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    run(opt, vs, 2)
    before = [v.copy() for v in vs]
    opt.finalize_variable_values(vs)
    assert_same_list(vs, before)


def test_finalize_variable_values_length_mismatch():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True)
    opt.apply(make_grads(), vs)
    with pytest.raises(ValueError, match=r"The length of model variables \(1\) to override"):
        opt.finalize_variable_values(vs[:1])


# ======================================================= exclude_from_weight_decay

NAMES = ["dense/kernel", "dense/bias", "bias_scale", "embedding"]


def _named_setup(exclude=None, build=False, **kwargs):
    vs = [np.linspace(0.5, 1.5, 6).reshape(2, 3), np.full(3, 2.0), np.full(4, -1.0, np.float32),
          np.linspace(1, 2, 5)]
    opt = Adamax(learning_rate=0.1, weight_decay=0.5, **kwargs)
    if exclude is not None:
        opt.exclude_from_weight_decay(**exclude)
    if build:
        opt.build(vs, names=NAMES)
    return opt, vs


def _decayed_after_zero_step(opt, vs):
    """Which variables moved on a zero-gradient call: only weight decay can move them (the
    Adamax update of a zero gradient from zero slots is exactly 0)."""
    before = [v.copy() for v in vs]
    if not opt.built:
        opt.build(vs, names=NAMES)
    opt.apply([np.zeros_like(v) for v in vs], vs)
    return [not same(v, b) for v, b in zip(vs, before)]


@pytest.mark.parametrize("patterns, excluded", [
    ([], []),
    (["bias"], ["dense/bias", "bias_scale"]),               # searched, not matched at the start
    (["bias$"], ["dense/bias"]),                             # regex anchors work
    (["^dense"], ["dense/kernel", "dense/bias"]),
    (["kern", "emb"], ["dense/kernel", "embedding"]),        # any of several
    (["de.se"], ["dense/kernel", "dense/bias"]),             # "." matches anything
    ([r"dense/(kernel|bias)"], ["dense/kernel", "dense/bias"]),
    (["nothing_matches"], []),
])
def test_exclude_by_names(patterns, excluded):
    opt, vs = _named_setup(dict(var_names=patterns))
    moved = _decayed_after_zero_step(opt, vs)
    assert moved == [n not in excluded for n in NAMES]


def test_weight_decay_value_of_a_zero_gradient_step():
    opt, vs = _named_setup()
    w = vs[0].copy()
    _decayed_after_zero_step(opt, vs)
    np.testing.assert_allclose(vs[0], w - w * 0.5 * 0.1, rtol=1e-15)


def test_exclude_by_var_list_identity():
    opt, vs = _named_setup()
    opt.exclude_from_weight_decay(var_list=[vs[2], vs[0].copy()])  # a copy excludes nothing
    assert _decayed_after_zero_step(opt, vs) == [True, True, False, True]


def test_exclude_by_list_and_names_together():
    opt, vs = _named_setup()
    opt.exclude_from_weight_decay(var_list=[vs[3]], var_names=["kernel"])
    assert _decayed_after_zero_step(opt, vs) == [False, True, True, False]


def test_exclude_later_call_replaces_earlier():
    opt, vs = _named_setup()
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.exclude_from_weight_decay(var_list=[vs[0]])
    assert _decayed_after_zero_step(opt, vs) == [False, True, True, True]
    opt.exclude_from_weight_decay()  # clears everything
    assert _decayed_after_zero_step(opt, vs) == [True, True, True, True]


def test_exclude_works_after_build():
    opt, vs = _named_setup()
    assert _decayed_after_zero_step(opt, vs) == [True] * 4  # builds
    opt.exclude_from_weight_decay(var_names=["^emb"])
    assert _decayed_after_zero_step(opt, vs) == [True, True, True, False]
    opt.exclude_from_weight_decay(var_names=["dense"], var_list=[vs[2]])
    assert _decayed_after_zero_step(opt, vs) == [False, False, False, True]


def test_exclude_with_dict_names_and_functional_init():
    a, b = np.full(3, 1.0), np.full(2, 1.0)
    opt = Adamax(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.apply({"w": np.zeros(3), "my_bias": np.zeros(2)}, {"w": a, "my_bias": b})
    assert np.all(a < 1.0) and np.all(b == 1.0)
    c, d = np.full(3, 1.0), np.full(2, 1.0)
    state = na.init({"w": c, "my_bias": d}, learning_rate=0.1, weight_decay=0.5,
                    exclude_from_weight_decay=["bias"])
    na.step({"w": c, "my_bias": d}, {"w": np.zeros(3), "my_bias": np.zeros(2)}, state)
    assert same(a, c) and same(b, d)


# ====================================================================== None gradients

def test_none_gradient_warns_and_skips_its_variable():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.build(vs, names=["kernel", "bias"])
    g = make_grads()
    before = [v.copy() for v in vs]
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['bias'\]"):
        opt.apply([g[0], None], vs)
    assert not same(vs[0], before[0]) and same(vs[1], before[1])
    assert not opt.get_slot("bias", "m").any() and not opt.get_slot("bias", "u").any()
    assert opt.iterations == 1
    with pytest.warns(UserWarning, match=r"\['kernel'\]"):
        opt.apply([None, g[1]])  # without variables: positional over the built ones


def test_none_gradient_names_every_missing_variable():
    a, b = make_variables()
    c = np.zeros(2)
    opt = Adamax(learning_rate=0.05)
    with pytest.warns(UserWarning, match=r"\['variable_0', 'variable_2'\]"):
        opt.apply([None, make_grads()[1], None], [a, b, c])


def test_none_gradient_still_updates_its_ema():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, use_ema=True, ema_momentum=0.75)
    with pytest.warns(UserWarning):
        opt.apply([make_grads(0)[0], None], vs)
    # first call: momentum 0, so every average (also the skipped variable's) is a copy
    assert same(opt.get_slot(vs[1], "ema"), vs[1])
    opt.apply(make_grads(1), vs)  # move the float32 variable away from its average
    prev = opt.get_slot(vs[1], "ema").copy()
    with pytest.warns(UserWarning):
        opt.apply([make_grads(2)[0], None], vs)
    expected = np.float32(0.75) * prev + np.float32(0.25) * vs[1]
    np.testing.assert_allclose(opt.get_slot(vs[1], "ema"), expected, rtol=1e-6)
    assert not same(opt.get_slot(vs[1], "ema"), prev)


def test_none_gradient_with_accumulation_resets_all_accumulators_on_update_steps():
    """Keras resets every accumulator on an update step, even of variables whose gradient was
    None in that call; on a micro-step a None gradient leaves its accumulator alone."""
    vs = make_variables()
    opt = Adamax(learning_rate=0.05, gradient_accumulation_steps=2)
    g0, g1 = make_grads(0), make_grads(1)
    opt.apply(g0, vs)
    assert same(opt.get_slot(vs[1], "accumulator"), g0[1])
    before_b = vs[1].copy()
    with pytest.warns(UserWarning):
        opt.apply([g1[0], None], vs)  # update step
    assert not opt.get_slot(vs[0], "accumulator").any()
    assert not opt.get_slot(vs[1], "accumulator").any()
    assert same(vs[1], before_b) and not opt.get_slot(vs[1], "m").any()
    with pytest.warns(UserWarning):
        opt.apply([None, g1[1]], vs)  # micro-step: only b accumulates
    assert not opt.get_slot(vs[0], "accumulator").any()
    assert same(opt.get_slot(vs[1], "accumulator"), g1[1])


def test_subset_of_variables_behaves_like_none_for_the_others():
    vs, ws = make_variables(), make_variables()
    a = Adamax(learning_rate=0.05, use_ema=True)
    b = Adamax(learning_rate=0.05, use_ema=True)
    a.build(vs)
    b.build(ws)
    g = make_grads()
    a.apply([g[1]], [vs[1]])  # only the second variable is passed
    with pytest.warns(UserWarning):
        b.apply([None, g[1]], ws)
    assert_same_list(vs, ws)
    assert_same_list(a.get_weights(), b.get_weights())


# ====================================================================== empty calls and build

def test_empty_grads_is_a_no_op_that_does_not_build():
    opt = Adamax()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert opt.apply([], []) is None
        assert opt.apply([]) is None
        assert opt.apply(()) is None
        assert opt.apply_gradients([]) == 0
    assert opt.built is False and opt.iterations == 0
    vs = make_variables()
    opt.apply(make_grads(), vs)
    weights = opt.get_weights()
    opt.apply([], [])
    opt.apply([])
    assert opt.state.raw_steps == 1
    assert_same_list(opt.get_weights(), weights)


def test_build_twice_is_a_no_op():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.build(vs, names=["kernel", "bias"])
    state = opt.state
    opt.apply(make_grads(), vs)
    weights = opt.get_weights()
    other = [np.ones(3)]
    opt.build(other, names=["zzz"])
    opt.build(vs)
    assert opt.state is state and state.names == ("kernel", "bias")
    assert state.params[0] is vs[0] and state.params[1] is vs[1]
    assert_same_list(opt.get_weights(), weights)
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply([np.ones(3)], other)


def test_build_then_apply_equals_apply_building():
    vs, ws = make_variables(), make_variables()
    a, b = Adamax(learning_rate=0.05), Adamax(learning_rate=0.05)
    a.build(vs)
    assert a.built and a.iterations == 0 and not any(x.any() for x in a.variables)
    run(a, vs, 3)
    run(b, ws, 3)
    assert_same_list(vs, ws)


def test_variables_passed_in_another_order():
    vs, ws = make_variables(), make_variables()
    a, b = Adamax(learning_rate=0.05), Adamax(learning_rate=0.05)
    a.build(vs)
    b.build(ws)
    for k in range(3):
        g = make_grads(k)
        a.apply(g, vs)
        b.apply(g[::-1], ws[::-1])
    assert_same_list(vs, ws)


def test_names_and_dict_variables():
    a, b = make_variables()
    opt = Adamax(learning_rate=0.05)
    opt.apply({"k": make_grads()[0], "b": make_grads()[1]}, {"k": a, "b": b})
    assert opt.state.names == ("k", "b")
    # later: a dict of gradients without variables, matched by name; a subset updates only
    # the variables it names (like passing a subset of the variables)
    before = a.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply({"b": make_grads(1)[1]})
    assert opt.iterations == 2 and same(a, before)
    opt.apply({"b": make_grads(2)[1], "k": make_grads(2)[0]})
    assert opt.iterations == 3 and not same(a, before)


# =========================================================================== functional API

def test_functional_init_and_step_match_the_class():
    vs, ws = make_variables(), make_variables()
    kwargs = dict(learning_rate=schedules.ExponentialDecay(0.05, 2, 0.5), use_ema=True,
                  gradient_accumulation_steps=2, weight_decay=0.01, clipvalue=0.5)
    state = na.init(ws, **kwargs)
    assert isinstance(state, na.AdamaxState)
    assert state.raw_steps == 0 and all(not x.any() for x in state.state_arrays())
    assert_same_list(ws, make_variables())  # init does not touch the variables
    opt = Adamax(**kwargs)
    for k in range(5):
        opt.apply(make_grads(k), vs)
        assert na.step(ws, make_grads(k), state) is state
    assert_same_list(vs, ws)
    assert_same_list(opt.state.state_arrays(), state.state_arrays())
    assert state.raw_steps == 5 and state.iterations == 2


def test_functional_dict_params_any_key_order():
    a, b = make_variables()
    c, d = make_variables()
    s1 = na.init({"w": a, "b": b}, learning_rate=0.05)
    s2 = na.init([c, d], names=["w", "b"], learning_rate=0.05)
    assert s1.names == ("w", "b")
    for k in range(3):
        g = make_grads(k)
        assert na.step({"b": b, "w": a}, {"w": g[0], "b": g[1]}, s1) is s1
        na.step([c, d], g, s2)
    assert same(a, c) and same(b, d)


def test_functional_step_with_none_gradient():
    a, b = make_variables()
    state = na.init({"w": a, "b": b}, learning_rate=0.05)
    before = b.copy()
    with pytest.warns(UserWarning, match=r"\['b'\]"):
        na.step({"w": a, "b": b}, {"w": make_grads()[0], "b": None}, state)
    assert same(b, before)


def test_functional_step_rejects_other_arrays():
    vs = make_variables()
    state = na.init(vs, learning_rate=0.05)
    with pytest.raises(ValueError, match="Unknown variable"):
        na.step([vs[0].copy(), vs[1]], make_grads(), state)
    assert state.raw_steps == 0


def test_class_state_is_the_functional_state():
    vs = make_variables()
    opt = Adamax(learning_rate=0.05)
    assert opt.state is None
    opt.apply(make_grads(0), vs)
    state = opt.state
    na.step(vs, make_grads(1), state)  # the class sees the functional call
    assert opt.iterations == 2
    assert np.shares_memory(opt.get_slot(vs[0], "m"), state.m[0])


# ================================================================= import cost and warmup

@slow
def test_import_compiles_nothing_and_warmup_compiles():
    code = (
        "import numba_adamax\n"
        "from numba_adamax.kernels import cpu as _cpu\n"
        "assert all(len(d.signatures) == 0 for d in _cpu.DISPATCHERS), "
        "[d.signatures for d in _cpu.DISPATCHERS]\n"
        "from numba_adamax.kernels import cpu_sparse as _sparse\n"
        "n = numba_adamax.warmup()\n"
        "assert n > 0, n\n"
        "assert len(_cpu.update.signatures) == 2, _cpu.update.signatures\n"
        "assert len(_cpu.update_parallel.signatures) == 2\n"
        "assert not _cpu.chunk_sums_of_squares.signatures  # no clipping configured\n"
        "assert n == sum(len(d.signatures) for d in _cpu.DISPATCHERS + _sparse.DISPATCHERS)\n"
        "print('ok', n)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_warmup_rejects_unsupported_dtypes():
    with pytest.raises(TypeError, match="float16"):
        na.warmup(dtypes=("float16",))


# ================================================================ deprecated keywords

def test_lr_keyword_warns_and_is_an_alias():
    with pytest.warns(DeprecationWarning, match="`lr`"):
        opt = Adamax(lr=0.02)
    assert opt.learning_rate == 0.02 and opt.get_config()["learning_rate"] == 0.02


def test_lr_keyword_wins_over_learning_rate():
    with pytest.warns(DeprecationWarning, match="`lr`"):
        opt = Adamax(learning_rate=0.5, lr=0.02)
    assert opt.learning_rate == 0.02
    with pytest.warns(DeprecationWarning):
        opt = Adamax(0.5, lr=schedules.InverseTimeDecay(0.1, 1, 1.0))
    assert opt.learning_rate == 0.1


def test_decay_keyword_warns():
    with pytest.warns(DeprecationWarning, match="`decay`"):
        opt = Adamax(learning_rate=0.1, decay=0.01)
    assert opt.decay == 0.01


def test_no_warning_without_deprecated_keywords():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adamax(learning_rate=0.1, decay=None)
        Adamax()


@pytest.mark.parametrize("gas", [None, 3])
def test_decay_is_inverse_time_on_the_call_counter(gas):
    """lr_n = lr / (1 + decay * n), n = earlier calls (micro-steps included); the trajectory
    equals a float-lr optimizer set to that value before each call."""
    with pytest.warns(DeprecationWarning):
        opt = Adamax(learning_rate=0.1, decay=0.5, gradient_accumulation_steps=gas, weight_decay=0.1)
    twin = Adamax(learning_rate=0.1, gradient_accumulation_steps=gas, weight_decay=0.1)
    vs, ws = make_variables(), make_variables()
    for n in range(7):
        assert opt.learning_rate == 0.1 / (1 + 0.5 * n)
        twin.learning_rate = 0.1 / (1 + 0.5 * n)
        opt.apply(make_grads(n), vs)
        twin.apply(make_grads(n), ws)
        assert_same_list(vs, ws)
    # decay is an ordinary, validated attribute afterwards
    opt.decay = None
    assert opt.learning_rate == 0.1 and "decay" not in opt.get_config()


def test_repr_mentions_name_and_state():
    opt = Adamax(name="my_opt")
    text = repr(opt)
    assert "my_opt" in text and "built=False" in text


def test_reprs_show_settings_and_size_not_addresses():
    """``Adamax``, ``AdamaxState`` and ``Hyperparameters`` show the learning rate, the settings
    that differ from the defaults and (once built) the size; callables by name."""
    opt = Adamax(learning_rate=0.05, use_ema=True, name="my_opt")
    assert repr(opt) == ("Adamax(name='my_opt', learning_rate=0.05, use_ema=True, built=False, "
                         "iterations=0)")
    opt.apply(make_grads(0), make_variables())
    assert repr(opt) == ("Adamax(name='my_opt', learning_rate=0.05, use_ema=True, built=True, "
                         "variables=2, elements=10, iterations=1)")
    assert repr(opt.state) == (
        "AdamaxState(variables=2, elements=10, dtypes=['float32', 'float64'], device='cpu', "
        "raw_steps=1, iterations=1, skipped_steps=0, learning_rate=0.05, use_ema=True, "
        "name='my_opt')")
    assert repr(opt.state.hyperparameters) == (
        "Hyperparameters(learning_rate=0.05, use_ema=True, name='my_opt')")
    assert repr(na.Hyperparameters()) == "Hyperparameters(learning_rate=0.001)"

    def warm_restarts():
        return 0.01

    schedule = schedules.ExponentialDecay(0.05, 3, 0.5)
    lam = lambda: 0.01  # noqa: E731
    for lr, shown in ((warm_restarts, "<callable test_reprs_show_settings_and_size_not_addresses"
                                      ".<locals>.warm_restarts>"),
                      (lam, f"<callable {lam.__qualname__}>"), (schedule, repr(schedule))):
        state = na.init([np.zeros(3, np.float32)], learning_rate=lr, clipnorm=1.0)
        for obj in (Adamax(learning_rate=lr), state, state.hyperparameters):
            assert f"learning_rate={shown}" in repr(obj) and "0x" not in repr(obj)
        assert "clipnorm=1.0" in repr(state) and "elements=3" in repr(state)


def test_subclasses_keep_private_and_declared_attributes():
    """Only undeclared public names are refused: a subclass may set ``_private`` attributes
    and those its class declares."""

    class Counting(Adamax):
        calls = 0

        def apply(self, grads, variables=None):
            self.calls += 1
            self._last_count = len(grads)
            super().apply(grads, variables)

    opt = Counting(learning_rate=0.05)
    opt.apply(make_grads(0), make_variables())
    assert opt.calls == 1 and opt._last_count == 2 and opt.iterations == 1
    with pytest.raises(AttributeError, match="'Counting' object has no attribute 'lr'; did you "
                                             "mean `learning_rate`"):
        opt.lr = 0.1


@slow
def test_integrations_import_torch_lazily():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "import numba_adamax, numba_adamax.integrations\n"
        "try:\n"
        "    import numba_adamax.integrations.torch\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    out = run_python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ImportError: numba_adamax.integrations.torch needs PyTorch" in out.stdout
    assert "pip install" in out.stdout
    result = run_python(["-c", "import sys, numba_adamax, numba_adamax.integrations; "
                               "print(sorted(m for m in ('torch', 'numba_adamax.kernels.cpu', 'numba') "
                               "if m in sys.modules))"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
