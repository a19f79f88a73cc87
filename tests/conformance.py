"""Loaders for the recorded conformance vectors in ``tests/data/`` (see ``tests/data/README.md``).

The data files are copies of the read-only recordings from real Keras 3.15.1 (``keras_vectors.*``)
and the legacy TF optimizer (``tf_sparse_vectors.*``). They are read relative to this file, so the
suite runs from any clone.

Typical use::

    for cfg in load_keras_configs().values():
        kwargs = optimizer_kwargs(cfg, schedules_module=numba_adamax.schedules,
                                  step_fn=lambda: apply_index)
        ...
        for s in range(cfg.steps):
            opt.apply(cfg.grads(s), variables)
            ...compare with cfg.arrays["value0"][s + 1] ...
"""

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATA_DIR",
    "CALLABLE_FORMULAS",
    "CallableFactory",
    "VectorConfig",
    "load_keras_configs",
    "load_keras_json",
    "load_tf_sparse_configs",
    "load_tf_sparse_json",
    "make_learning_rate",
    "optimizer_kwargs",
]

DATA_DIR = Path(__file__).resolve().parent / "data"

# The named zero-argument callables of keras_vectors.json: formula of s, the 0-based index of the
# apply() call in progress.
CALLABLE_FORMULAS = {
    "geometric": lambda s: 0.02 * 0.8**s,
}


@dataclass
class VectorConfig:
    """One recorded configuration: its JSON entry (``meta``) and its arrays (npz ``<name>/*``)."""

    name: str
    meta: dict
    arrays: dict

    @property
    def steps(self):
        return self.meta["steps"]

    @property
    def dtype(self):
        """The variables' dtype (Keras file: per config; sparse file: per variable, see ``meta``)."""
        return np.dtype(self.meta.get("dtype", "float32"))

    @property
    def is_float64(self):
        return self.dtype == np.float64

    @property
    def var_names(self):
        return [v["name"] for v in self.meta["variables"]]

    @property
    def n_vars(self):
        return len(self.meta["variables"])

    @property
    def set_lr(self):
        return self.meta.get("set_lr")

    def has(self, key):
        return key in self.arrays

    def initial_values(self, dtype=None):
        """Fresh copies of the initial variable values (row 0 of ``value{j}``)."""
        return [
            np.array(self.arrays[f"value{j}"][0], dtype=dtype or self.arrays[f"value{j}"].dtype)
            for j in range(self.n_vars)
        ]

    def grads(self, s, dtype=None):
        """The gradients fed at apply number ``s``, with None where ``grad_is_none[s, j]``."""
        is_none = self.arrays["grad_is_none"][s]
        out = []
        for j in range(self.n_vars):
            g = self.arrays[f"grad{j}"][s]
            out.append(None if is_none[j] else np.array(g, dtype=dtype or g.dtype))
        return out

    def exclusion(self):
        """``(var_names, var_indices)`` given to ``exclude_from_weight_decay``, or ``([], [])``.

        ``var_names`` are regexes (searched in the variable names); ``var_indices`` are the
        positions of the variables that were passed by object in ``var_list``.
        """
        ex = self.meta.get("exclude_from_weight_decay") or {}
        return list(ex.get("var_names") or []), list(ex.get("var_indices") or [])


def _load(stem, data_dir):
    data_dir = Path(data_dir)
    with open(data_dir / f"{stem}.json") as f:
        doc = json.load(f)
    configs = {}
    with np.load(data_dir / f"{stem}.npz") as npz:
        for name, meta in doc["configs"].items():
            prefix = f"{name}/"
            arrays = {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}
            configs[name] = VectorConfig(name=name, meta=meta, arrays=arrays)
    return doc, configs


def load_keras_json(data_dir=DATA_DIR):
    """The whole ``keras_vectors.json`` (``configs``, ``constructor_checks``, ``format``, ...)."""
    with open(Path(data_dir) / "keras_vectors.json") as f:
        return json.load(f)


def load_keras_configs(data_dir=DATA_DIR):
    """The 20 Keras 3 configurations, name -> :class:`VectorConfig`, in file order."""
    return _load("keras_vectors", data_dir)[1]


def load_tf_sparse_json(data_dir=DATA_DIR):
    with open(Path(data_dir) / "tf_sparse_vectors.json") as f:
        return json.load(f)


def load_tf_sparse_configs(data_dir=DATA_DIR):
    """The legacy-TF sparse configurations, name -> :class:`VectorConfig` (dtypes per variable)."""
    return _load("tf_sparse_vectors", data_dir)[1]


class CallableFactory:
    """Builds the zero-argument learning-rate callable named in the JSON.

    ``factory(step_fn)`` returns ``lambda: formula(step_fn())``; ``step_fn`` is a zero-argument
    function giving s, the 0-based index of the apply() call in progress. Note: the recording's
    ``lr_after[s]`` equals ``lr_before[s]`` (the recorder's index only moved when the next apply
    started); ``step_fn=lambda: opt.raw`` gives the same learning rate inside every apply but reads
    ``formula(s + 1)`` after apply ``s``.
    """

    def __init__(self, name):
        self.name = name
        self.formula = CALLABLE_FORMULAS[name]

    def __call__(self, step_fn):
        formula = self.formula
        return lambda: formula(step_fn())

    def __repr__(self):
        return f"CallableFactory({self.name!r})"


def make_learning_rate(lr_entry, schedules_module=None):
    """Turn the JSON ``learning_rate`` entry into something an optimizer accepts.

    - a number -> that float;
    - ``{"schedule": "ExponentialDecay", "config": {...}}`` ->
      ``schedules_module.ExponentialDecay(**config)``; ``schedules_module`` defaults to
      ``numba_adamax.schedules``, imported only when needed;
    - ``{"callable": "geometric"}`` -> a :class:`CallableFactory` (call it with a step function).
    """
    if isinstance(lr_entry, dict) and "schedule" in lr_entry:
        if schedules_module is None:
            schedules_module = importlib.import_module("numba_adamax.schedules")
        cls = getattr(schedules_module, lr_entry["schedule"])
        return cls(**lr_entry["config"])
    if isinstance(lr_entry, dict) and "callable" in lr_entry:
        return CallableFactory(lr_entry["callable"])
    if isinstance(lr_entry, dict):
        raise ValueError(f"unknown learning_rate entry: {lr_entry!r}")
    return float(lr_entry)


def optimizer_kwargs(config, schedules_module=None, step_fn=None):
    """The constructor kwargs of ``config``, ready for a Keras-signature Adamax.

    The learning rate goes through :func:`make_learning_rate`; a callable needs ``step_fn`` (see
    :class:`CallableFactory`). For float64 configs a float learning rate is rounded to float32,
    because Keras kept it in a float32 variable (README, "Replaying them").
    """
    kwargs = dict(config.meta["kwargs"])
    if "learning_rate" in kwargs:
        lr = make_learning_rate(kwargs["learning_rate"], schedules_module)
        if isinstance(lr, CallableFactory):
            if step_fn is None:
                raise ValueError(f"{config.name}: a callable learning rate needs step_fn")
            lr = lr(step_fn)
        kwargs["learning_rate"] = lr
    elif config.is_float64:
        kwargs["learning_rate"] = 0.001  # the Keras default, rounded below like any float lr
    if config.is_float64 and isinstance(kwargs.get("learning_rate"), float):
        kwargs["learning_rate"] = float(np.float32(kwargs["learning_rate"]))
    return kwargs
