"""Learning-rate schedules that reproduce ``keras.optimizers.schedules`` (Keras 3.15.1).

A schedule maps the optimizer step ``s`` (the number of earlier ``apply`` calls, so 0 on the
first one) to a learning rate. The six built-in classes use the same names, argument order,
defaults, formulas, default ``name`` values and ``get_config`` keys as Keras, so a Keras
configuration can be loaded unchanged and ours can be read back by Keras.

Every schedule returns a Python ``float``, computed in float64 with :mod:`math`. The arithmetic
follows the order of operations Keras uses, so the values agree with Keras running in float64
(JAX with ``jax_enable_x64``) and, after rounding, with its default float32 run.

Where Keras would produce ``inf`` or ``nan`` (an overflowing power, a division by zero), so do we:
the small ``_pow``, ``_div``, ... helpers below follow IEEE-754 instead of raising like
:mod:`math`. Argument checking is stricter than in Keras and follows the optimizer's rules: numbers
must be finite reals (``bool`` and ``str`` are refused), ``warmup_steps`` must be >= 0, ``t_mul``
> 0, ``boundaries`` strictly increasing and ``name`` a non-empty ``str``; steps must be finite
reals >= 0. A bad setting raises ``ValueError`` naming the argument and the value received; a
``boundaries`` or ``values`` that is not a sequence raises ``TypeError``. A non-positive
``decay_steps`` / ``first_decay_steps`` raises with the exact Keras message.

:func:`serialize` and :func:`deserialize` use the Keras layout
``{"module": "keras.optimizers.schedules", "class_name": ..., "config": ...,
"registered_name": None}``. Configurations contain only JSON types.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import _validation as check

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
    "serialize",
    "deserialize",
]

_KERAS_MODULE = "keras.optimizers.schedules"


# --------------------------------------------------------------------------------------------
# Argument checking: the package's one policy (``_validation``)
# --------------------------------------------------------------------------------------------

def _type_name(value):
    return type(value).__name__


def _positive_steps(name, value):
    """A finite real > 0, refused with the Keras message otherwise."""
    value = check.number(name, value)
    if value <= 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value}")
    return value


# --------------------------------------------------------------------------------------------
# IEEE-754 arithmetic: inf and nan where :mod:`math` and ``/`` would raise, as in Keras
# --------------------------------------------------------------------------------------------

def _pow(base, exponent):
    try:
        return math.pow(base, exponent)
    except OverflowError:
        odd_exponent = exponent.is_integer() and math.fmod(exponent, 2.0) != 0.0
        return -math.inf if (base < 0 and odd_exponent) else math.inf
    except ValueError:  # 0 ** negative, or negative ** non-integer
        return math.inf if base == 0 else math.nan


def _div(numerator, denominator):
    if denominator == 0:
        if numerator == 0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)
    return numerator / denominator


def _log(x):
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


def _floor(x):
    return float(math.floor(x)) if math.isfinite(x) else x


def _ceil(x):
    return float(math.ceil(x)) if math.isfinite(x) else x


def _cos(x):
    return math.cos(x) if math.isfinite(x) else math.nan


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------

class LearningRateSchedule:
    """Base class of learning-rate schedules.

    Subclasses implement ``__call__(step)``, returning the learning rate for ``step`` (the number
    of earlier optimizer steps: 0 on the first), and ``get_config()``, returning a dict of their
    constructor arguments. ``from_config(config)`` is ``cls(**config)``.

    Two schedules are equal when they have the same class and the same ``get_config()``;
    schedules are therefore not hashable.
    """

    def __call__(self, step: int) -> float:
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' must override `__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' must override `get_config()`."
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearningRateSchedule:
        """Create a schedule from the dict returned by ``get_config()``."""
        return cls(**config)

    def __repr__(self) -> str:
        try:
            config = self.get_config()
        except NotImplementedError:
            return object.__repr__(self)
        arguments = ", ".join(f"{key}={value!r}" for key, value in config.items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LearningRateSchedule):
            return NotImplemented
        if type(self) is not type(other):
            return False
        try:
            return self.get_config() == other.get_config()
        except NotImplementedError:
            return self is other

    __hash__ = None  # type: ignore[assignment]  # mutable configs: not hashable, as in Keras


# --------------------------------------------------------------------------------------------
# The six Keras schedules
# --------------------------------------------------------------------------------------------

class _StepDecay(LearningRateSchedule):
    """Shared parts of the two schedules driven by ``p = s / decay_steps``."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool, name: str) -> None:
        self.initial_learning_rate = check.number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.decay_rate = check.number("decay_rate", decay_rate)
        self.staircase = check.boolean("staircase", staircase)
        self.name = check.name(name)

    def _progress(self, step):
        """``s / decay_steps``, rounded down when ``staircase``."""
        p = check.schedule_step(step) / self.decay_steps
        return _floor(p) if self.staircase else p

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class ExponentialDecay(_StepDecay):
    """Exponential decay.

    With ``p = s / decay_steps`` (rounded down to an integer when ``staircase``)::

        lr(s) = initial_learning_rate * decay_rate ** p

    ``staircase=True`` makes the rate drop in steps, once every ``decay_steps`` steps.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False, name: str = "ExponentialDecay") -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step: int) -> float:
        return float(self.initial_learning_rate) * _pow(float(self.decay_rate),
                                                        self._progress(step))


class PiecewiseConstantDecay(LearningRateSchedule):
    """Piecewise-constant learning rate.

    With ``boundaries = [b0, b1, ..., bn]`` and ``values = [v0, v1, ..., vn+1]``::

        lr(s) = v0        if s <= b0
                v(i+1)    if b(i) < s <= b(i+1)
                v(n+1)    if s > bn

    Each interval includes its right-hand boundary. ``values`` must have one element more than
    ``boundaries``, and ``boundaries`` must be strictly increasing.
    """

    def __init__(self, boundaries: Sequence[float], values: Sequence[float],
                 name: str = "PiecewiseConstant") -> None:
        boundaries = check.real_sequence("boundaries", boundaries)
        values = check.real_sequence("values", values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, "
                f"and values={values} of length {len(values)}."
            )
        boundaries = [check.number(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        values = [check.number(f"values[{i}]", v) for i, v in enumerate(values)]
        for i in range(1, len(boundaries)):
            if not boundaries[i - 1] < boundaries[i]:
                raise ValueError(
                    "Argument `boundaries` must be strictly increasing. "
                    f"Received: boundaries={boundaries} "
                    f"(boundaries[{i - 1}]={boundaries[i - 1]} >= boundaries[{i}]={boundaries[i]})"
                )
        name = check.name(name)
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step: int) -> float:
        # bisect_left counts the boundaries strictly below the step: boundaries are inclusive
        # on the right.
        index = bisect.bisect_left(self.boundaries, check.schedule_step(step))
        return float(self.values[index])

    def get_config(self) -> dict[str, Any]:
        return {
            "boundaries": list(self.boundaries),
            "values": list(self.values),
            "name": self.name,
        }


class PolynomialDecay(LearningRateSchedule):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    Without ``cycle`` the step stops at ``decay_steps``: with ``s' = min(s, decay_steps)`` and
    ``D = decay_steps``. With ``cycle`` the horizon grows instead: ``s' = s`` and
    ``D = decay_steps * max(1, ceil(s / decay_steps))`` (the multiplier is 1 at ``s = 0``). Then::

        lr(s) = (initial_learning_rate - end_learning_rate) * (1 - s' / D) ** power
                + end_learning_rate
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int,
                 end_learning_rate: float = 0.0001, power: float = 1.0, cycle: bool = False,
                 name: str = "PolynomialDecay") -> None:
        initial_learning_rate = check.number("initial_learning_rate", initial_learning_rate)
        decay_steps = _positive_steps("decay_steps", decay_steps)
        end_learning_rate = check.number("end_learning_rate", end_learning_rate)
        power = check.number("power", power)
        cycle = check.boolean("cycle", cycle)
        name = check.name(name)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step: int) -> float:
        s = check.schedule_step(step)
        horizon = float(self.decay_steps)
        if self.cycle:
            # ceil(s / D), and 1 at s = 0 as in Keras. max() also covers a tiny s > 0 whose
            # s / D underflows to 0 (Keras would divide by a zero horizon there).
            multiplier = max(1.0, _ceil(s / horizon))
            horizon = horizon * multiplier
        else:
            s = min(s, horizon)
        p = _div(s, horizon)
        start = float(self.initial_learning_rate)
        end = float(self.end_learning_rate)
        return (start - end) * _pow(1.0 - p, float(self.power)) + end

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(_StepDecay):
    """Inverse-time decay.

    With ``p = s / decay_steps`` (rounded down to an integer when ``staircase``)::

        lr(s) = initial_learning_rate / (1 + decay_rate * p)
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False, name: str = "InverseTimeDecay") -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step: int) -> float:
        return _div(float(self.initial_learning_rate),
                    1.0 + self.decay_rate * self._progress(step))


class CosineDecay(LearningRateSchedule):
    """Cosine decay, with an optional linear warmup.

    Let ``D = decay_steps``, ``W = warmup_steps`` and::

        cosdecay(x, top) = top * ((1 - alpha) * 0.5 * (1 + cos(pi * x / D)) + alpha)

    Without warmup (``warmup_target is None``)::

        lr(s) = cosdecay(min(s, D), initial_learning_rate)

    With warmup, ``s' = min(s, D + W)`` and::

        lr(s) = (warmup_target - initial_learning_rate) * s' / W + initial_learning_rate
                                              if s' < W
                cosdecay(s' - W, warmup_target)   otherwise

    so the rate climbs linearly from ``initial_learning_rate`` to ``warmup_target`` over ``W``
    steps, then decays to ``alpha * warmup_target``. ``alpha`` is always a fraction of the rate
    the cosine starts from.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 name: str = "CosineDecay", warmup_target: float | None = None,
                 warmup_steps: int = 0) -> None:
        initial_learning_rate = check.number("initial_learning_rate", initial_learning_rate)
        decay_steps = _positive_steps("decay_steps", decay_steps)
        alpha = check.number("alpha", alpha)
        name = check.name(name)
        if warmup_target is not None:
            warmup_target = check.number("warmup_target", warmup_target)
        warmup_steps = check.number("warmup_steps", warmup_steps)
        if warmup_steps < 0:
            raise ValueError(
                f"Argument `warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}"
            )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _cosine(self, step, decay_from):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + _cos(math.pi * fraction))
        return decay_from * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        s = check.schedule_step(step)
        start = float(self.initial_learning_rate)
        if self.warmup_target is None:
            return self._cosine(min(s, float(self.decay_steps)), start)
        warmup_steps = float(self.warmup_steps)
        target = float(self.warmup_target)
        s = min(s, self.decay_steps + warmup_steps)
        if s < warmup_steps:
            return (target - start) * (s / warmup_steps) + start
        return self._cosine(s - warmup_steps, target)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR).

    Let ``f = s / first_decay_steps``. Find the index ``i`` of the current period and the
    fraction ``f`` of it already done:

    - if ``t_mul == 1`` (all periods equally long): ``i = floor(f)`` and ``f <- f - i``;
    - otherwise (period ``k`` is ``t_mul ** k`` times the first one)::

          i = floor(log(1 - f * (1 - t_mul)) / log(t_mul))
          f <- (f - (1 - t_mul ** i) / (1 - t_mul)) / t_mul ** i

    Then::

        lr(s) = initial_learning_rate
                * ((1 - alpha) * 0.5 * m_mul ** i * (1 + cos(pi * f)) + alpha)

    Each restart begins at ``m_mul ** i`` times the initial rate; the floor ``alpha`` (a fraction
    of ``initial_learning_rate``) is *not* scaled by ``m_mul ** i``. With ``t_mul < 1`` the
    periods shrink and their total length is finite; past it the value is ``nan``, as in Keras.
    """

    def __init__(self, initial_learning_rate: float, first_decay_steps: int, t_mul: float = 2.0,
                 m_mul: float = 1.0, alpha: float = 0.0, name: str = "SGDRDecay") -> None:
        initial_learning_rate = check.number("initial_learning_rate", initial_learning_rate)
        first_decay_steps = _positive_steps("first_decay_steps", first_decay_steps)
        t_mul = check.number("t_mul", t_mul)
        if t_mul <= 0:
            raise ValueError(f"Argument `t_mul` must be > 0. Received: t_mul={t_mul}")
        m_mul = check.number("m_mul", m_mul)
        alpha = check.number("alpha", alpha)
        name = check.name(name)
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self.t_mul = t_mul
        self.m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step: int) -> float:
        fraction = check.schedule_step(step) / self.first_decay_steps
        t_mul = float(self.t_mul)
        if t_mul == 1.0:
            restart = _floor(fraction)
            fraction = fraction - restart
        else:
            restart = _floor(_log(1.0 - fraction * (1.0 - t_mul)) / math.log(t_mul))
            period_scale = _pow(t_mul, restart)
            elapsed = (1.0 - period_scale) / (1.0 - t_mul)  # earlier periods, in first periods
            fraction = _div(fraction - elapsed, period_scale)
        m_factor = _pow(float(self.m_mul), restart)
        cosine = 0.5 * m_factor * (1.0 + _cos(math.pi * fraction))
        decayed = (1.0 - self.alpha) * cosine + self.alpha
        return float(self.initial_learning_rate) * decayed

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------

_BUILT_IN = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """Return the Keras serialization dict of ``schedule``.

    A built-in schedule gives ``{"module": "keras.optimizers.schedules", "class_name": ...,
    "config": schedule.get_config(), "registered_name": None}``. A user subclass gives its own
    module and its class name as ``registered_name`` (as Keras does for unregistered custom
    objects); pass the class in ``deserialize(..., custom_objects=...)`` to rebuild it.
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "serialize() expects a LearningRateSchedule. "
            f"Received: {schedule!r} (of type {_type_name(schedule)})"
        )
    cls = type(schedule)
    if _BUILT_IN.get(cls.__name__) is cls:
        module, registered_name = _KERAS_MODULE, None
    else:
        module, registered_name = cls.__module__, cls.__name__
    return {
        "module": module,
        "class_name": cls.__name__,
        "config": schedule.get_config(),
        "registered_name": registered_name,
    }


def deserialize(config: Mapping[str, Any],
                custom_objects: Mapping[str, Any] | None = None) -> LearningRateSchedule:
    """Rebuild a schedule from the dict made by :func:`serialize` (or by Keras).

    ``custom_objects`` maps names to user subclasses of :class:`LearningRateSchedule`; it is
    searched first, by ``registered_name`` and then by ``class_name``. Otherwise ``class_name``
    must name one of the six built-in schedules. An unknown name raises ``ValueError``.
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            "deserialize() expects a dict with keys 'class_name' and 'config'. "
            f"Received: {config!r} (of type {_type_name(config)})"
        )
    missing = [key for key in ("class_name", "config") if key not in config]
    if missing:
        raise ValueError(
            f"A serialized schedule needs the keys 'class_name' and 'config'; missing {missing}. "
            f"Received: {dict(config)!r}"
        )
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError(
            "Argument `custom_objects` must be a dict or None. "
            f"Received: custom_objects={custom_objects!r}"
        )
    class_name = config["class_name"]
    cls = None
    for key in (config.get("registered_name"), class_name):
        if custom_objects and isinstance(key, str) and key in custom_objects:
            cls = custom_objects[key]
            if not (isinstance(cls, type) and issubclass(cls, LearningRateSchedule)):
                raise TypeError(
                    f"custom_objects[{key!r}] must be a subclass of LearningRateSchedule. "
                    f"Received: {cls!r}"
                )
            break
    if cls is None:
        cls = _BUILT_IN.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(
            f"Unknown learning rate schedule: class_name={class_name!r}. Expected one of "
            f"{sorted(_BUILT_IN)}, or a class passed in `custom_objects`."
        )
    inner = config["config"]
    if not isinstance(inner, Mapping):
        raise TypeError(
            f"The 'config' of a serialized schedule must be a dict. Received: config={inner!r}"
        )
    return cls.from_config(dict(inner))
