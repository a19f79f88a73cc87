"""Sparse gradients (``IndexedSlices``): the lazy TF 1.x path.

* the recorded legacy-TF trajectories (tests/data/tf_sparse_vectors.*), through the class and the
  functional API;
* property-based comparison with the float64 lazy reference (tests/sparse_reference.py) over every
  configuration of tests/configs.py, with duplicates, empty index lists, every row touched, one row
  touched many times, and dense, sparse and missing gradients mixed within and across calls;
* equality with the dense path when every row is touched exactly once;
* serial and parallel loops, the class and the functional API: bit for bit;
* the deduplication kernel on its own;
* every bad input, each checked to change nothing.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numba_adamax as na
from configs import (CONFIG_NAMES, CONFIGS, NORM_CLIPPING_CONFIGS, Clock, build_optimizer,
                     init_state, make_kwargs)
from conftest import assert_unchanged, recorded_tolerance, slow, snapshot_state, tolerance
from numba_adamax.kernels import config as kernel_config
from sparse_helpers import (PATTERNS, SPARSE_NAMES, TF, TF_NAMES, make_gradient, make_indices,
                            replay_legacy)
from sparse_reference import LazySparseReference


# ============================================================ recorded legacy-TF trajectories

@pytest.mark.parametrize("api", ["class", "functional"])
@pytest.mark.parametrize("name", TF_NAMES)
def test_legacy_tf_sparse_trajectories(name, api):
    cfg = TF[name]
    got, weights = replay_legacy(name, api)
    np.testing.assert_array_equal(got["iterations"], cfg.arrays["iterations"])
    np.testing.assert_allclose(got["lr"], cfg.arrays["lr_float64"], rtol=1e-12, atol=0)
    for j in range(cfg.n_vars):
        for key in ("value", "m", "v"):
            want = cfg.arrays[f"{key}{j}"]
            assert got[f"{key}{j}"].dtype == want.dtype
            for s in range(cfg.steps + 1):
                np.testing.assert_allclose(got[f"{key}{j}"][s], want[s],
                                           **recorded_tolerance(want.dtype),
                                           err_msg=f"{name}/{key}{j} after {s} steps")
    for i, w in enumerate(weights):
        want = cfg.arrays[f"get_weights_{i}"]
        np.testing.assert_allclose(w, want, **recorded_tolerance(want.dtype),
                                   err_msg=f"weights[{i}]")


def test_legacy_replay_is_lazy_and_class_equals_functional():
    """The recordings do exercise laziness: some rows stay untouched for several steps with
    their m/v frozen; and both APIs give the same bits."""
    cfg = TF["sparse_defaults"]
    got, _ = replay_legacy("sparse_defaults", "class")
    frozen = 0
    for s in range(1, cfg.steps):
        untouched = np.setdiff1d(np.arange(6), cfg.arrays["indices0"][s])
        if untouched.size and np.any(got["m0"][s][untouched] != 0):
            np.testing.assert_array_equal(got["m0"][s + 1][untouched], got["m0"][s][untouched])
            frozen += 1
    assert frozen > 0
    for name in TF_NAMES:
        a, _ = replay_legacy(name, "class")
        b, _ = replay_legacy(name, "functional")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}/{key}")


# ============================================================ against the lazy reference

@st.composite
def scenarios(draw):
    """A configuration, a dtype, three variable shapes (1-D, 2-D, 3-D) and a few calls."""
    name = draw(st.sampled_from(CONFIG_NAMES))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 7))
    shapes = [(n, draw(st.integers(1, 4))), (draw(st.integers(1, 9)),),
              (draw(st.integers(1, 5)), 2, draw(st.integers(1, 3)))]
    steps = draw(st.integers(1, 6))
    calls = []
    for _ in range(steps):
        kinds = [draw(st.sampled_from(["sparse", "sparse", "dense", "none"])) for _ in shapes]
        if all(k == "none" for k in kinds):
            kinds[0] = "sparse"
        patterns = [draw(st.sampled_from(PATTERNS)) for _ in shapes]
        calls.append((kinds, patterns))
    return name, dtype, shapes, calls, draw(st.integers(0, 2**32 - 1))


def build_problem(dtype, shapes, calls, seed):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    grads = [[make_gradient(rng, kind, pattern, shape, dtype)
              for kind, pattern, shape in zip(kinds, patterns, shapes)]
             for kinds, patterns in calls]
    return init, grads


def run_library(name, init, grads, api="class"):
    """Run the calls through the class or the functional API; one snapshot per call."""
    config, clock = CONFIGS[name], Clock()
    params = [p.copy() for p in init]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-gradient warnings, deprecated decay
        if api == "class":
            opt = build_optimizer(config, clock)
            opt.build(params, names=SPARSE_NAMES)
            state = opt.state
        else:
            state = init_state(config, params, names=SPARSE_NAMES, clock=clock)
        for s, call in enumerate(grads):
            clock.step = s
            if api == "class":
                opt.apply(call, params)
            else:
                na.step(params, call, state)
            rows.append(snapshot_state(state, params))
    return rows


def run_lazy_reference(name, init, grads):
    config, clock = CONFIGS[name], Clock()
    ref = LazySparseReference(**make_kwargs(config, clock, for_reference=True),
                              names=SPARSE_NAMES, exclude_names=config.exclude_names)
    params = [p.astype(np.float64) for p in init]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, call in enumerate(grads):
            clock.step = s
            ref.apply(call, params)
            rows.append(snapshot_state(ref, params))
    return rows


_PER_VARIABLE = ("param", "m", "u", "ema", "accumulator")


def _variables_and_slots(snapshot):
    return {key for key in snapshot if key.split("[")[0] in _PER_VARIABLE}


def assert_rows_close(name, got, want, dtype):
    """After every call: the same variables and slots, and every array of ``want`` (snapshots
    of ``conftest.snapshot_state``) within ``tolerance(dtype)`` of ``got``'s."""
    assert len(got) == len(want), name
    for s, (g, w) in enumerate(zip(got, want)):
        assert _variables_and_slots(g) == _variables_and_slots(w), (name, s)
        assert w.keys() <= g.keys(), (name, s)
        for key, y in w.items():
            np.testing.assert_allclose(g[key], y, equal_nan=True, **tolerance(dtype),
                                       err_msg=f"{name}: {key} after call {s}")


def assert_rows_identical(name, a, b):
    """After every call, the same arrays: dtypes and values equal (NaN == NaN)."""
    assert len(a) == len(b), name
    for s, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), (name, s)
        for key, p in x.items():
            assert p.dtype == y[key].dtype
            assert np.array_equal(p, y[key], equal_nan=True), f"{name}: {key} call {s}"


@slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_matches_lazy_reference(scenario):
    name, dtype, shapes, calls, seed = scenario
    init, grads = build_problem(dtype, shapes, calls, seed)
    got = run_library(name, init, grads)
    assert_rows_close(name, got, run_lazy_reference(name, init, grads), dtype)
    assert_rows_identical(name, got, run_library(name, init, grads, api="functional"))


@pytest.mark.parametrize("name", ["defaults", "loss_scale_factor", "clipnorm", "global_clipnorm",
                                  "clipvalue", "weight_decay_exclude", "ema_overwrite_3",
                                  "grad_accum_3", "kitchen_sink",
                                  "global_clipnorm_accum_schedule"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_feature_matches_lazy_reference(name, dtype):
    """Fixed scenarios per feature: every gradient pattern, dense and missing gradients mixed in
    the same call and across calls for the same variable."""
    shapes = [(6, 3), (5,), (4, 2, 3)]
    cycle = [("sparse", "random"), ("sparse", "one_row_many"), ("dense", "random"),
             ("sparse", "empty"), ("none", "random"), ("sparse", "all_rows"),
             ("sparse", "permutation"), ("sparse", "random")]
    calls = []
    for s in range(8):
        picks = [cycle[(s + 3 * j) % len(cycle)] for j in range(3)]
        calls.append(([k for k, _ in picks], [p for _, p in picks]))
    init, grads = build_problem(dtype, shapes, calls, seed=11)
    got = run_library(name, init, grads)
    assert_rows_close(name, got, run_lazy_reference(name, init, grads), dtype)


def test_untouched_rows_do_not_decay_and_the_step_is_global():
    """Row 3 first gets a gradient on the fifth update: it then gets exactly the first update
    from zero slots with the bias correction of t = 5, and it stayed unchanged before."""
    w = np.arange(12, dtype=np.float64).reshape(6, 2)
    start = w.copy()
    opt = na.Adamax(learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    one = np.ones((1, 2))
    for _ in range(4):
        opt.apply([na.IndexedSlices(one, np.array([0]))], [w])
    np.testing.assert_array_equal(w[1:], start[1:])
    assert not np.any(opt.get_slot(w, "m")[1:]) and not np.any(opt.get_slot(w, "u")[1:])
    g = np.array([[2.0, -4.0]])
    opt.apply([na.IndexedSlices(g, np.array([3]))], [w])
    m, u = g[0] * (1 - 0.9), np.abs(g[0])
    expected = start[3] - 0.1 * m / ((1 - 0.9**5) * (u + 1e-7))
    np.testing.assert_allclose(w[3], expected, rtol=1e-14)
    np.testing.assert_array_equal(w[[1, 2, 4, 5]], start[[1, 2, 4, 5]])


def test_duplicates_are_summed_before_the_max():
    """u sees |sum of duplicates|, not each duplicate (TF's lazy path)."""
    w = np.zeros((3, 1))
    opt = na.Adamax(learning_rate=0.1)
    opt.apply([na.IndexedSlices(np.array([[3.0], [-1.0], [2.0]]), np.array([1, 1, 2]))], [w])
    np.testing.assert_array_equal(opt.get_slot(w, "u")[:, 0], [0.0, 2.0, 2.0])
    np.testing.assert_allclose(opt.get_slot(w, "m")[:, 0], [0.0, 0.2, 0.2])


def test_accumulation_updates_the_union_of_the_window():
    """With gradient_accumulation_steps=3, rows touched on any call of the window are updated
    on the third call; the masks restart after it."""
    w = np.zeros((6, 2), np.float32)
    opt = na.Adamax(learning_rate=0.1, gradient_accumulation_steps=3)
    ones = np.ones((1, 2), np.float32)
    opt.apply([na.IndexedSlices(ones, np.array([1]))], [w])
    opt.apply([na.IndexedSlices(ones, np.array([4]))], [w])
    assert not np.any(w)
    np.testing.assert_array_equal(opt.state.touched_rows[0], [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(opt.get_slot(w, "accumulator")[[1, 4]], np.ones((2, 2)))
    opt.apply([na.IndexedSlices(ones, np.array([2]))], [w])
    assert np.all(w[[1, 2, 4]] < 0) and not np.any(w[[0, 3, 5]])
    assert not np.any(opt.state.touched_rows[0]) and not np.any(opt.get_slot(w, "accumulator"))
    # a dense micro-step marks every row
    opt.apply([np.ones_like(w)], [w])
    assert np.all(opt.state.touched_rows[0])


# ============================================================ dense equivalence

@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_row_once_equals_the_dense_path(name):
    """When each call's indices are a permutation of all rows, the sparse path is the dense one:
    bit for bit, except that norm clipping adds the squares in another order."""
    shapes = [(5, 3), (7,), (3, 2, 2)]
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s) for s in shapes]
    dense, sparse = [], []
    for _ in range(6):
        call_dense, call_sparse = [], []
        for shape in shapes:
            order = rng.permutation(shape[0])
            g = rng.standard_normal(shape)
            call_dense.append(g)
            call_sparse.append(na.IndexedSlices(np.ascontiguousarray(g[order]), order))
        dense.append(call_dense)
        sparse.append(call_sparse)
    a = run_library(name, init, dense)
    b = run_library(name, init, sparse)
    if name in NORM_CLIPPING_CONFIGS:
        assert_rows_close(name, b, a, np.float64)
    else:
        assert_rows_identical(name, a, b)


# ============================================================ parity

@pytest.mark.parametrize("name", ["defaults", "clipnorm", "global_clipnorm", "kitchen_sink",
                                  "clipvalue_accum_loss_scale", "ema_overwrite_1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_loops_are_bit_identical(name, dtype, monkeypatch):
    shapes = [(40, 3), (50,), (20, 2, 3)]
    calls = [(["sparse"] * 3, ["random", "all_rows", "one_row_many"]),
             (["sparse", "dense", "sparse"], ["random"] * 3),
             (["sparse", "none", "sparse"], ["permutation", "random", "random"]),
             (["sparse"] * 3, ["random", "random", "empty"])] * 2
    init, grads = build_problem(dtype, shapes, calls, seed=9)
    serial = run_library(name, init, grads)
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 8)
    parallel = run_library(name, init, grads)
    assert_rows_identical(name, serial, parallel)


# ============================================================ deduplication kernel

@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deduplicate_sums_rows_in_order_of_first_appearance(parallel, dtype):
    from numba_adamax.kernels import cpu_sparse
    rng = np.random.default_rng(2)
    for k, n_rows in [(0, 5), (1, 5), (50, 7), (300, 1000), (4096, 200_000)]:
        indices = rng.integers(0, n_rows, k)
        values = rng.standard_normal((k, 3)).astype(dtype)
        kernels = (cpu_sparse.deduplicate, cpu_sparse.deduplicate_parallel)
        rows, summed = kernels[parallel](indices, values)
        _, first = np.unique(indices, return_index=True)
        np.testing.assert_array_equal(rows, indices[np.sort(first)])
        expected = np.zeros((n_rows, 3), np.float64)
        np.add.at(expected, indices, values.astype(np.float64))
        np.testing.assert_allclose(summed, expected[rows], **tolerance(dtype))
        again = kernels[not parallel](indices, values)
        np.testing.assert_array_equal(again[1], summed)


def test_deduplicate_without_repeats_returns_the_values():
    from numba_adamax.kernels import cpu_sparse
    values = np.arange(8.0).reshape(4, 2)
    rows, summed = cpu_sparse.deduplicate(np.array([3, 0, 9, 2]), values)
    np.testing.assert_array_equal(rows, [3, 0, 9, 2])
    assert summed is values


def test_element_body_with_flat_indices_matches_the_row_loops():
    """The per-element bodies take the gradient index k and the variable index i apart (as a
    GPU thread would); a flat loop over (k, i) gives the bits of the CPU row loops."""
    import numba
    from numba import njit

    from numba_adamax.kernels import cpu_sparse, elementwise

    inline = njit(inline="always", error_model="numpy")
    body = elementwise.compile_for(inline, numba.float64).sparse_update_at

    @njit(error_model="numpy")
    def flat_update(rows, row_size, w, g, m, u, a, scalars):
        ls, st, cs, cd, cv, lr, wd, omb1, b2, eps, bc = scalars
        for k in range(rows.size * row_size):
            i = rows[k // row_size] * row_size + k % row_size
            body(k, i, w, g, m, u, a, ls, st, cs, cd, cv, lr, True, wd, omb1, b2, eps, bc)

    rng = np.random.default_rng(4)
    rows, row_size = np.array([7, 2, 9, 0]), 3
    w, m, u = (rng.standard_normal(30) for _ in range(3))
    u = np.abs(u)
    g = rng.standard_normal(rows.size * row_size)
    scalars = (2.0, 1.0, 0.5, 1.5, 0.4, 0.05, 0.1, 0.1, 0.999, 1e-7, 0.3)
    original = w.copy()
    expected = [x.copy() for x in (w, m, u)]
    ls, st, cs, cd, cv, lr, wd, omb1, b2, eps, bc = scalars
    cpu_sparse.update_rows(rows, row_size, *expected[:1], g, *expected[1:], None, ls, st,
                           cs, cd, cv, lr, True, wd, omb1, b2, eps, bc)
    flat_update(rows, row_size, w, g, m, u, None, scalars)
    for got, want in zip((w, m, u), expected):
        np.testing.assert_array_equal(got, want)
    touched = (rows[:, None] * row_size + np.arange(row_size)).ravel()
    untouched = np.setdiff1d(np.arange(30), touched)
    assert np.all(w[touched] != original[touched])
    np.testing.assert_array_equal(w[untouched], original[untouched])


def test_repeated_sparse_steps_add_no_signatures():
    from numba_adamax.kernels import cpu_sparse
    w = np.zeros((10, 4), np.float32)
    opt = na.Adamax(learning_rate=0.1, clipnorm=1.0)
    values = np.ones((3, 4), np.float32)
    opt.apply([na.IndexedSlices(values, np.array([1, 2, 1], np.int32))], [w])
    before = [len(d.signatures) for d in cpu_sparse.DISPATCHERS]
    for dtype in (np.int64, np.int16, np.uint32, np.int32):
        opt.apply([na.IndexedSlices(values, np.array([4, 4, 9], dtype))], [w])
    assert [len(d.signatures) for d in cpu_sparse.DISPATCHERS] == before


# ============================================================ errors change nothing

def _bad_inputs():
    """(label, gradient builder for a (6, 3) float32 variable, exception, message regex)."""
    v = np.ones((2, 3), np.float32)
    i = np.array([0, 5])
    return [
        ("indices list", lambda: na.IndexedSlices(v, [0, 5]), TypeError, "`indices` must be"),
        ("indices float", lambda: na.IndexedSlices(v, i.astype(float)), TypeError,
         "integer dtype"),
        ("indices bool", lambda: na.IndexedSlices(v, np.array([True, False])), TypeError,
         "integer dtype"),
        ("indices 2-D", lambda: na.IndexedSlices(v, i.reshape(2, 1)), ValueError, "1-D"),
        ("negative index", lambda: na.IndexedSlices(v, np.array([0, -1])), ValueError,
         "contains -1"),
        ("index too large", lambda: na.IndexedSlices(v, np.array([0, 6])), ValueError,
         r"contains 6, outside \[0, 6\)"),
        ("length mismatch", lambda: na.IndexedSlices(v, np.array([0, 1, 2])), ValueError,
         "length 3"),
        ("row shape", lambda: na.IndexedSlices(np.ones((2, 4), np.float32), i), ValueError,
         r"expected \(2, 3\)"),
        ("values list", lambda: na.IndexedSlices([[1.0] * 3] * 2, i), TypeError,
         "`values` must be"),
        ("values dtype", lambda: na.IndexedSlices(v.astype(np.float64), i), TypeError,
         "`values` has dtype float64"),
        ("values int", lambda: na.IndexedSlices(v.astype(np.int32), i), TypeError,
         "`values` has dtype int32"),
        ("values not contiguous", lambda: na.IndexedSlices(np.ones((3, 2), np.float32).T, i),
         ValueError, "not C-contiguous"),
        ("dense_shape", lambda: na.IndexedSlices(v, i, dense_shape=(6, 4)), ValueError,
         "`dense_shape` is"),
        ("dense_shape type", lambda: na.IndexedSlices(v, i, dense_shape=(6.0, 3)), TypeError,
         "`dense_shape` must be"),
    ]


BAD = _bad_inputs()


@pytest.mark.parametrize("api", ["class", "functional"])
@pytest.mark.parametrize("label,make,exc,message", BAD, ids=[b[0] for b in BAD])
def test_bad_sparse_gradient_changes_nothing(label, make, exc, message, api):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4,)).astype(np.float32),
              rng.standard_normal((6, 3)).astype(np.float32)]
    good = na.IndexedSlices(np.ones((2,), np.float32), np.array([1, 1]))
    kwargs = dict(learning_rate=0.1, use_ema=True, gradient_accumulation_steps=2)
    if api == "class":
        opt = na.Adamax(**kwargs)
        with pytest.raises(exc, match=message):  # a failed first call builds nothing
            opt.apply([good, make()], params)
        assert not opt.built
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            opt.apply([good, None], params)
        state = opt.state
    else:
        state = na.init(params, **kwargs)
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            na.step(params, [good, None], state)
    before = snapshot_state(state, params)
    with pytest.raises(exc, match=message) as info:
        if api == "class":
            opt.apply([good, make()], params)
        else:
            na.step(params, [good, make()], state)
    assert "gradient for variable 'variable_1'" in str(info.value)
    assert_unchanged(before, snapshot_state(state, params))


def test_sparse_gradient_for_a_scalar_variable_is_refused():
    w = np.zeros((), np.float64)
    opt = na.Adamax()
    with pytest.raises(ValueError, match="scalar"):
        opt.apply([na.IndexedSlices(np.ones(1), np.array([0]))], [w])
    assert not opt.built


def test_indexed_slices_repr_and_export():
    g = na.IndexedSlices(np.ones((2, 3), np.float32), np.array([0, 1]), (4, 3))
    assert "IndexedSlices" in na.__all__
    assert repr(g) == ("IndexedSlices(values=array(2, 3) float32, indices=array(2,) int64, "
                       "dense_shape=(4, 3))")


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_nonfinite_sparse_values_follow_the_policy_and_change_nothing(policy):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal((6, 3)).astype(np.float32),
              rng.standard_normal(4).astype(np.float32)]
    state = na.init(params, learning_rate=0.1, nonfinite=policy)
    na.step(params, [na.IndexedSlices(np.ones((1, 3), np.float32), np.array([2])),
                     np.ones(4, np.float32)], state)
    values = np.ones((2, 3), np.float32)
    values[0, 1] = np.inf
    before = snapshot_state(state, params)
    bad = [na.IndexedSlices(values, np.array([4, 4])), np.ones(4, np.float32)]
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="'variable_0'"):
            na.step(params, bad, state)
    else:
        na.step(params, bad, state)
        assert state.skipped_steps == 1
    assert_unchanged(before, snapshot_state(state, params), skipped=int(policy == "skip"))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_plan_gives_the_rows_and_sums_of_deduplicate(pattern):
    """``backends.cuda.plan`` (the host plan device deduplication follows) lists the rows of the
    deduplication kernel, and summing by it in order gives its bits."""
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
    from numba_adamax.backends.cuda import plan as device_plan
    from numba_adamax.kernels import cpu_sparse
    rng = np.random.default_rng(4)
    indices = make_indices(rng, pattern, 7)
    values = (rng.standard_normal((indices.size, 2))
              * 10.0 ** rng.integers(-6, 6, (indices.size, 1))).astype(np.float32)
    rows, summed = cpu_sparse.deduplicate(indices.astype(np.int64), values)
    plan = device_plan(indices)
    np.testing.assert_array_equal(plan.rows, rows)
    out = np.empty((rows.size, 2), np.float32)
    for s in range(rows.size):
        members = plan.members[plan.start[s]:plan.start[s + 1]]
        out[s] = values[members[0]]
        for q in members[1:]:
            out[s] = out[s] + values[q]
        assert np.all(indices[members] == rows[s]) and np.all(np.diff(members) > 0)
    np.testing.assert_array_equal(out, summed)
    assert plan.start[-1] == indices.size
