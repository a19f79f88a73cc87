"""Every code path of numba_adamax against the float64 reference, and the paths against each other.

For every entry of ``configs.CONFIGS`` the library runs several calls (enough to cross every
accumulation window and EMA-overwrite period) on odd shapes, a zero-size variable and a ~1000
element one, with None gradients on some calls, and is compared with ``ReferenceAdamax`` after
every call on the parameters, every slot (m, u, EMA averages, accumulators), both counters and
the learning rate. Schedules reach the reference as independent formulas
(schedule_formulas.FormulaSchedule), so the library's schedule classes are checked as well.

Parity tests (bit for bit): serial vs parallel loops, the class vs the functional API, list vs
dict vs ``apply_gradients``, and a mixed float32/float64 optimizer vs one optimizer per dtype.
Then: a Hypothesis property test over random shapes/dtypes/hyperparameters, a no-recompilation
test, and NaN/inf semantics.
"""

import json
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numba_adamax as na
from numba_adamax.kernels import config as kernel_config
from numba_adamax.kernels import cpu as cpu_kernels
from configs import (call_expecting_missing_warning, CONFIG_NAMES, CONFIGS, Clock, Config, build_optimizer, build_reference,
                     init_state)
from conftest import F32_TOL, F64_TOL, NAMES, SHAPES, run_python, slow, tolerance

# --------------------------------------------------------------------------- the problem

STEPS = 9  # crosses gas=2 and gas=3 windows and overwrite periods 1, 2 and 3
# (call, variable) pairs fed a None gradient: on accumulation micro-steps and on update steps
# of gas=2 (calls 1, 3, 5, 7) and gas=3 (calls 2, 5, 8); never all variables at once.
NONE_AT = frozenset({(1, 1), (3, 0), (3, 3), (4, 4), (5, 4), (6, 1), (6, 2), (8, 0)})
MIXED_DTYPES = (np.float32, np.float64, np.float32, np.float64, np.float64)


def make_problem(config, dtypes, seed=0, steps=STEPS, shapes=SHAPES, none_at=NONE_AT):
    """Initial values and the gradients of every call (None where ``none_at``).

    Gradients are N(0, 1) times ``loss_scale_factor`` (so the unscaled ones are O(1), like the
    recordings); element 0 of the first variable gets an exact 0 on the first call (u == 0
    there, which epsilon=0 turns into NaN).
    """
    rng = np.random.default_rng(seed)
    if isinstance(dtypes, (type, np.dtype)):
        dtypes = [dtypes] * len(shapes)
    scale = config.kwargs.get("loss_scale_factor") or 1.0
    init = [np.array(rng.standard_normal(shape), dtype=dt) for shape, dt in zip(shapes, dtypes)]
    grads = []
    for s in range(steps):
        row = []
        for j, (shape, dt) in enumerate(zip(shapes, dtypes)):
            g = np.array(rng.standard_normal(shape) * scale, dtype=dt)
            if s == 0 and j == 0 and g.size:
                g.reshape(-1)[0] = 0
            row.append(None if (s, j) in none_at else g)
        grads.append(row)
    return init, grads


class Trajectory:
    """What a run produced after each call: params and every slot, counters, learning rates."""

    def __init__(self):
        self.rows = []  # dicts: key -> list of per-variable arrays, or a number
        self.lr = []

    def record(self, params, m, u, ema, acc, iterations, raw):
        self.rows.append(dict(
            params=[np.array(p, copy=True) for p in params],
            m=[np.array(x, copy=True) for x in m], u=[np.array(x, copy=True) for x in u],
            ema=[np.array(x, copy=True) for x in ema], acc=[np.array(x, copy=True) for x in acc],
            iterations=int(iterations), raw=int(raw)))


SLOTS = ("params", "m", "u", "ema", "acc")


def _call(grads, call):
    """Run ``call()``; it must warn "Gradients do not exist" exactly when a gradient is None."""
    call_expecting_missing_warning(any(g is None for g in grads), call)


def run_class(config, init, grads, names=NAMES, api="list"):
    """Drive ``na.Adamax`` through ``grads``; ``api`` is "list", "dict" or "pairs"."""
    clock = Clock()
    params = [x.copy() for x in init]
    opt = build_optimizer(config, clock)
    by_name = dict(zip(names, params))
    if api == "list":
        opt.build(params, names=list(names))
    traj = Trajectory()
    for s, row in enumerate(grads):
        clock.step = s
        traj.lr.append(opt.learning_rate)
        if api == "list":
            _call(row, lambda: opt.apply(list(row), params))
        elif api == "dict":
            # grads in reverse key order: matched by name, not by position
            gdict = {n: g for n, g in reversed(list(zip(names, row)))}
            _call(row, lambda: opt.apply(gdict, by_name))
        elif api == "pairs":
            if s == 0:
                opt.build(params, names=list(names))
            _call(row, lambda: opt.apply_gradients(list(zip(row, params))))
        st_ = opt.state
        assert opt.iterations == st_.iterations
        traj.record(params, st_.m, st_.u, st_.ema, st_.accumulators, opt.iterations,
                    st_.raw_steps)
    traj.optimizer = opt
    traj.final_params = params
    return traj


def run_functional(config, init, grads, names=NAMES, api="list"):
    """Drive ``na.init``/``na.step`` through ``grads`` (list or dict params)."""
    clock = Clock()
    params = [x.copy() for x in init]
    if api == "dict":
        tree = dict(zip(names, params))
        state = init_state(config, tree, clock=clock)
    else:
        state = init_state(config, params, names=list(names), clock=clock)
    traj = Trajectory()
    for s, row in enumerate(grads):
        clock.step = s
        traj.lr.append(state.hyperparameters.learning_rate_at(state.raw_steps))
        if api == "dict":
            gtree = {n: g for n, g in reversed(list(zip(names, row)))}
            _call(row, lambda: na.step(tree, gtree, state))
        else:
            _call(row, lambda: na.step(params, list(row), state))
        traj.record(params, state.m, state.u, state.ema, state.accumulators, state.iterations,
                    state.raw_steps)
    traj.state = state
    return traj


def run_reference(config, init, grads, names=NAMES):
    """The float64 oracle on the float64 upcast of ``init``/``grads``."""
    clock = Clock()
    params = [np.array(x, dtype=np.float64) for x in init]
    ref = build_reference(config, names, clock)
    traj = Trajectory()
    for s, row in enumerate(grads):
        clock.step = s
        traj.lr.append(ref.lr_value())
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # NaN/inf tests feed them
            warnings.simplefilter("ignore", UserWarning)
            ref.apply([None if g is None else np.array(g, dtype=np.float64) for g in row], params)
        traj.record(params, ref.m, ref.u, ref.ema, ref.acc, ref.iterations, ref.raw)
    traj.reference = ref
    traj.final_params = params
    return traj


def assert_close_to_reference(name, got, ref, dtypes, tolerances=None):
    """Every call's params and slots within the dtype's tolerance (or ``tolerances[j]``);
    counters and learning rates exact up to rounding."""
    tolerances = tolerances or [tolerance(dt) for dt in dtypes]
    assert len(got.rows) == len(ref.rows)
    np.testing.assert_allclose(got.lr, ref.lr, rtol=1e-13, atol=0, err_msg=f"{name}: lr")
    for s, (a, b) in enumerate(zip(got.rows, ref.rows)):
        assert (a["iterations"], a["raw"]) == (b["iterations"], b["raw"]), f"{name} call {s}"
        for slot in SLOTS:
            assert len(a[slot]) == len(b[slot]), f"{name} call {s}: {slot}"
            for j, (x, y) in enumerate(zip(a[slot], b[slot])):
                assert x.shape == y.shape and x.dtype == np.dtype(dtypes[j])
                np.testing.assert_allclose(x, y, equal_nan=True, **tolerances[j],
                                           err_msg=f"{name}: call {s}, {slot}{j}")


def assert_bit_identical(name, a, b):
    assert len(a.rows) == len(b.rows)
    assert a.lr == b.lr, f"{name}: lr"
    for s, (x, y) in enumerate(zip(a.rows, b.rows)):
        assert (x["iterations"], x["raw"]) == (y["iterations"], y["raw"]), f"{name} call {s}"
        for slot in SLOTS:
            assert len(x[slot]) == len(y[slot]), f"{name}: {slot}"
            for j, (p, q) in enumerate(zip(x[slot], y[slot])):
                assert p.dtype == q.dtype and p.shape == q.shape
                assert np.array_equal(p, q, equal_nan=True), (
                    f"{name}: call {s}, {slot}{j} differs (max abs diff "
                    f"{np.nanmax(np.abs(p - q)) if p.size else 0})")


def expected_slot_counts(config):
    n = len(NAMES)
    return dict(params=n, m=n, u=n, ema=n if config.kwargs.get("use_ema") else 0,
                acc=n if config.kwargs.get("gradient_accumulation_steps") else 0)


@pytest.fixture(params=["serial", "parallel"])
def loop(request, monkeypatch):
    """Run with the default threshold (all these sizes serial) or with 8, so that every variable
    of 8 or more elements takes the prange loop."""
    if request.param == "parallel":
        monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 8)
    return request.param


# --------------------------------------------------------------------------- vs the reference


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_float64_matches_reference(name, loop):
    config = CONFIGS[name]
    init, grads = make_problem(config, np.float64)
    got = run_class(config, init, grads)
    ref = run_reference(config, init, grads)
    assert {k: len(v) for k, v in got.rows[-1].items() if k in SLOTS} == expected_slot_counts(config)
    assert_close_to_reference(name, got, ref, [np.float64] * len(NAMES))
    if config.kwargs.get("use_ema"):
        got.optimizer.finalize_variable_values(got.final_params)
        ref.reference.finalize(ref.final_params)
        for j, (x, y) in enumerate(zip(got.final_params, ref.final_params)):
            np.testing.assert_allclose(x, y, equal_nan=True, **F64_TOL, err_msg=f"final{j}")
            np.testing.assert_array_equal(x, got.rows[-1]["ema"][j])
    # the test is not vacuous: the parameters moved (except with lr = 0 and no weight decay)
    moved = not np.array_equal(got.rows[-1]["params"][4], init[4], equal_nan=True)
    assert moved or name == "lr_zero"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_float32_matches_float64_reference(name, loop):
    config = CONFIGS[name]
    init, grads = make_problem(config, np.float32, seed=1)
    got = run_class(config, init, grads)
    ref = run_reference(config, init, grads)
    assert_close_to_reference(name, got, ref, [np.float32] * len(NAMES))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_mixed_float32_and_float64_variables(name):
    config = CONFIGS[name]
    init, grads = make_problem(config, MIXED_DTYPES, seed=2)
    got = run_class(config, init, grads)
    ref = run_reference(config, init, grads)
    tolerances = [tolerance(dt) for dt in MIXED_DTYPES]
    if "global_clipnorm" in config.kwargs:
        # The global norm is taken over the effective gradients in their own dtypes (promoted
        # for the sum, but a float32 gradient's unscaled / accumulated mean is float32), so
        # float32 rounding reaches the float64 variables' scale; the float64
        # reference, which upcasts first, cannot see it. Bound: float32 rounding of the scale.
        tolerances = [dict(rtol=1e-6, atol=1e-9) if dt is np.float64 else F32_TOL
                      for dt in MIXED_DTYPES]
    assert_close_to_reference(name, got, ref, MIXED_DTYPES, tolerances)
    if "global_clipnorm" in config.kwargs:
        return  # the global norm couples the dtypes; the split below would change it
    # Without a global norm the variables are independent: each dtype's variables evolve bit for
    # bit as in an optimizer holding that dtype alone.
    for dt in (np.float32, np.float64):
        idx = [j for j, d in enumerate(MIXED_DTYPES) if d is dt]
        alone = run_class(config, [init[j] for j in idx], [[row[j] for j in idx] for row in grads],
                          names=[NAMES[j] for j in idx])
        for s in range(STEPS):
            for slot in SLOTS:
                if not got.rows[s][slot]:
                    continue
                for k, j in enumerate(idx):
                    assert np.array_equal(got.rows[s][slot][j], alone.rows[s][slot][k],
                                          equal_nan=True), f"{name}: {dt.__name__} {slot}{j}"


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_serial_and_parallel_loops_are_bit_identical(name, dtype, monkeypatch):
    config = CONFIGS[name]
    init, grads = make_problem(config, dtype, seed=3)
    serial = run_class(config, init, grads)
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 8)
    parallel = run_class(config, init, grads)
    assert_bit_identical(name, serial, parallel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_class_and_functional_are_bit_identical(name, dtype):
    config = CONFIGS[name]
    init, grads = make_problem(config, dtype, seed=4)
    a = run_class(config, init, grads)
    b = run_functional(config, init, grads)
    assert_bit_identical(name, a, b)
    assert b.state.raw_steps == STEPS


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_list_dict_and_pairs_apis_are_bit_identical(name):
    config = CONFIGS[name]
    init, grads = make_problem(config, np.float64, seed=5)
    by_list = run_class(config, init, grads, api="list")
    assert_bit_identical(name, by_list, run_class(config, init, grads, api="dict"))
    assert_bit_identical(name, by_list, run_class(config, init, grads, api="pairs"))
    assert_bit_identical(name, by_list, run_functional(config, init, grads, api="dict"))


# --------------------------------------------------------------------------- property test

_SHAPE = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)


@st.composite
def _scenarios(draw):
    n_vars = draw(st.integers(1, 3))
    gas = draw(st.sampled_from([None, 2, 3]))
    shapes = [draw(_SHAPE) for _ in range(n_vars)]
    if gas:
        # tests/reference.py cannot reset a 0-d accumulator (NumPy turns it into a scalar), so
        # 0-d variables are drawn only without accumulation.
        shapes = [shape or (1,) for shape in shapes]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kwargs = dict(
        learning_rate=draw(st.floats(0.0, 0.5)),
        beta_1=draw(st.floats(0.0, 0.99)),
        beta_2=draw(st.floats(0.0, 0.9999)),
        epsilon=draw(st.one_of(st.just(0.0), st.floats(1e-12, 1e-3))),
    )
    if draw(st.booleans()):
        kwargs["weight_decay"] = draw(st.floats(0.0, 0.5))
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip:
        kwargs[clip] = draw(st.floats(1e-3, 5.0))
    if gas:
        kwargs["gradient_accumulation_steps"] = gas
    if draw(st.booleans()):
        kwargs["use_ema"] = True
        kwargs["ema_momentum"] = draw(st.floats(0.0, 1.0))
        kwargs["ema_overwrite_frequency"] = draw(st.sampled_from([None, 1, 2, 3]))
    if draw(st.booleans()):
        kwargs["loss_scale_factor"] = draw(st.floats(0.5, 1000.0))
    steps = draw(st.integers(1, 7))
    none_at = set()
    for s in range(steps):
        mask = draw(st.lists(st.booleans(), min_size=n_vars, max_size=n_vars))
        if all(mask):
            mask[draw(st.integers(0, n_vars - 1))] = False
        none_at |= {(s, j) for j, is_none in enumerate(mask) if is_none}
    seed = draw(st.integers(0, 2**32 - 1))
    names = [f"v{j}" for j in range(n_vars)]
    exclude = tuple(draw(st.lists(st.sampled_from(names), max_size=2, unique=True)))
    return Config(kwargs, exclude_names=tuple(f"^{n}$" for n in exclude)), shapes, dtype, steps, \
        none_at, seed, names


@slow
@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenarios())
def test_property_random_configurations_match_reference(scenario):
    config, shapes, dtype, steps, none_at, seed, names = scenario
    init, grads = make_problem(config, dtype, seed=seed, steps=steps, shapes=shapes,
                               none_at=none_at)
    got = run_class(config, init, grads, names=names)
    ref = run_reference(config, init, grads, names=names)
    assert_close_to_reference(repr(config.kwargs), got, ref, [dtype] * len(shapes))


# --------------------------------------------------------------------------- no recompilation


def test_repeated_steps_add_no_signatures(monkeypatch):
    """Run every configuration in both dtypes (and both loops); a second batch of calls, on the
    same and on fresh optimizers, must not compile anything new."""
    def batch(seed):
        for name in CONFIG_NAMES:
            for dtype in (np.float32, np.float64):
                init, grads = make_problem(CONFIGS[name], dtype, seed=seed, steps=6)
                run_class(CONFIGS[name], init, grads)

    batch(0)
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 8)
    batch(1)
    before = {d.__name__: list(d.signatures) for d in cpu_kernels.DISPATCHERS}
    assert before["update"], "the update kernel was never compiled"
    batch(2)
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 32768)
    batch(3)
    after = {d.__name__: list(d.signatures) for d in cpu_kernels.DISPATCHERS}
    assert after == before


_SUBPROCESS = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import numba_adamax as na
    from numba_adamax.kernels import config as kernel_config
    from numba_adamax.kernels import cpu as cpu_kernels
    warnings.simplefilter("ignore")
    kwargs = json.loads(sys.argv[1])
    kernel_config.PARALLEL_THRESHOLD = 40  # groups of 32 and 96 elements: both variants
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64, np.float32):
        for sizes in ((7, 15, 0), (70, 15, 0)):
            params = [rng.standard_normal(n).astype(dtype) for n in sizes]
            opt = na.Adamax(**kwargs)
            for s in range(12):
                grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
                if s % 4 == 1:
                    grads[s % 3] = None
                opt.apply(grads, params)
    out = {}
    for d in cpu_kernels.DISPATCHERS:
        dts = []
        for sig in d.signatures:
            floats = {str(t.dtype) for t in sig if hasattr(t, "ndim") and t.ndim == 1
                      and "float" in str(t.dtype)}
            dts.append("float32" if "float32" in floats else "float64")
        out[d.__name__] = dts
    print(json.dumps(out))
""")


@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=0.05),
    dict(learning_rate=0.05, gradient_accumulation_steps=3, use_ema=True,
         ema_overwrite_frequency=2, clipnorm=0.5, weight_decay=0.1, loss_scale_factor=64.0),
    dict(learning_rate=0.05, global_clipnorm=1.0, gradient_accumulation_steps=2),
], ids=["plain", "kitchen_sink", "global_clipnorm_accum"])
@slow
def test_one_signature_per_dtype_in_a_fresh_process(kwargs):
    proc = run_python(["-c", _SUBPROCESS, json.dumps(kwargs)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    sigs = json.loads(proc.stdout.strip().splitlines()[-1])
    for variant in ("", "_parallel"):
        assert sorted(sigs["update" + variant]) == ["float32", "float64"]
        if "gradient_accumulation_steps" in kwargs:
            assert sorted(sigs["accumulate" + variant]) == ["float32", "float64"]
        if "clipnorm" in kwargs or "global_clipnorm" in kwargs:
            assert sorted(sigs["chunk_sums_of_squares" + variant]) == ["float32", "float64"]
    for name, dtypes in sigs.items():
        assert len(dtypes) == len(set(dtypes)), f"{name} compiled {dtypes}"


# --------------------------------------------------------------------------- NaN and inf


def _run_pair(kwargs, init, grads, names=None):
    """The class and the float64 reference on the same inputs; returns (optimizer, params, ref,
    ref_params)."""
    names = names or [f"v{j}" for j in range(len(init))]
    config = Config(kwargs)
    got = run_class(config, init, grads, names=names)
    ref = run_reference(config, init, grads, names=names)
    assert_close_to_reference(repr(kwargs), got, ref, [x.dtype for x in init])
    return got, ref


NAN_CONFIGS = {
    "plain": dict(learning_rate=0.05),
    "clipvalue": dict(learning_rate=0.05, clipvalue=0.5),
    "clipnorm": dict(learning_rate=0.05, clipnorm=1.0),
    "weight_decay": dict(learning_rate=0.05, weight_decay=0.1),
    "ema_overwrite": dict(learning_rate=0.05, use_ema=True, ema_momentum=0.5,
                          ema_overwrite_frequency=2),
    "accum": dict(learning_rate=0.05, gradient_accumulation_steps=2),
}


def _special_problem(dtype, value, seed=0):
    """Two variables (7 and 40 elements); calls 0, 2, 3 are normal, call 1 has ``value`` at
    element 2 of variable 0 and element 30 of variable 1."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(7).astype(dtype), rng.standard_normal(40).astype(dtype)]
    grads = [[rng.standard_normal(7).astype(dtype), rng.standard_normal(40).astype(dtype)]
             for _ in range(4)]
    grads[1][0][2] = value
    grads[1][1][30] = value
    # a large gradient on the call after: NaN must win the max over |g| as well
    grads[2][0][2] = 100.0
    return init, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cname", list(NAN_CONFIGS))
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
def test_nan_and_inf_gradients_behave_like_the_reference(cname, special, dtype, loop):
    init, grads = _special_problem(dtype, special)
    got, ref = _run_pair(NAN_CONFIGS[cname], init, grads)
    row = got.rows[1]
    if cname == "plain":
        for j, k in ((0, 2), (1, 30)):
            w, m, u = row["params"][j], row["m"][j], row["u"][j]
            others = np.arange(w.size) != k
            assert np.isfinite(w[others]).all() and np.isfinite(m[others]).all()
            assert np.isfinite(u[others]).all()
            if np.isnan(special):
                # NaN-propagating max: u is NaN, not beta_2 * u nor |g|
                assert np.isnan(u[k]) and np.isnan(m[k]) and np.isnan(w[k])
            else:
                assert m[k] == special and u[k] == np.inf
                assert np.isnan(w[k])  # (lr * +-inf) / (bc * inf)
        # NaN stays NaN on the next call, even against |g| = 100
        assert np.isnan(got.rows[2]["u"][0][2]) or not np.isnan(special)
    if cname == "clipvalue" and np.isinf(special):
        # clipped to +-0.5 first: everything stays finite
        assert all(np.isfinite(x).all() for x in row["params"])
        m_prev = got.rows[0]["m"][0][2]
        clipped = dtype(0.5) * dtype(np.sign(special))
        assert row["m"][0][2] == m_prev + (clipped - m_prev) * dtype(1 - 0.9)
    if cname == "clipnorm":
        if np.isnan(special):
            # a NaN norm makes the whole variable's gradient NaN (g * c / NaN)
            assert np.isnan(row["params"][0]).all() and np.isnan(row["params"][1]).all()
        else:
            # an infinite norm: the inf element becomes inf * c / inf = NaN, the others 0
            for j, k in ((0, 2), (1, 30)):
                assert np.isnan(row["params"][j][k])
                assert np.isfinite(np.delete(row["params"][j], k)).all()
                m_prev = np.delete(got.rows[0]["m"][j], k)
                np.testing.assert_array_equal(np.delete(row["m"][j], k),
                                              m_prev + (dtype(0) - m_prev) * dtype(1 - 0.9))
    if cname == "accum":
        # call 1 is the first update: the accumulated mean carries the special value
        assert np.isnan(row["params"][0][2]) and np.isfinite(np.delete(row["params"][0], 2)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("special", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_global_norm_makes_every_gradient_nan(special, dtype, loop):
    rng = np.random.default_rng(7)
    shapes = [(5,), (3, 4), (50,), (6,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    grads[1][2][17] = special
    grads[1][3] = None  # no gradient this call: untouched by the NaN scale
    got, ref = _run_pair(dict(learning_rate=0.05, global_clipnorm=1.0), init, grads)
    row = got.rows[1]
    for j in range(3):
        assert np.isnan(row["params"][j]).all(), j
        assert np.isnan(row["m"][j]).all() and np.isnan(row["u"][j]).all(), j
    np.testing.assert_array_equal(row["params"][3], got.rows[0]["params"][3])
    assert np.isfinite(row["params"][3]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_epsilon_zero_with_zero_gradient_gives_nan_where_u_is_zero(dtype, loop):
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(9).astype(dtype), rng.standard_normal(40).astype(dtype)]
    g0 = [rng.standard_normal(9).astype(dtype), rng.standard_normal(40).astype(dtype)]
    g0[0][[1, 4]] = 0
    g0[1][::5] = 0
    grads = [g0] + [[rng.standard_normal(9).astype(dtype), rng.standard_normal(40).astype(dtype)]
                    for _ in range(2)]
    got, ref = _run_pair(dict(learning_rate=0.05, epsilon=0.0), init, grads)
    row = got.rows[0]
    for j in range(2):
        zero_u = row["u"][j] == 0
        assert zero_u.sum() == (2 if j == 0 else 8)
        np.testing.assert_array_equal(np.isnan(row["params"][j]), zero_u)
    # and it stays NaN (0/0 once, then NaN arithmetic)
    assert np.isnan(got.rows[-1]["params"][0][[1, 4]]).all()
    assert np.isfinite(np.delete(got.rows[-1]["params"][0], [1, 4])).all()


@pytest.mark.parametrize("kwargs, decayed", [
    (dict(learning_rate=0.05), False),
    (dict(learning_rate=0.05, weight_decay=0.0), True),
    (dict(learning_rate=0.05, weight_decay=0.1), True),
], ids=["no_decay", "decay_zero", "decay"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_weights_follow_keras_with_and_without_weight_decay(kwargs, decayed, dtype):
    """Without weight decay an inf weight stays inf and -0.0 keeps its sign; with any
    weight decay (0 included, as in Keras) ``w - w * wd * lr`` runs and inf becomes NaN.
    An excluded variable is never decayed."""
    w = np.array([np.inf, -0.0, 1.0], dtype)
    g = np.array([1.0, 0.0, 1.0], dtype)
    params = [w.copy(), w.copy()]
    opt = na.Adamax(**kwargs)
    opt.exclude_from_weight_decay(var_names=["kept"])
    opt.build(params, names=["decayed", "kept"])
    opt.apply([g.copy(), g.copy()], params)
    expected_first = [np.nan, 0.0] if decayed else [np.inf, -0.0]
    for p, first in zip(params, [expected_first, [np.inf, -0.0]]):
        np.testing.assert_array_equal(p[:2], np.array(first, dtype))
        assert np.signbit(p[1]) == np.signbit(first[1])
        assert p[2] < 1.0
