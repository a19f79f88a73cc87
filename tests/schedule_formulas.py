"""The Keras learning-rate schedules as plain float64 formulas: the oracle of the schedule tests.

Written from Keras 3's formulas for its six schedules, deliberately in a different style from
``numba_adamax.schedules`` (plain branches, ``**``, a walk over the restart periods instead of a
logarithm), so that a slip in one is unlikely to be repeated in the other. This module never imports ``numba_adamax``.

* One function per schedule class, ``formula(step, **constructor_kwargs)``, with the argument
  names and defaults of the Keras constructor (``name`` excepted).
* :class:`FormulaSchedule` ``(class_name, config)``: such a formula as a schedule object. It has
  ``get_config``, so ``ReferenceAdamax`` treats it as a schedule (called with the raw counter).
* :data:`FORMULA_SCHEDULES`: a namespace with one constructor per class name (keyword arguments
  only), for code that takes a ``schedules_module`` such as ``numba_adamax.schedules``.
"""

import math
import types

__all__ = [
    "FORMULAS",
    "FORMULA_SCHEDULES",
    "FormulaSchedule",
    "cosine_decay",
    "cosine_decay_restarts",
    "exponential_decay",
    "inverse_time_decay",
    "piecewise_constant_decay",
    "polynomial_decay",
]


def exponential_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate * decay_rate ** p


def piecewise_constant_decay(step, boundaries, values):
    """``values[i]`` for ``boundaries[i-1] < step <= boundaries[i]`` (inclusive on the right)."""
    for boundary, value in zip(boundaries, values):
        if step <= boundary:
            return float(value)
    return float(values[-1])


def polynomial_decay(step, initial_learning_rate, decay_steps, end_learning_rate=0.0001,
                     power=1.0, cycle=False):
    if cycle:
        decay_steps = decay_steps * max(1, math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return ((initial_learning_rate - end_learning_rate) * (1 - step / decay_steps) ** power
            + end_learning_rate)


def inverse_time_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate / (1 + decay_rate * p)


def cosine_decay(step, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None,
                 warmup_steps=0):
    def cosine_from(x, top):
        return top * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * x / decay_steps)) + alpha)

    if warmup_target is None:
        return cosine_from(min(step, decay_steps), initial_learning_rate)
    step = min(step, decay_steps + warmup_steps)
    if step < warmup_steps:
        return initial_learning_rate + (warmup_target - initial_learning_rate) * step / warmup_steps
    return cosine_from(step - warmup_steps, warmup_target)


def cosine_decay_restarts(step, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0,
                          alpha=0.0):
    """Walk the periods one by one. With ``t_mul < 1`` the periods add up to
    ``first_decay_steps / (1 - t_mul)``; from there on the value is NaN, as in Keras.
    ``alpha`` is not multiplied by ``m_mul ** restart``."""
    if t_mul < 1 and step >= first_decay_steps / (1 - t_mul):
        return math.nan
    restart, start, length = 0, 0.0, first_decay_steps
    while step >= start + length:
        start += length
        length *= t_mul
        restart += 1
    f = (step - start) / length
    return initial_learning_rate * (
        (1 - alpha) * 0.5 * m_mul ** restart * (1 + math.cos(math.pi * f)) + alpha)


#: Keras schedule class name -> its formula.
FORMULAS = {
    "ExponentialDecay": exponential_decay,
    "PiecewiseConstantDecay": piecewise_constant_decay,
    "PolynomialDecay": polynomial_decay,
    "InverseTimeDecay": inverse_time_decay,
    "CosineDecay": cosine_decay,
    "CosineDecayRestarts": cosine_decay_restarts,
}


class FormulaSchedule:
    """The schedule ``name`` (a Keras class name) with constructor arguments ``config``,
    computed by its formula in float64; ``schedule(step)`` returns a Python float."""

    def __init__(self, name, config):
        if name not in FORMULAS:
            raise ValueError(f"unknown schedule {name!r}")
        self.name = name
        self.config = dict(config)

    def get_config(self):
        return dict(self.config)

    def __call__(self, step):
        return float(FORMULAS[self.name](float(step), **self.config))

    def __repr__(self):
        return f"FormulaSchedule({self.name!r}, {self.config!r})"


def _constructor(name):
    def build(**config):
        return FormulaSchedule(name, config)

    build.__name__ = build.__qualname__ = name
    return build


#: ``FORMULA_SCHEDULES.ExponentialDecay(initial_learning_rate=..., ...)`` and so on.
FORMULA_SCHEDULES = types.SimpleNamespace(**{name: _constructor(name) for name in FORMULAS})
