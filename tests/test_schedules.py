"""Tests of ``numba_adamax.schedules`` against independent float64 formulas and Keras values.

The formulas are those of tests/schedule_formulas.py, written from Keras' documented formulas in a
different style from the implementation.
"""

import inspect
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numba_adamax import schedules
from numba_adamax.schedules import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
    PolynomialDecay,
    deserialize,
    serialize,
)
from conformance import load_keras_json
from schedule_formulas import FormulaSchedule, cosine_decay, cosine_decay_restarts

STEPS = range(51)
REL = 1e-12
ABS = 1e-15


# (schedule class, constructor kwargs); the reference is FormulaSchedule(class name, kwargs)
CASES = [
    (ExponentialDecay, dict(initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5)),
    (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.9,
                            staircase=True)),
    (ExponentialDecay, dict(initial_learning_rate=2.0, decay_steps=2.5, decay_rate=1.1)),
    (PiecewiseConstantDecay, dict(boundaries=[3, 7], values=[0.05, 0.02, 0.01])),
    (PiecewiseConstantDecay, dict(boundaries=[0, 10.5, 20, 49],
                                  values=[1.0, 0.5, 0.25, 0.125, 0.0])),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=20)),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=12, end_learning_rate=0.01,
                           power=2.0)),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=8, end_learning_rate=0.02,
                           power=0.5, cycle=True)),
    (InverseTimeDecay, dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.5)),
    (InverseTimeDecay, dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=2.0,
                            staircase=True)),
    (CosineDecay, dict(initial_learning_rate=0.05, decay_steps=8, alpha=0.1)),
    (CosineDecay, dict(initial_learning_rate=0.2, decay_steps=30)),
    (CosineDecay, dict(initial_learning_rate=0.0, decay_steps=20, alpha=0.05,
                       warmup_target=0.1, warmup_steps=10)),
    (CosineDecay, dict(initial_learning_rate=0.01, decay_steps=15, warmup_target=0.1,
                       warmup_steps=7)),
    (CosineDecay, dict(initial_learning_rate=0.01, decay_steps=15, warmup_target=0.1)),
    (CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=3)),
    (CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=3, t_mul=2.0, m_mul=0.5,
                               alpha=0.1)),
    (CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=4, t_mul=1.0, m_mul=0.8,
                               alpha=0.2)),
    (CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=4, t_mul=1.5, m_mul=0.9,
                               alpha=0.05)),
]


def _case_id(case):
    cls, kwargs = case[0], case[1]
    return cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


def _schedule_samples():
    return [cls(**kwargs) for cls, kwargs in CASES]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_over_steps(case):
    cls, kwargs = case
    schedule = cls(**kwargs)
    reference = FormulaSchedule(cls.__name__, kwargs)
    for s in STEPS:
        got = schedule(s)
        assert type(got) is float
        assert got == pytest.approx(reference(s), rel=REL, abs=ABS), s


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_step_types(case):
    """Python and NumPy integers and floats, and 0-d arrays, all give the same value."""
    schedule = case[0](**case[1])
    for s in (0, 5, 17):
        expected = schedule(s)
        for step in (float(s), np.int32(s), np.int64(s), np.uint8(s), np.float32(s),
                     np.float64(s), np.array(s), np.array(s, dtype=np.float32)):
            value = schedule(step)
            assert type(value) is float
            assert value == expected


def test_float_steps_between_integers():
    schedule = ExponentialDecay(1.0, 4, 0.5, staircase=True)
    assert schedule(3.999) == 1.0
    assert schedule(4.0) == 0.5
    assert CosineDecay(1.0, 10)(2.5) == pytest.approx(cosine_decay(2.5, 1.0, 10), rel=REL)


# ------------------------------------------------------------------------------------------
# Exact values at chosen points
# ------------------------------------------------------------------------------------------

def test_piecewise_boundaries_are_inclusive_on_the_right():
    schedule = PiecewiseConstantDecay([3, 7], [0.05, 0.02, 0.01])
    assert [schedule(s) for s in (0, 3, 3.5, 4, 7, 7.001, 8, 1000)] == [
        0.05, 0.05, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01]
    # A float boundary: integer steps on either side.
    schedule = PiecewiseConstantDecay([2.5], [1.0, 2.0])
    assert (schedule(2), schedule(2.5), schedule(3)) == (1.0, 1.0, 2.0)
    # A boundary at 0: step 0 is still in the first piece.
    schedule = PiecewiseConstantDecay([0, 1], [3.0, 2.0, 1.0])
    assert (schedule(0), schedule(0.5), schedule(1), schedule(2)) == (3.0, 2.0, 2.0, 1.0)
    # Integer values come back as floats.
    assert PiecewiseConstantDecay([1], [2, 1])(0) == 2.0
    assert type(PiecewiseConstantDecay([1], [2, 1])(0)) is float


def test_exponential_exact_points():
    assert ExponentialDecay(0.1, 10, 0.5)(0) == 0.1
    assert ExponentialDecay(0.1, 10, 0.5)(20) == 0.1 * 0.25
    assert ExponentialDecay(0.1, 10, 0.5, staircase=True)(19) == 0.05
    assert ExponentialDecay(0.1, 10, 0.0)(0) == 0.1  # 0 ** 0 == 1


def test_polynomial_exact_points():
    schedule = PolynomialDecay(0.1, 10, end_learning_rate=0.0)
    assert schedule(0) == 0.1
    assert schedule(5) == pytest.approx(0.05, rel=REL)
    assert schedule(10) == 0.0
    assert schedule(11) == 0.0  # clamped
    cyclic = PolynomialDecay(0.1, 10, end_learning_rate=0.0, cycle=True)
    assert cyclic(0) == 0.1  # multiplier 1 at step 0
    assert cyclic(10) == 0.0  # end of the first cycle: D stays 10
    assert cyclic(11) == pytest.approx(0.1 * (1 - 11 / 20), rel=REL)  # D becomes 20
    assert cyclic(20) == 0.0
    assert cyclic(21) == pytest.approx(0.1 * (1 - 21 / 30), rel=REL)


def test_inverse_time_exact_points():
    assert InverseTimeDecay(0.1, 10, 1.0)(0) == 0.1
    assert InverseTimeDecay(0.1, 10, 1.0)(10) == 0.05
    assert InverseTimeDecay(0.1, 10, 1.0, staircase=True)(19) == 0.05


def test_cosine_exact_points():
    schedule = CosineDecay(1.0, 10, alpha=0.2)
    assert schedule(0) == 1.0
    assert schedule(5) == pytest.approx(0.6, rel=REL)
    assert schedule(10) == pytest.approx(0.2, rel=REL)
    assert schedule(1000) == schedule(10)


def test_cosine_warmup_exact_points():
    schedule = CosineDecay(0.01, 10, alpha=0.1, warmup_target=0.1, warmup_steps=4)
    assert schedule(0) == 0.01  # the "+ init" of the warmup: starts at init, not 0
    assert schedule(2) == pytest.approx(0.055, rel=REL)
    assert schedule(4) == pytest.approx(0.1, rel=REL)  # end of warmup: cosine starts at target
    assert schedule(9) == pytest.approx(0.1 * 0.55, rel=REL)
    assert schedule(14) == pytest.approx(0.01, rel=REL)  # alpha is a fraction of the target
    assert schedule(10_000) == schedule(14)
    # warmup_steps=0 with a target: no warmup, the cosine starts from the target.
    assert CosineDecay(0.5, 10, warmup_target=0.1)(0) == pytest.approx(0.1, rel=REL)


def test_restarts_exact_points():
    schedule = CosineDecayRestarts(1.0, 3, t_mul=2.0, m_mul=0.5)
    assert schedule(0) == 1.0
    assert schedule(3) == pytest.approx(0.5, rel=REL)  # first restart
    assert schedule(6) == pytest.approx(0.25, rel=REL)  # middle of the 6-step second period
    assert schedule(9) == pytest.approx(0.25, rel=REL)  # second restart (3 + 6)
    assert schedule(21) == pytest.approx(0.125, rel=REL)  # third restart (3 + 6 + 12)


def test_restarts_alpha_is_not_scaled_by_m_mul():
    schedule = CosineDecayRestarts(1.0, 4, t_mul=1.0, m_mul=0.5, alpha=0.2)
    # Step 6: second period (i = 1), half-way through it (cos(pi/2) = 0).
    assert schedule(6) == pytest.approx(0.8 * 0.5 * 0.5 + 0.2, rel=REL)
    assert schedule(6) != pytest.approx(0.5 * (0.8 * 0.5 + 0.2), rel=REL)


def test_restarts_shrinking_periods():
    """t_mul < 1: periods 3, 1.5, 0.75, ... (total 6); past the horizon the value is nan (Keras)."""
    schedule = CosineDecayRestarts(1.0, 3, t_mul=0.5, m_mul=0.9, alpha=0.1)
    for s in (0, 1, 2, 3, 4, 4.5, 5, 5.5):
        assert schedule(s) == pytest.approx(
            cosine_decay_restarts(s, 1.0, 3, t_mul=0.5, m_mul=0.9, alpha=0.1), rel=1e-9)
    assert all(math.isnan(schedule(s)) for s in (6, 7, 50))


def test_step_zero_everywhere():
    for schedule in _schedule_samples():
        assert math.isfinite(schedule(0))


def test_ieee_results_instead_of_exceptions():
    """Where Keras computes inf or nan, so do we, instead of raising a Python exception."""
    assert ExponentialDecay(1.0, 1, 10.0)(400) == math.inf
    assert math.isnan(ExponentialDecay(1.0, 1, -0.5)(0.5))
    assert InverseTimeDecay(1.0, 1, -1.0)(1) == math.inf
    assert PolynomialDecay(1.0, 10, end_learning_rate=0.0, power=-1.0)(10) == math.inf
    assert math.isnan(CosineDecayRestarts(1.0, 1e-320)(1))


# ------------------------------------------------------------------------------------------
# Values recorded from Keras 3.15.1 (float32 run; step s = index)
# ------------------------------------------------------------------------------------------

KERAS_RECORDED = [
    (ExponentialDecay(0.05, 3, 0.5), [
        0.05000000074505806, 0.039685025811195374, 0.031498026102781296, 0.02500000037252903,
        0.019842512905597687, 0.015749013051390648, 0.012500000186264515, 0.009921257384121418,
        0.007874506525695324, 0.0062500000931322575, 0.004960628692060709, 0.003937253262847662]),
    (PiecewiseConstantDecay([3, 7], [0.05, 0.02, 0.01]), [
        0.05000000074505806, 0.05000000074505806, 0.05000000074505806, 0.05000000074505806,
        0.019999999552965164, 0.019999999552965164, 0.019999999552965164, 0.019999999552965164,
        0.009999999776482582, 0.009999999776482582, 0.009999999776482582, 0.009999999776482582]),
    (CosineDecay(0.05, 8, alpha=0.1), [
        0.05000000074505806, 0.0482872910797596, 0.04340990632772446, 0.03611037880182266,
        0.02749999798834324, 0.018889620900154114, 0.011590098030865192, 0.006712708622217178,
        0.005000000353902578, 0.005000000353902578, 0.005000000353902578, 0.005000000353902578]),
]


@pytest.mark.parametrize("schedule, recorded", KERAS_RECORDED, ids=lambda x: type(x).__name__)
def test_matches_keras_recorded_values(schedule, recorded):
    for s, value in enumerate(recorded):
        assert schedule(s) == pytest.approx(value, rel=1e-6), s


def test_keras_exponential_closed_form():
    schedule = ExponentialDecay(0.05, 3, 0.5)
    assert [schedule(s) for s in range(12)] == pytest.approx(
        [0.05 * 0.5 ** (s / 3) for s in range(12)], rel=REL)


# The `learning_rate` entries of the optimizer `get_config()` recorded from Keras.
KERAS_SERIALIZED = [
    (ExponentialDecay(0.05, 3, 0.5), {
        "module": "keras.optimizers.schedules", "class_name": "ExponentialDecay",
        "config": {"initial_learning_rate": 0.05, "decay_steps": 3, "decay_rate": 0.5,
                   "staircase": False, "name": "ExponentialDecay"},
        "registered_name": None}),
    (PiecewiseConstantDecay([3, 7], [0.05, 0.02, 0.01]), {
        "module": "keras.optimizers.schedules", "class_name": "PiecewiseConstantDecay",
        "config": {"boundaries": [3, 7], "values": [0.05, 0.02, 0.01], "name": "PiecewiseConstant"},
        "registered_name": None}),
    (CosineDecay(0.05, 8, alpha=0.1), {
        "module": "keras.optimizers.schedules", "class_name": "CosineDecay",
        "config": {"initial_learning_rate": 0.05, "decay_steps": 8, "alpha": 0.1,
                   "name": "CosineDecay", "warmup_target": None, "warmup_steps": 0},
        "registered_name": None}),
]


@pytest.mark.parametrize("schedule, expected", KERAS_SERIALIZED, ids=lambda x: type(x).__name__)
def test_serialize_matches_keras(schedule, expected):
    serialized = serialize(schedule)
    assert serialized == expected
    assert list(serialized["config"]) == list(expected["config"])  # same key order
    assert deserialize(expected) == schedule


# ------------------------------------------------------------------------------------------
# Signatures, defaults and get_config
# ------------------------------------------------------------------------------------------

REQUIRED = inspect.Parameter.empty

SIGNATURES = {
    ExponentialDecay: [("initial_learning_rate", REQUIRED), ("decay_steps", REQUIRED),
                       ("decay_rate", REQUIRED),
                       ("staircase", False), ("name", "ExponentialDecay")],
    PiecewiseConstantDecay: [("boundaries", REQUIRED), ("values", REQUIRED),
                             ("name", "PiecewiseConstant")],
    PolynomialDecay: [("initial_learning_rate", REQUIRED), ("decay_steps", REQUIRED),
                      ("end_learning_rate", 0.0001), ("power", 1.0), ("cycle", False),
                      ("name", "PolynomialDecay")],
    InverseTimeDecay: [("initial_learning_rate", REQUIRED), ("decay_steps", REQUIRED),
                       ("decay_rate", REQUIRED),
                       ("staircase", False), ("name", "InverseTimeDecay")],
    CosineDecay: [("initial_learning_rate", REQUIRED), ("decay_steps", REQUIRED), ("alpha", 0.0),
                  ("name", "CosineDecay"), ("warmup_target", None), ("warmup_steps", 0)],
    CosineDecayRestarts: [("initial_learning_rate", REQUIRED), ("first_decay_steps", REQUIRED),
                          ("t_mul", 2.0), ("m_mul", 1.0), ("alpha", 0.0), ("name", "SGDRDecay")],
}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda c: c.__name__)
def test_signature_and_default_config(cls):
    parameters = list(inspect.signature(cls).parameters.values())
    expected = SIGNATURES[cls]
    assert [p.name for p in parameters] == [name for name, _ in expected]
    assert [p.default for p in parameters] == [default for _, default in expected]

    required = {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5,
                "boundaries": [5], "values": [0.1, 0.01], "first_decay_steps": 10}
    schedule = cls(**{name: required[name] for name, default in expected if default is REQUIRED})
    # get_config holds exactly the constructor arguments, with the defaults filled in.
    assert schedule.get_config() == {
        name: required[name] if default is REQUIRED else default for name, default in expected}


def test_cosine_config_key_order_and_restarts_keys():
    assert list(CosineDecay(0.1, 5).get_config()) == [
        "initial_learning_rate", "decay_steps", "alpha", "name", "warmup_target", "warmup_steps"]
    assert list(CosineDecayRestarts(0.1, 5).get_config()) == [
        "initial_learning_rate", "first_decay_steps", "t_mul", "m_mul", "alpha", "name"]


def test_config_is_a_copy():
    schedule = PiecewiseConstantDecay((3, 7), (0.05, 0.02, 0.01))
    config = schedule.get_config()
    assert config["boundaries"] == [3, 7]  # tuples are stored as lists
    config["boundaries"].append(9)
    assert schedule.get_config()["boundaries"] == [3, 7]


def test_numpy_arguments_give_json_config():
    schedule = ExponentialDecay(np.float32(0.5), np.int64(3), np.float64(0.25),
                                staircase=np.bool_(True))
    config = schedule.get_config()
    assert type(config["initial_learning_rate"]) is float
    assert type(config["decay_steps"]) is int
    assert type(config["staircase"]) is bool
    json.dumps(config)
    piecewise = PiecewiseConstantDecay(np.array([3, 7]), np.array([0.05, 0.02, 0.01]))
    assert piecewise.get_config()["boundaries"] == [3, 7]
    json.dumps(piecewise.get_config())


# ------------------------------------------------------------------------------------------
# Equality, repr and round trips
# ------------------------------------------------------------------------------------------

def test_equality():
    assert ExponentialDecay(0.1, 3, 0.5) == ExponentialDecay(0.1, 3, 0.5)
    assert ExponentialDecay(0.1, 3, 0.5) == ExponentialDecay(0.1, 3.0, 0.5)
    assert ExponentialDecay(0.1, 3, 0.5) != ExponentialDecay(0.1, 3, 0.5, staircase=True)
    assert ExponentialDecay(0.1, 3, 0.5) != ExponentialDecay(0.1, 3, 0.5, name="other")
    assert ExponentialDecay(0.1, 3, 0.5) != InverseTimeDecay(0.1, 3, 0.5, name="ExponentialDecay")
    assert ExponentialDecay(0.1, 3, 0.5) != 0.1
    with pytest.raises(TypeError):
        hash(ExponentialDecay(0.1, 3, 0.5))


@pytest.mark.parametrize("schedule", _schedule_samples(), ids=repr)
def test_repr_evaluates_back(schedule):
    namespace = {cls.__name__: cls for cls in SIGNATURES}
    assert repr(schedule).startswith(type(schedule).__name__ + "(")
    assert eval(repr(schedule), namespace) == schedule


@pytest.mark.parametrize("schedule", _schedule_samples(), ids=repr)
def test_config_json_round_trip(schedule):
    config = json.loads(json.dumps(schedule.get_config()))
    rebuilt = type(schedule).from_config(config)
    assert rebuilt == schedule
    assert [rebuilt(s) for s in STEPS] == [schedule(s) for s in STEPS]


@pytest.mark.parametrize("schedule", _schedule_samples(), ids=repr)
def test_serialize_json_round_trip(schedule):
    serialized = json.loads(json.dumps(serialize(schedule)))
    assert serialized["module"] == "keras.optimizers.schedules"
    assert serialized["class_name"] == type(schedule).__name__
    assert serialized["registered_name"] is None
    rebuilt = deserialize(serialized)
    assert type(rebuilt) is type(schedule)
    assert rebuilt == schedule
    assert [rebuilt(s) for s in STEPS] == [schedule(s) for s in STEPS]


class HalvingSchedule(LearningRateSchedule):
    """A user schedule: halves every `period` steps."""

    def __init__(self, start, period):
        self.start = start
        self.period = period

    def __call__(self, step):
        return self.start * 0.5 ** (step // self.period)

    def get_config(self):
        return {"start": self.start, "period": self.period}


def test_custom_schedule_round_trip():
    schedule = HalvingSchedule(0.4, 5)
    serialized = json.loads(json.dumps(serialize(schedule)))
    assert serialized["class_name"] == "HalvingSchedule"
    assert serialized["registered_name"] == "HalvingSchedule"
    rebuilt = deserialize(serialized, custom_objects={"HalvingSchedule": HalvingSchedule})
    assert rebuilt == schedule
    assert rebuilt(10) == 0.1
    with pytest.raises(ValueError, match="Unknown learning rate schedule"):
        deserialize(serialized)
    with pytest.raises(ValueError, match="Unknown learning rate schedule"):
        deserialize(serialized, custom_objects=None)


def test_custom_objects_override_builtins():
    class ExponentialDecay(HalvingSchedule):
        pass

    serialized = {"class_name": "ExponentialDecay", "config": {"start": 1.0, "period": 2}}
    rebuilt = deserialize(serialized, custom_objects={"ExponentialDecay": ExponentialDecay})
    assert type(rebuilt) is ExponentialDecay


def test_base_class_is_abstract():
    base = LearningRateSchedule()
    with pytest.raises(NotImplementedError):
        base(0)
    with pytest.raises(NotImplementedError):
        base.get_config()
    assert "LearningRateSchedule object" in repr(base)
    assert base == base and base != LearningRateSchedule()


@pytest.mark.parametrize("config, exception, message", [
    ({"class_name": "StepDecay", "config": {}}, ValueError, r"Unknown .* class_name='StepDecay'"),
    ({"class_name": "LearningRateSchedule", "config": {}}, ValueError, "Unknown learning rate"),
    ({"class_name": "exponentialdecay", "config": {}}, ValueError, "Unknown learning rate"),
    ({"config": {}}, ValueError, "class_name"),
    ({"class_name": "ExponentialDecay"}, ValueError, "config"),
    ({"class_name": "ExponentialDecay", "config": [0.1, 3, 0.5]}, TypeError, "must be a dict"),
    ("ExponentialDecay", TypeError, "expects a dict"),
])
def test_deserialize_errors(config, exception, message):
    with pytest.raises(exception, match=message):
        deserialize(config)


def test_deserialize_rejects_non_schedule_custom_object():
    with pytest.raises(TypeError, match="subclass of LearningRateSchedule"):
        deserialize({"class_name": "Foo", "config": {}}, custom_objects={"Foo": dict})
    with pytest.raises(TypeError, match="custom_objects"):
        deserialize({"class_name": "ExponentialDecay", "config": {}}, custom_objects=[1])


def test_serialize_rejects_non_schedule():
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        serialize(lambda step: 0.1)


# ------------------------------------------------------------------------------------------
# Schedules of another library (Keras') given to the optimizer
# ------------------------------------------------------------------------------------------

class KerasStyleExponentialDecay:
    """Shaped like a Keras schedule object: ``__call__(step)``, ``get_config()``, and the dict
    ``keras.optimizers.schedules.serialize`` makes of it (as recorded from Keras 3)."""

    def __init__(self, serialized):
        self.serialized = serialized

    def __call__(self, step):
        return FormulaSchedule("ExponentialDecay", self.get_config())(step)

    def get_config(self):
        config = dict(self.serialized["config"])
        config.pop("name")
        return config


def _recorded_keras_schedule():
    for entry in load_keras_json()["configs"].values():
        lr = entry["optimizer_get_config"]["learning_rate"]
        if isinstance(lr, dict) and lr["class_name"] == "ExponentialDecay":
            return lr
    raise AssertionError("no recorded ExponentialDecay")  # pragma: no cover


CONVERSION = re.escape("numba_adamax.schedules.deserialize(keras.optimizers.schedules."
                       "serialize(schedule))")


def test_a_foreign_schedule_is_refused_at_construction_with_the_conversion():
    """Only this library's schedules are called with the step; another object shaped like a
    schedule is refused where it is given, not at the first step, with the conversion that
    makes it one of ours (Keras' serialized form is what ``deserialize`` reads)."""
    import numba_adamax as na

    serialized = _recorded_keras_schedule()
    foreign = KerasStyleExponentialDecay(serialized)
    with pytest.raises(ValueError, match=r"schedule of another library .*" + CONVERSION):
        na.Adamax(learning_rate=foreign)
    with pytest.raises(ValueError, match=CONVERSION):
        na.init([np.zeros(3)], learning_rate=foreign)
    opt = na.Adamax(learning_rate=0.1)
    with pytest.raises(ValueError, match=CONVERSION):
        opt.learning_rate = foreign
    assert opt.learning_rate == 0.1
    converted = deserialize(serialized)  # serialize(foreign) in Keras gives `serialized`
    opt = na.Adamax(learning_rate=converted)
    assert opt.get_config()["learning_rate"] == serialized
    w = np.zeros(3)
    for step in range(5):
        assert opt.learning_rate == pytest.approx(foreign(step), rel=REL, abs=ABS)
        opt.apply([np.ones(3)], [w])


def test_real_keras_schedules_are_refused_and_convert():
    keras = pytest.importorskip("keras", reason="Keras is not installed")
    import numba_adamax as na

    keras_schedules = keras.optimizers.schedules
    for cls, kwargs in CASES:
        theirs = getattr(keras_schedules, cls.__name__)(**kwargs)
        with pytest.raises(ValueError, match=CONVERSION):
            na.Adamax(learning_rate=theirs)
        ours = deserialize(keras_schedules.serialize(theirs))
        assert type(ours) is cls and ours.get_config() == theirs.get_config()
        na.Adamax(learning_rate=ours)
        for step in range(0, 51, 5):
            assert ours(step) == pytest.approx(float(theirs(step)), rel=1e-6, abs=1e-9)


def test_all():
    assert sorted(schedules.__all__) == sorted([
        "LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
        "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize"])
    for name in schedules.__all__:
        assert hasattr(schedules, name)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------

def _exact(message):
    return "^" + re.escape(message) + "$"


def not_real(name):
    return ValueError, rf"^Argument `{re.escape(name)}` must be a finite real number\. Received: "


def not_finite(name):
    return not_real(name)


def not_positive(name, shown):
    return ValueError, _exact(f"Argument `{name}` must be > 0. Received: {name}={shown}")


LENGTH_MISMATCH = (
    r"^The length of boundaries should be 1 less than the length of values\. Received: ")

EXP = dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5)
PW = dict(boundaries=[3, 7], values=[0.05, 0.02, 0.01])
POLY = dict(initial_learning_rate=0.1, decay_steps=10)
INV = dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5)
COS = dict(initial_learning_rate=0.1, decay_steps=10)
SGDR = dict(initial_learning_rate=0.1, first_decay_steps=10)

# (schedule class, constructor kwargs, exception type, message regex)
VALIDATION = [
    # Keras' own messages.
    (ExponentialDecay, dict(EXP, decay_steps=0), *not_positive("decay_steps", "0")),
    (ExponentialDecay, dict(EXP, decay_steps=-1.5), *not_positive("decay_steps", "-1.5")),
    (PolynomialDecay, dict(POLY, decay_steps=0), *not_positive("decay_steps", "0")),
    (InverseTimeDecay, dict(INV, decay_steps=-3), *not_positive("decay_steps", "-3")),
    (CosineDecay, dict(COS, decay_steps=0), *not_positive("decay_steps", "0")),
    (CosineDecayRestarts, dict(SGDR, first_decay_steps=0),
     *not_positive("first_decay_steps", "0")),
    (CosineDecayRestarts, dict(SGDR, first_decay_steps=-2.5),
     *not_positive("first_decay_steps", "-2.5")),
    (PiecewiseConstantDecay, dict(boundaries=[3, 7], values=[0.05, 0.02]), ValueError,
     LENGTH_MISMATCH
     + r"boundaries=\[3, 7\] of length 2, and values=\[0\.05, 0\.02\] of length 2\.$"),
    (PiecewiseConstantDecay, dict(boundaries=[3], values=[1.0, 2.0, 3.0]), ValueError,
     LENGTH_MISMATCH),
    (PiecewiseConstantDecay, dict(boundaries=[], values=[]), ValueError, LENGTH_MISMATCH),
    # Types: bool and str are not numbers; a bad setting is a ValueError, as for the optimizer.
    (ExponentialDecay, dict(EXP, initial_learning_rate="0.1"), ValueError,
     r"`initial_learning_rate` must be a finite real number.*='0\.1'$"),
    (ExponentialDecay, dict(EXP, initial_learning_rate=True), ValueError,
     r"`initial_learning_rate`.*=True$"),
    (ExponentialDecay, dict(EXP, decay_steps="10"), *not_real("decay_steps")),
    (ExponentialDecay, dict(EXP, decay_rate=None), *not_real("decay_rate")),
    (ExponentialDecay, dict(EXP, decay_rate=1 + 2j), *not_real("decay_rate")),
    (ExponentialDecay, dict(EXP, staircase="yes"), ValueError, r"`staircase` must be a bool"),
    (ExponentialDecay, dict(EXP, staircase=1), ValueError, r"`staircase` must be a bool"),
    (ExponentialDecay, dict(EXP, name=3), ValueError, r"`name` must be a non-empty str.*name=3"),
    (PiecewiseConstantDecay, dict(PW, boundaries="37"), TypeError, r"`boundaries` must be a list"),
    (PiecewiseConstantDecay, dict(PW, values=None), TypeError, r"`values` must be a list"),
    (PiecewiseConstantDecay, dict(PW, values=["a", 0.02, 0.01]), ValueError,
     r"`values\[0\]` must be a finite real number.*values\[0\]='a'"),
    (PiecewiseConstantDecay, dict(PW, boundaries=[3, False]), *not_real("boundaries[1]")),
    (PiecewiseConstantDecay, dict(PW, name=None), ValueError, r"`name` must be a non-empty str"),
    (PolynomialDecay, dict(POLY, power="2"), *not_real("power")),
    (PolynomialDecay, dict(POLY, end_learning_rate=False), *not_real("end_learning_rate")),
    (PolynomialDecay, dict(POLY, cycle=None), ValueError, r"`cycle` must be a bool"),
    (InverseTimeDecay, dict(INV, decay_rate="0.5"), *not_real("decay_rate")),
    (InverseTimeDecay, dict(INV, staircase=0), ValueError, r"`staircase` must be a bool"),
    (CosineDecay, dict(COS, alpha=True), *not_real("alpha")),
    (CosineDecay, dict(COS, warmup_target="0.2"), *not_real("warmup_target")),
    (CosineDecay, dict(COS, warmup_steps=None), *not_real("warmup_steps")),
    (CosineDecay, dict(COS, name=b"x"), ValueError, r"`name` must be a non-empty str"),
    (CosineDecayRestarts, dict(SGDR, t_mul="2"), *not_real("t_mul")),
    (CosineDecayRestarts, dict(SGDR, m_mul=None), *not_real("m_mul")),
    (CosineDecayRestarts, dict(SGDR, alpha="0"), *not_real("alpha")),
    (CosineDecayRestarts, dict(SGDR, first_decay_steps=True), *not_real("first_decay_steps")),
    # Finite values only.
    (ExponentialDecay, dict(EXP, initial_learning_rate=math.inf), ValueError,
     _exact("Argument `initial_learning_rate` must be a finite real number. "
            "Received: initial_learning_rate=inf")),
    (ExponentialDecay, dict(EXP, decay_steps=math.nan), *not_finite("decay_steps")),
    (ExponentialDecay, dict(EXP, decay_steps=math.inf), *not_finite("decay_steps")),
    (ExponentialDecay, dict(EXP, decay_steps=10 ** 400), *not_finite("decay_steps")),
    (ExponentialDecay, dict(EXP, decay_rate=np.float64("nan")), *not_finite("decay_rate")),
    (PiecewiseConstantDecay, dict(PW, boundaries=[3, math.nan]), *not_finite("boundaries[1]")),
    (PiecewiseConstantDecay, dict(PW, values=[0.05, -math.inf, 0.01]),
     *not_finite("values[1]")),
    (PolynomialDecay, dict(POLY, end_learning_rate=math.nan), *not_finite("end_learning_rate")),
    (PolynomialDecay, dict(POLY, power=math.inf), *not_finite("power")),
    (InverseTimeDecay, dict(INV, decay_rate=math.inf), *not_finite("decay_rate")),
    (CosineDecay, dict(COS, alpha=math.nan), *not_finite("alpha")),
    (CosineDecay, dict(COS, warmup_target=math.nan), *not_finite("warmup_target")),
    (CosineDecay, dict(COS, warmup_steps=math.inf), *not_finite("warmup_steps")),
    (CosineDecayRestarts, dict(SGDR, m_mul=math.nan), *not_finite("m_mul")),
    (CosineDecayRestarts, dict(SGDR, t_mul=-math.inf), *not_finite("t_mul")),
    # Ranges.
    (CosineDecay, dict(COS, warmup_target=0.2, warmup_steps=-1), ValueError,
     _exact("Argument `warmup_steps` must be >= 0. Received: warmup_steps=-1")),
    (CosineDecayRestarts, dict(SGDR, t_mul=0), ValueError,
     _exact("Argument `t_mul` must be > 0. Received: t_mul=0")),
    (CosineDecayRestarts, dict(SGDR, t_mul=-2.0), ValueError, r"`t_mul` must be > 0.*t_mul=-2\.0"),
    (PiecewiseConstantDecay, dict(boundaries=[7, 3], values=[0.05, 0.02, 0.01]), ValueError,
     r"`boundaries` must be strictly increasing"),
    (PiecewiseConstantDecay, dict(boundaries=[3, 3], values=[0.05, 0.02, 0.01]), ValueError,
     r"`boundaries` must be strictly increasing"),
]


@pytest.mark.parametrize("cls, kwargs, exception, message", VALIDATION,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(VALIDATION)])
def test_constructor_validation(cls, kwargs, exception, message):
    with pytest.raises(exception, match=message):
        cls(**kwargs)


BAD_STEPS = [
    (-1, ValueError), (-0.5, ValueError), (np.int64(-3), ValueError), (math.nan, ValueError),
    (math.inf, ValueError), (10 ** 400, ValueError),
    ("1", ValueError), (None, ValueError), (True, ValueError), (np.bool_(False), ValueError),
    (1 + 0j, ValueError), ([1], ValueError), (np.array([1, 2]), ValueError),
]


@pytest.mark.parametrize("schedule", _schedule_samples(), ids=repr)
def test_bad_steps(schedule):
    for step, exception in BAD_STEPS:
        with pytest.raises(exception, match="step"):
            schedule(step)


# ------------------------------------------------------------------------------------------
# Properties of random valid schedules
# ------------------------------------------------------------------------------------------

rates = st.floats(0.0, 1.0, allow_nan=False)
positive_rates = st.floats(1e-6, 1.0)
fractions = st.floats(0.0, 1.0)
decay_steps = st.one_of(st.integers(1, 1000), st.floats(0.5, 1000.0))
steps = st.one_of(st.integers(0, 100_000), st.floats(0.0, 100_000.0))
SLACK = 1e-12


def within(value, *bounds):
    """``value`` is finite and in [min(bounds), max(bounds)], up to rounding.

    The slack scales with the largest bound: formulas such as ``(init - end) * 1 + end`` cancel
    (in Keras too), so a tiny ``init`` next to ``end = 1`` can come back as 0.
    """
    low, high = min(bounds), max(bounds)
    slack = SLACK * max(abs(low), abs(high))
    return math.isfinite(value) and low - slack <= value <= high + slack


@settings(deadline=None)
@given(init=rates, decay_steps=decay_steps, decay_rate=rates, staircase=st.booleans(),
       step=steps, later=st.floats(0.0, 1000.0))
def test_exponential_property(init, decay_steps, decay_rate, staircase, step, later):
    schedule = ExponentialDecay(init, decay_steps, decay_rate, staircase)
    value = schedule(step)
    assert within(value, 0.0, init)
    assert schedule(step + later) <= value * (1 + SLACK)  # non-increasing


@settings(deadline=None)
@given(data=st.data(), step=steps)
def test_piecewise_property(data, step):
    boundaries = sorted(data.draw(st.sets(st.integers(0, 100_000), min_size=1, max_size=6)))
    values = data.draw(st.lists(rates, min_size=len(boundaries) + 1, max_size=len(boundaries) + 1))
    value = PiecewiseConstantDecay(boundaries, values)(step)
    assert value in values
    assert value == values[sum(b < step for b in boundaries)]


@settings(deadline=None)
@given(init=rates, end=rates, decay_steps=decay_steps, power=st.floats(0.0, 5.0),
       cycle=st.booleans(), step=steps)
def test_polynomial_property(init, end, decay_steps, power, cycle, step):
    value = PolynomialDecay(init, decay_steps, end, power, cycle)(step)
    assert within(value, init, end)


@settings(deadline=None)
@given(init=rates, decay_steps=decay_steps, decay_rate=st.floats(0.0, 100.0),
       staircase=st.booleans(), step=steps)
def test_inverse_time_property(init, decay_steps, decay_rate, staircase, step):
    value = InverseTimeDecay(init, decay_steps, decay_rate, staircase)(step)
    assert within(value, 0.0, init)


@settings(deadline=None)
@given(init=rates, decay_steps=decay_steps, alpha=fractions,
       target=st.one_of(st.none(), rates),
       warmup=st.one_of(st.integers(0, 500), st.floats(0.0, 500.0)),
       step=steps)
def test_cosine_property(init, decay_steps, alpha, target, warmup, step):
    value = CosineDecay(init, decay_steps, alpha, warmup_target=target, warmup_steps=warmup)(step)
    top = init if target is None else target
    assert within(value, init, top, alpha * top)
    if step >= decay_steps + (warmup if target is not None else 0):
        assert value == pytest.approx(alpha * top, rel=1e-9, abs=1e-15)


@settings(deadline=None)
@given(init=positive_rates, first=decay_steps, t_mul=st.floats(1.0, 3.0), m_mul=fractions,
       alpha=fractions, step=steps)
def test_restarts_property(init, first, t_mul, m_mul, alpha, step):
    value = CosineDecayRestarts(init, first, t_mul, m_mul, alpha)(step)
    assert within(value, alpha * init, init)
