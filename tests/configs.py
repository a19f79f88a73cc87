"""The one table of optimizer configurations shared by the test files (``CONFIGS``).

Each entry is a :class:`Config`: the ``Adamax`` constructor ``kwargs`` plus, separately, the
``exclude_names`` given to ``exclude_from_weight_decay(var_names=...)`` (regexes searched in the
variable names). Together the entries cover every constructor argument and the combinations
whose interactions are subtle (accumulation x EMA overwrite x clipping x weight decay x loss
scaling x schedules).

Two kinds of learning rate need more than a plain value, and are written as markers that the
builders below resolve:

* :class:`Sched` names one of the six schedule classes with its constructor arguments. The
  library gets ``numba_adamax.schedules.<name>(**config)``; the reference gets
  :class:`FormulaSchedule` (tests/schedule_formulas.py), an independent transcription of the
  schedule formulas, so the schedules themselves are checked too.
* :class:`ClockLR` is a zero-argument callable learning rate ``formula(clock.step)``; the test
  sets ``clock.step`` to the 0-based index of the call in progress (a :class:`Clock`), so the
  library and the reference read the same value however often they call it.

Derived tables: :data:`NORM_CLIPPING_CONFIGS`.

Builders: :func:`build_optimizer` (the ``Adamax`` class; asserts the ``DeprecationWarning`` of
``decay``), :func:`init_state` (functional ``init``), :func:`build_reference`
(``ReferenceAdamax``).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import numba_adamax as na
from reference import ReferenceAdamax
from schedule_formulas import FormulaSchedule

__all__ = [
    "CONFIGS",
    "CONFIG_NAMES",
    "NORM_CLIPPING_CONFIGS",
    "Clock",
    "ClockLR",
    "Config",
    "FormulaSchedule",
    "Sched",
    "build_optimizer",
    "build_reference",
    "init_state",
    "make_kwargs",
]


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class Sched:
    """A learning-rate schedule: ``numba_adamax.schedules.<name>(**config)``."""

    name: str
    config: dict


@dataclass(frozen=True)
class ClockLR:
    """A zero-argument callable learning rate: ``formula(clock.step)``."""

    formula: object
    label: str


class Clock:
    """The 0-based index of the optimizer call in progress, set by the test before each call."""

    def __init__(self):
        self.step = 0


@dataclass(frozen=True)
class Config:
    kwargs: dict
    exclude_names: tuple = ()
    note: str = ""

    @property
    def has_decay(self):
        return self.kwargs.get("decay") is not None


# --------------------------------------------------------------------------- the table


def _geometric(s):
    return 0.02 * 0.8**s


def _sawtooth(s):
    return 0.03 / (1 + s % 3)


EXCLUDE = ("bias", "^big$")  # the variable names used by the tests are w_a, bias_b, w_c, empty, big

_COSINE_WARMUP = Sched("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=5, alpha=0.1,
                                           warmup_target=0.05, warmup_steps=3))

CONFIGS = {
    # ----- plain hyperparameters
    "defaults": Config({}),
    "lr_0.05": Config({"learning_rate": 0.05}),
    "custom_betas_eps": Config({"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.95,
                                "epsilon": 1e-4}),
    "beta_1_zero": Config({"learning_rate": 0.05, "beta_1": 0.0}),
    "beta_2_zero": Config({"learning_rate": 0.05, "beta_2": 0.0}),
    "epsilon_zero": Config({"learning_rate": 0.05, "epsilon": 0.0}),
    "lr_zero": Config({"learning_rate": 0.0, "weight_decay": 0.3}),
    # ----- weight decay
    "weight_decay": Config({"learning_rate": 0.05, "weight_decay": 0.1}),
    "weight_decay_exclude": Config({"learning_rate": 0.05, "weight_decay": 0.1},
                                   exclude_names=EXCLUDE),
    "weight_decay_zero": Config({"learning_rate": 0.05, "weight_decay": 0.0}),
    # ----- clipping
    "clipnorm": Config({"learning_rate": 0.05, "clipnorm": 1.0}),
    "clipnorm_tiny": Config({"learning_rate": 0.05, "clipnorm": 1e-3}),
    "clipnorm_large": Config({"learning_rate": 0.05, "clipnorm": 1e3}),
    "clipvalue": Config({"learning_rate": 0.05, "clipvalue": 0.5}),
    "global_clipnorm": Config({"learning_rate": 0.05, "global_clipnorm": 2.0}),
    "global_clipnorm_large": Config({"learning_rate": 0.05, "global_clipnorm": 1e3}),
    # ----- loss scaling and accumulation
    "loss_scale_factor": Config({"learning_rate": 0.05, "loss_scale_factor": 1000.0}),
    "grad_accum_2": Config({"learning_rate": 0.05, "gradient_accumulation_steps": 2}),
    "grad_accum_3": Config({"learning_rate": 0.05, "gradient_accumulation_steps": 3}),
    # ----- EMA
    "ema_no_overwrite": Config({"learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.9}),
    "ema_overwrite_1": Config({"learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.9,
                               "ema_overwrite_frequency": 1}),
    "ema_overwrite_3": Config({"learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.9,
                               "ema_overwrite_frequency": 3}),
    "ema_momentum_0": Config({"learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.0,
                              "ema_overwrite_frequency": 2}),
    "ema_momentum_1": Config({"learning_rate": 0.05, "use_ema": True, "ema_momentum": 1.0}),
    # ----- learning rates: the six schedules, a callable, TF1 decay
    "sched_exponential": Config({"learning_rate": Sched("ExponentialDecay", dict(
        initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5))}),
    "sched_exponential_staircase": Config({"learning_rate": Sched("ExponentialDecay", dict(
        initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5, staircase=True))}),
    "sched_piecewise": Config({"learning_rate": Sched("PiecewiseConstantDecay", dict(
        boundaries=[2, 5], values=[0.05, 0.02, 0.01]))}),
    "sched_polynomial": Config({"learning_rate": Sched("PolynomialDecay", dict(
        initial_learning_rate=0.05, decay_steps=4, end_learning_rate=0.001, power=2.0))}),
    "sched_polynomial_cycle": Config({"learning_rate": Sched("PolynomialDecay", dict(
        initial_learning_rate=0.05, decay_steps=3, end_learning_rate=0.001, power=1.5,
        cycle=True))}),
    "sched_inverse_time": Config({"learning_rate": Sched("InverseTimeDecay", dict(
        initial_learning_rate=0.05, decay_steps=2, decay_rate=0.5))}),
    "sched_inverse_time_staircase": Config({"learning_rate": Sched("InverseTimeDecay", dict(
        initial_learning_rate=0.05, decay_steps=2, decay_rate=0.5, staircase=True))}),
    "sched_cosine": Config({"learning_rate": Sched("CosineDecay", dict(
        initial_learning_rate=0.05, decay_steps=6, alpha=0.1))}),
    "sched_cosine_warmup": Config({"learning_rate": _COSINE_WARMUP}),
    "sched_cosine_restarts": Config({"learning_rate": Sched("CosineDecayRestarts", dict(
        initial_learning_rate=0.05, first_decay_steps=2, t_mul=2.0, m_mul=0.5, alpha=0.1))}),
    "sched_cosine_restarts_t1": Config({"learning_rate": Sched("CosineDecayRestarts", dict(
        initial_learning_rate=0.05, first_decay_steps=3, t_mul=1.0, m_mul=1.0, alpha=0.0))}),
    "callable_lr": Config({"learning_rate": ClockLR(_geometric, "geometric")}),
    "decay": Config({"learning_rate": 0.05, "decay": 0.25}),
    "decay_with_schedule": Config({"learning_rate": Sched("ExponentialDecay", dict(
        initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5)), "decay": 0.1}),
    # ----- combinations
    "kitchen_sink": Config(
        {"learning_rate": 0.05, "gradient_accumulation_steps": 3, "use_ema": True,
         "ema_momentum": 0.8, "ema_overwrite_frequency": 2, "clipnorm": 0.5,
         "weight_decay": 0.1, "loss_scale_factor": 64.0},
        exclude_names=EXCLUDE,
        note="accumulation + EMA + overwrite + clipnorm + weight decay + loss scale"),
    "global_clipnorm_accum_schedule": Config(
        {"learning_rate": _COSINE_WARMUP, "global_clipnorm": 0.7,
         "gradient_accumulation_steps": 2}),
    "clipvalue_ema": Config({"learning_rate": 0.05, "clipvalue": 0.3, "use_ema": True,
                             "ema_momentum": 0.8, "ema_overwrite_frequency": 3}),
    "accum_2_ema_overwrite_1": Config({"learning_rate": 0.05, "gradient_accumulation_steps": 2,
                                       "use_ema": True, "ema_momentum": 0.7,
                                       "ema_overwrite_frequency": 1}),
    "accum_3_callable_decay_wd": Config(
        {"learning_rate": ClockLR(_sawtooth, "sawtooth"), "gradient_accumulation_steps": 3,
         "decay": 0.2, "weight_decay": 0.05}, exclude_names=("^w_",)),
    "loss_scale_global_clipnorm_wd": Config(
        {"learning_rate": Sched("PiecewiseConstantDecay", dict(boundaries=[3],
                                                               values=[0.05, 0.01])),
         "loss_scale_factor": 8.0, "global_clipnorm": 1.5, "weight_decay": 0.2},
        exclude_names=EXCLUDE),
    "clipvalue_accum_loss_scale": Config({"learning_rate": 0.05, "clipvalue": 0.4,
                                          "gradient_accumulation_steps": 2,
                                          "loss_scale_factor": 4.0}),
    "clipnorm_ema_epsilon_zero": Config({"learning_rate": 0.05, "clipnorm": 0.8,
                                         "epsilon": 0.0, "use_ema": True}),
}

CONFIG_NAMES = list(CONFIGS)

#: The configurations that clip by a norm (``clipnorm`` or ``global_clipnorm``): their sums of
#: squares depend on the summation order.
NORM_CLIPPING_CONFIGS = frozenset(
    name for name, c in CONFIGS.items()
    if c.kwargs.get("clipnorm") or c.kwargs.get("global_clipnorm"))


# --------------------------------------------------------------------------- builders


def _resolve_lr(lr, clock, for_reference):
    if isinstance(lr, Sched):
        if for_reference:
            return FormulaSchedule(lr.name, lr.config)
        return getattr(na.schedules, lr.name)(**lr.config)
    if isinstance(lr, ClockLR):
        if clock is None:
            raise ValueError(f"a callable learning rate ({lr.label}) needs a Clock")
        formula = lr.formula
        return lambda: formula(clock.step)
    return lr


def make_kwargs(config, clock=None, for_reference=False):
    """Fresh constructor kwargs of ``config`` (markers resolved; see the module docstring)."""
    kwargs = dict(config.kwargs)
    if "learning_rate" in kwargs:
        kwargs["learning_rate"] = _resolve_lr(kwargs["learning_rate"], clock, for_reference)
    return kwargs


def build_optimizer(config, clock=None):
    """``numba_adamax.Adamax`` for ``config``, with its weight-decay exclusions.

    ``decay`` must raise exactly one ``DeprecationWarning``; it is asserted here.
    """
    kwargs = make_kwargs(config, clock)
    if config.has_decay:
        with pytest.warns(DeprecationWarning, match="decay") as record:
            opt = na.Adamax(**kwargs)
        assert len([w for w in record if issubclass(w.category, DeprecationWarning)]) == 1
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no other constructor warns
            opt = na.Adamax(**kwargs)
    if config.exclude_names:
        opt.exclude_from_weight_decay(var_names=list(config.exclude_names))
    return opt


def init_state(config, params, names=None, clock=None):
    """Functional ``numba_adamax.init`` for ``config`` (``names`` only for list params)."""
    kwargs = make_kwargs(config, clock)
    exclude = list(config.exclude_names) or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return na.init(params, names=names, exclude_from_weight_decay=exclude, **kwargs)


def build_reference(config, names, clock=None, dtype=np.float64):
    """``ReferenceAdamax`` for ``config`` (schedules as independent formulas)."""
    kwargs = make_kwargs(config, clock, for_reference=True)
    return ReferenceAdamax(**kwargs, names=list(names), exclude_names=config.exclude_names,
                           dtype=dtype)


def call_expecting_missing_warning(missing, call):
    """Run ``call()``; it must warn "Gradients do not exist" exactly when ``missing``."""
    if missing:
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            call()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call()
