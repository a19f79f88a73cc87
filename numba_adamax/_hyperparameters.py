"""The validated hyperparameter record shared by the class and the functional API."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any
import warnings

from . import _validation as check
from ._typing import LearningRate
from .schedules import LearningRateSchedule, deserialize, serialize

#: Keras 3's ``get_config`` keys, in its order.
CONFIG_KEYS = ("name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm",
               "clipvalue", "use_ema", "ema_momentum", "ema_overwrite_frequency",
               "loss_scale_factor", "gradient_accumulation_steps", "beta_1", "beta_2",
               "epsilon")

_CLIP_FIELDS = ("clipnorm", "clipvalue", "global_clipnorm")

_CHECKS = {
    "learning_rate": lambda v: check.learning_rate(v, LearningRateSchedule),
    "beta_1": lambda v: check.real("beta_1", v, low=0.0, high=1.0, high_open=True),
    "beta_2": lambda v: check.real("beta_2", v, low=0.0, high=1.0, high_open=True),
    "epsilon": lambda v: check.real("epsilon", v, low=0.0),
    "weight_decay": lambda v: check.real("weight_decay", v, low=0.0, optional=True),
    "clipnorm": lambda v: check.real("clipnorm", v, low=0.0, low_open=True, optional=True),
    "clipvalue": lambda v: check.real("clipvalue", v, low=0.0, low_open=True, optional=True),
    "global_clipnorm": lambda v: check.real("global_clipnorm", v, low=0.0, low_open=True,
                                            optional=True),
    "use_ema": lambda v: check.boolean("use_ema", v),
    "ema_momentum": check.ema_momentum,
    "ema_overwrite_frequency": check.ema_overwrite_frequency,
    "loss_scale_factor": lambda v: check.real("loss_scale_factor", v, low=0.0,
                                              low_open=True, optional=True),
    "gradient_accumulation_steps": check.gradient_accumulation_steps,
    "decay": lambda v: check.real("decay", v, low=0.0, optional=True),
    "nonfinite": check.nonfinite,
    "name": check.name,
}

#: Every field of ``Hyperparameters``, in constructor order.
FIELDS = tuple(_CHECKS)

#: Fields that decide which slots exist; fixed once a state has been built.
STRUCTURAL = ("use_ema", "gradient_accumulation_steps")


class Hyperparameters:
    """Optimizer settings, each validated when set (see ``_validation``).

    Fields: ``learning_rate`` (float, ``LearningRateSchedule`` or zero-argument
    callable), ``beta_1``, ``beta_2``, ``epsilon``, ``weight_decay``, ``clipnorm``,
    ``clipvalue``, ``global_clipnorm``, ``use_ema``, ``ema_momentum``,
    ``ema_overwrite_frequency``, ``loss_scale_factor``,
    ``gradient_accumulation_steps``, ``decay`` (TF 1.x inverse-time decay),
    ``nonfinite`` (what a call does with a NaN/inf gradient: ``"propagate"``,
    ``"skip"`` or ``"raise"``) and ``name``. Numbers are stored as Python
    ``float``/``int``. Setting a field re-validates it (and the clipping exclusivity)
    and increments ``revision`` (read-only), so derived values can be cached;
    ``use_ema`` and ``gradient_accumulation_steps`` cannot change once ``lock()`` was
    called. Pickling and ``copy.deepcopy`` keep every field and the lock.
    """

    __slots__ = tuple(_CHECKS) + ("_locked", "revision")

    learning_rate: LearningRate
    beta_1: float
    beta_2: float
    epsilon: float
    weight_decay: float | None
    clipnorm: float | None
    clipvalue: float | None
    global_clipnorm: float | None
    use_ema: bool
    ema_momentum: float
    ema_overwrite_frequency: int | None
    loss_scale_factor: float | None
    gradient_accumulation_steps: int | None
    decay: float | None
    nonfinite: str
    name: str
    revision: int
    _locked: bool

    def __init__(self, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 use_ema: bool = False, ema_momentum: float = 0.99,
                 ema_overwrite_frequency: int | None = None,
                 loss_scale_factor: float | None = None,
                 gradient_accumulation_steps: int | None = None, decay: float | None = None,
                 nonfinite: str = "propagate", name: str = "adamax") -> None:
        values = dict(locals())
        del values["self"]
        normalised = {field: _CHECKS[field](values[field]) for field in _CHECKS}
        check.clip_exclusive(clipnorm, clipvalue, global_clipnorm)
        object.__setattr__(self, "_locked", False)
        object.__setattr__(self, "revision", 0)
        for field, value in normalised.items():
            object.__setattr__(self, field, value)

    def __setattr__(self, field: str, value: Any) -> None:
        if field not in _CHECKS:
            raise AttributeError(f"Hyperparameters has no field {field!r}")
        value = _CHECKS[field](value)
        if field in _CLIP_FIELDS:
            clips = {f: getattr(self, f) for f in _CLIP_FIELDS}
            clips[field] = value
            check.clip_exclusive(**clips)
        if field in STRUCTURAL and self._locked and value != getattr(self, field):
            raise ValueError(f"`{field}` cannot be changed after the optimizer state "
                             "was built: it decides which slots exist.")
        object.__setattr__(self, field, value)
        object.__setattr__(self, "revision", self.revision + 1)

    def lock(self) -> None:
        """Freeze the fields in ``STRUCTURAL`` (called when slots are allocated)."""
        object.__setattr__(self, "_locked", True)

    def __getstate__(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.__slots__}

    def __setstate__(self, fields: dict[str, Any]) -> None:
        # Restores a pickled or copied record: the values were validated when they were
        # set, and ``__setattr__`` would refuse ``_locked`` and check clips one at a time.
        for field, value in fields.items():
            object.__setattr__(self, field, value)

    def __repr__(self) -> str:
        return f"Hyperparameters({', '.join(self.changed_settings())})"

    def changed_settings(self) -> list[str]:
        """``"field=value"`` texts: ``learning_rate``, then every field that differs from
        its default (a callable shown by its name, not its address)."""
        texts = [f"learning_rate={_setting_text(self.learning_rate)}"]
        texts += [f"{f}={_setting_text(getattr(self, f))}" for f in _CHECKS
                  if f != "learning_rate" and getattr(self, f) != _DEFAULTS[f]]
        return texts

    # ------------------------------------------------------------ derived values

    def learning_rate_at(self, raw_steps: int) -> float:
        """The learning rate of the call made after ``raw_steps`` earlier calls.

        A schedule receives ``raw_steps``; a callable is called with no argument;
        ``decay`` then divides by ``1 + decay * raw_steps``. Raises ``ValueError`` if
        a schedule or callable produces something that is not a finite number >= 0.
        """
        lr = self.learning_rate
        if isinstance(lr, LearningRateSchedule):
            lr = check.learning_rate_value(lr(raw_steps), "schedule")
        elif callable(lr):
            lr = check.learning_rate_value(lr(), "callable")
        if self.decay:
            lr = lr / (1.0 + self.decay * raw_steps)
        return lr

    def set_learning_rate(self, value: LearningRate) -> None:
        """Keras' setter rules: a schedule or callable replaces the current value; a
        number replaces a float but raises ``TypeError`` on a schedule or callable."""
        current = self.learning_rate
        if not isinstance(current, float) and not isinstance(value, LearningRateSchedule) \
                and not callable(value):
            kind = ("a `LearningRateSchedule`" if isinstance(current, LearningRateSchedule)
                    else "a callable")
            raise TypeError(f"This optimizer was created with {kind} as its `learning_rate`, "
                            "hence its learning rate is not settable to a number. Assign a "
                            "new schedule or callable instead.")
        self.learning_rate = value

    # ------------------------------------------------------------ config

    def get_config(self) -> dict[str, Any]:
        """Keras 3's 14 keys (plus ``decay`` when set, and ``nonfinite`` when it is not the
        default ``"propagate"``); schedules serialised as dicts.

        A float learning rate is reported exactly (Keras reports it rounded to
        float32). A callable learning rate is returned as the object itself.
        """
        config = {key: getattr(self, key) for key in CONFIG_KEYS}
        if isinstance(self.learning_rate, LearningRateSchedule):
            config["learning_rate"] = serialize(self.learning_rate)
        if self.decay is not None:
            config["decay"] = self.decay
        if self.nonfinite != "propagate":
            config["nonfinite"] = self.nonfinite
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    custom_objects: Mapping[str, Any] | None = None) -> Hyperparameters:
        """Inverse of ``get_config``; ``decay`` is accepted without a warning here."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = deserialize(config["learning_rate"],
                                                  custom_objects=custom_objects)
        unknown = sorted(set(config) - set(_CHECKS))
        if unknown:
            raise TypeError(f"Unknown config key(s): {unknown}")
        return cls(**config)


_DEFAULTS = {name: p.default
             for name, p in inspect.signature(Hyperparameters.__init__).parameters.items()
             if name != "self"}


def _setting_text(value):
    if callable(value) and not isinstance(value, LearningRateSchedule):
        return f"<callable {getattr(value, '__qualname__', type(value).__qualname__)}>"
    return repr(value)


def from_keywords(learning_rate, kwargs):
    """Resolve the deprecated TF 1.x keywords ``lr`` and ``decay`` in ``kwargs``.

    Returns ``(learning_rate, decay)``; warns ``DeprecationWarning`` for each one
    given and raises ``TypeError`` naming any other unknown keyword.
    """
    kwargs = dict(kwargs)
    decay = kwargs.pop("decay", None)
    if "lr" in kwargs:
        warnings.warn("The `lr` argument is deprecated; use `learning_rate`.",
                      DeprecationWarning, stacklevel=3)
        learning_rate = kwargs.pop("lr")
    if decay is not None:
        warnings.warn("The `decay` argument is deprecated; use a learning-rate schedule "
                      "such as `InverseTimeDecay`.", DeprecationWarning, stacklevel=3)
    if kwargs:
        raise TypeError(f"Unexpected keyword argument(s) passed to Adamax: {sorted(kwargs)}")
    return learning_rate, decay
