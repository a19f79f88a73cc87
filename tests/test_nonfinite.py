"""The ``nonfinite`` policy: ``"skip"`` and ``"raise"`` make a call with a NaN/inf gradient a
no-op (counted, or raised), ``"propagate"`` is Keras' behaviour; and the ``all_finite`` kernel
agrees with NumPy on both loops."""
import json
import warnings

import numpy as np
import pytest

import numba_adamax as na
from numba_adamax.kernels import config, cpu
from checkpoint_helpers import CALLS, Run
from configs import CONFIG_NAMES
from conftest import assert_unchanged

BAD_CALL = 3


def _with_bad_call(name, api, policy, value):
    """A run of ``name`` with an extra call (a ``value`` in one gradient) inserted before call
    ``BAD_CALL``; returns the run and the number of FloatingPointErrors seen."""
    run = Run(name, api)
    if api == "class":
        run.opt.nonfinite = policy
    else:
        run.state.hyperparameters.nonfinite = policy
    run.run(0, BAD_CALL)
    bad = [None if g is None else g.copy() for g in run.rows[BAD_CALL]]
    bad[2].reshape(-1)[5] = value
    raised = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            if api == "class":
                run.opt.apply(bad, run.params)
            else:
                na.step(run.params, bad, run.state)
        except FloatingPointError as exc:
            assert "'w_c'" in str(exc) and "nothing was changed" in str(exc)
            raised += 1
    run.run(BAD_CALL, CALLS)
    return run, raised


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("api", ["class", "functional"])
@pytest.mark.parametrize("policy, value", [("skip", np.nan), ("raise", -np.inf)])
def test_a_refused_call_leaves_the_trajectory_of_every_configuration_unchanged(name, api, policy,
                                                                                value):
    run, raised = _with_bad_call(name, api, policy, value)
    want = Run(name, api).run(0, CALLS)
    got_snapshot, want_snapshot = run.snapshot(), want.snapshot()
    skipped = 1 if policy == "skip" else 0
    assert int(got_snapshot.pop("skipped_steps")) == skipped
    want_snapshot.pop("skipped_steps")
    assert raised == 1 - skipped
    assert_unchanged(want_snapshot, got_snapshot, name)


def test_propagate_is_keras_behaviour():
    run, raised = _with_bad_call("defaults", "class", "propagate", np.nan)
    assert raised == 0 and run.opt.skipped_steps == 0
    assert np.isnan(run.opt.get_slot("w_c", "u").reshape(-1)[5])


@pytest.mark.parametrize("api", ["class", "functional"])
def test_first_call_skipped_or_raised(api):
    params = [np.ones(3, np.float32)]
    bad = [np.array([0, np.inf, 0], np.float32)]
    for policy in ("skip", "raise"):
        if api == "class":
            opt = na.Adamax(nonfinite=policy)
            call, state = (lambda: opt.apply(bad, params)), (lambda: opt.state)
        else:
            s = na.init(params, nonfinite=policy)
            call, state = (lambda: na.step(params, bad, s)), (lambda: s)
        if policy == "raise":
            with pytest.raises(FloatingPointError, match="variable_0"):
                call()
            assert api == "functional" or not opt.built
        else:
            call()
            assert (state().raw_steps, state().skipped_steps) == (0, 1)
            assert not any(a.any() for a in state().state_arrays())
        assert (params[0] == 1).all()


def test_skip_under_accumulation_keeps_the_accumulators():
    params = [np.zeros(4)]
    opt = na.Adamax(gradient_accumulation_steps=2, nonfinite="skip")
    opt.apply([np.ones(4)], params)
    opt.apply([np.full(4, np.nan)], params)
    assert opt.state.raw_steps == 1 and opt.skipped_steps == 1
    np.testing.assert_array_equal(opt.get_slot(params[0], "accumulator"), np.ones(4))


def test_nonfinite_in_config_only_when_not_the_default():
    assert "nonfinite" not in na.Adamax().get_config()
    assert "nonfinite" not in na.Adamax(nonfinite="propagate").get_config()
    for policy in ("skip", "raise"):
        config = na.Adamax(nonfinite=policy).get_config()
        assert list(config)[-1] == "nonfinite" and config["nonfinite"] == policy
        assert na.Adamax.from_config(json.loads(json.dumps(config))).nonfinite == policy


def test_nonfinite_is_settable_after_build():
    params = [np.ones(2)]
    opt = na.Adamax()
    opt.apply([np.ones(2)], params)
    opt.nonfinite = "raise"
    with pytest.raises(FloatingPointError):
        opt.apply([np.array([np.nan, 0])], params)
    assert opt.iterations == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_all_finite_kernel_matches_numpy(dtype, parallel):
    chunk = config.CHUNK

    def all_finite(g):
        group = na.init([np.zeros(g.size, dtype)]).groups[0]
        refs = np.array([g.__array_interface__["data"][0]], np.int64)
        flags = np.zeros(1, np.uint8)
        kernel = cpu.nonfinite_flags_parallel if parallel else cpu.nonfinite_flags
        ok = kernel(group.chunks, group.table, refs, -1, group.m, flags)
        assert bool(flags[0]) is not ok
        return ok

    for size in (0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 7):
        g = np.linspace(-1, 1, size).astype(dtype)
        assert all_finite(g) is True
        for position in {0, size // 2, chunk - 1, chunk, size - 1} - {-1}:
            if not 0 <= position < size:
                continue
            for value in (np.nan, np.inf, -np.inf):
                bad = g.copy()
                bad[position] = value
                assert all_finite(bad) is False, (size, position, value)
        huge = np.full(size, np.finfo(dtype).max, dtype)
        assert all_finite(huge) is True
        tiny = np.full(size, np.finfo(dtype).smallest_subnormal, dtype)
        assert all_finite(tiny) is True
