"""Property-based fuzzing of the public API (hypothesis).

Random hyperparameters (valid and invalid), random variables (zero-size and 0-d included, bad
dtypes included), random gradients (NaN, inf, huge and tiny magnitudes, ``None``, wrong dtype or
shape, lists) and all three ``nonfinite`` policies, through the class and the functional API.
The properties:

* the only exceptions are the documented ones: ``TypeError`` / ``ValueError`` for bad input,
  ``FloatingPointError`` for a NaN/inf gradient under ``nonfinite="raise"``;
* after any exception the variables, every slot and every counter are bit-identical, and a
  failed first call builds nothing;
* under ``"skip"`` a call with a NaN/inf gradient changes nothing but ``skipped_steps`` (+1);
* under ``"raise"`` a call raises exactly when a gradient holds NaN/inf.

Each test counts its cases and outcomes, prints them (``pytest -s`` shows them) and asserts
that every outcome was reached. ``NUMBA_ADAMAX_FUZZ_EXAMPLES`` sets the number of examples per
test (default 300).
"""
import math
import os
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numba_adamax as na
from conftest import assert_unchanged, bit_identical, slow, snapshot_state

EXAMPLES = int(os.environ.get("NUMBA_ADAMAX_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DOCUMENTED = (TypeError, ValueError, FloatingPointError)

NAN, INF = math.nan, math.inf


#: name -> (valid values, invalid values)
HYPERPARAMETERS = {
    "learning_rate": ([0.0, 1e-3, 0.05, 1.0, 1e30, 3], [-0.1, NAN, INF, "0.1", None, True]),
    "beta_1": ([0.0, 0.5, 0.9, 0.999999], [1.0, -0.1, NAN]),
    "beta_2": ([0.0, 0.9, 0.999], [1.0, 2, INF]),
    "epsilon": ([0.0, 1e-7, 1e-30, 1.0], [-1e-7, INF, "eps"]),
    "weight_decay": ([None, 0.0, 0.1, 1e10], [-0.1, NAN]),
    "clipnorm": ([None, 1e-30, 1.0, 1e30], [0.0, -1.0, NAN]),
    "clipvalue": ([None, 1e-30, 0.5, 1e30], [0, INF]),
    "global_clipnorm": ([None, 1e-30, 2.0, 1e30], [-2.0, "2"]),
    "use_ema": ([False, True], [1, "yes"]),
    "ema_momentum": ([0.0, 0.5, 0.99, 1.0], [1.5, -0.1]),
    "ema_overwrite_frequency": ([None, 1, 3], [0, 2.0]),
    "loss_scale_factor": ([None, 1e-30, 64.0, 1e30], [0.0, -8.0]),
    "gradient_accumulation_steps": ([None, 2, 3], [1, 2.5]),
    "nonfinite": (["propagate", "skip", "raise"], ["ignore", None, "SKIP"]),
}
_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")


@st.composite
def hyperparameters(draw):
    """Valid settings (at most one clipping argument), or, one time in four, settings with
    one invalid value or two clipping arguments."""
    keys = draw(st.lists(st.sampled_from(sorted(set(HYPERPARAMETERS) - set(_CLIPS))),
                         unique=True, max_size=6))
    keys += draw(st.lists(st.sampled_from(_CLIPS), unique=True, max_size=1))
    kwargs = {k: draw(st.sampled_from(HYPERPARAMETERS[k][0])) for k in keys}
    kwargs.setdefault("nonfinite", draw(st.sampled_from(HYPERPARAMETERS["nonfinite"][0])))
    if draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(HYPERPARAMETERS)))
            kwargs[key] = draw(st.sampled_from(HYPERPARAMETERS[key][1]))
        else:
            kwargs.update(clipnorm=1.0, clipvalue=0.5)
    return kwargs


SPECIALS = {
    "normal": None,
    "nan": NAN,
    "inf": INF,
    "-inf": -INF,
    "huge": 3e38,
    "huge64": 1e308,
    "tiny": 1e-45,
    "denormal64": 5e-324,
    "zero": 0.0,
}

GOOD_DTYPES = (np.float32, np.float64)
BAD_DTYPES = (np.float16, np.int32, np.complex64, np.bool_)


@st.composite
def variables(draw):
    count = draw(st.integers(1, 3))
    shapes = draw(st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple),
                           min_size=count, max_size=count))
    dtypes = [draw(st.one_of(st.sampled_from(GOOD_DTYPES), st.sampled_from(GOOD_DTYPES),
                             st.sampled_from(GOOD_DTYPES), st.sampled_from(BAD_DTYPES)))
              for _ in range(count)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [_array(rng, s, d, draw(st.sampled_from(sorted(SPECIALS)))) for s, d in zip(shapes, dtypes)]


def _array(rng, shape, dtype, special):
    with np.errstate(all="ignore"):
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)
        if special != "normal" and x.size:
            mask = rng.random(shape) < 0.3
            mask.reshape(-1)[rng.integers(x.size)] = True
            x = np.where(mask, SPECIALS[special] * rng.choice([-1.0, 1.0], size=shape), x)
        return np.ascontiguousarray(np.asarray(x).astype(dtype))


@st.composite
def calls(draw, params):
    """1 to 4 rows of gradients: mostly valid, sometimes None / wrong dtype / shape / a list."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        row = []
        for p in params:
            kind = draw(st.sampled_from(["good"] * 6 + ["none", "dtype", "shape", "list"]))
            special = draw(st.sampled_from(sorted(SPECIALS)))
            g = _array(rng, p.shape, p.dtype if p.dtype in GOOD_DTYPES else np.float32, special)
            if kind == "none":
                g = None
            elif kind == "dtype":
                with np.errstate(over="ignore"):
                    g = g.astype(np.float64 if p.dtype == np.float32 else np.float32)
            elif kind == "shape":
                g = np.ones(p.shape + (2,), g.dtype)
            elif kind == "list":
                g = g.tolist()
            row.append(g)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- snapshots

def _state_of(target):
    return target.state if isinstance(target, na.Adamax) else target


def _non_finite(row):
    return any(isinstance(g, np.ndarray) and g.dtype.kind == "f" and not np.isfinite(g).all()
               for g in row)


def _valid(row, params):
    return (any(g is not None for g in row)
            and all(p.dtype in GOOD_DTYPES for p in params)
            and all(g is None or (isinstance(g, np.ndarray) and g.dtype == p.dtype
                                  and g.shape == p.shape) for g, p in zip(row, params)))


# ------------------------------------------------------------------------------- the runs

def _one_call(outcomes, api, target, params, row, policy):
    was_built = api == "functional" or target.built
    before = snapshot_state(target, params)
    try:
        if api == "class":
            target.apply(row, params)
        else:
            na.step(params, row, target)
    except DOCUMENTED as exc:
        if isinstance(exc, FloatingPointError):
            assert policy == "raise" and _non_finite(row), exc
            outcomes["raised FloatingPointError"] += 1
        else:
            assert not _valid(row, params), exc
            outcomes[f"refused input ({type(exc).__name__})"] += 1
        if not was_built:
            assert not target.built
        assert_unchanged(before, snapshot_state(target, params))
        return
    assert _valid(row, params)
    if _non_finite(row):
        assert policy != "raise"
        if policy == "skip":
            outcomes["skipped"] += 1
            if was_built:
                assert_unchanged(before, snapshot_state(target, params), skipped=1)
            else:  # the skipped first call built zeroed slots and counted itself
                state = target.state
                assert all(bit_identical(p, before[f"param[{i}]"]) for i, p in enumerate(params))
                assert all(not a.any() for a in state.state_arrays())
                assert (state.raw_steps, state.skipped_steps) == (0, 1)
            return
        outcomes["propagated non-finite"] += 1
    else:
        outcomes["applied"] += 1
    assert _state_of(target).raw_steps == int(before.get("raw_steps", 0)) + 1


def _fuzz(outcomes, api, kwargs, params, rows):
    outcomes["cases"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # None gradients and deprecated keywords warn
        try:
            target = (na.Adamax(**kwargs) if api == "class"
                      else na.init(params, **kwargs))
        except DOCUMENTED as exc:
            assert not isinstance(exc, FloatingPointError)
            outcomes["refused construction"] += 1
            return
        policy = kwargs.get("nonfinite", "propagate")
        for row in rows:
            _one_call(outcomes, api, target, params, row, policy)


@slow
@pytest.mark.parametrize("api", ["class", "functional"])
def test_fuzz_public_api(api):
    outcomes = Counter()

    @FUZZ
    @given(kwargs=hyperparameters(), data=st.data())
    def run(kwargs, data):
        params = data.draw(variables())
        rows = data.draw(calls(params))
        _fuzz(outcomes, api, kwargs, params, rows)

    run()
    print(f"\nfuzz ({api}): {dict(sorted(outcomes.items()))}")
    assert outcomes["cases"] >= EXAMPLES * 0.9
    for outcome in ("refused construction", "applied", "skipped", "raised FloatingPointError",
                    "propagated non-finite", "refused input (TypeError)",
                    "refused input (ValueError)"):
        assert outcomes[outcome] > 0, (outcome, outcomes)
