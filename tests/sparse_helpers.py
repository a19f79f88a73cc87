"""Sparse-gradient helpers shared by tests/test_sparse.py and tests/test_cuda.py.

* The recorded legacy-TF vectors (tests/data/tf_sparse_vectors.*): :data:`TF`, the replay
  kwargs and gradients of a configuration, and :func:`replay_legacy` (class or functional API,
  on host arrays; cached).
* Random sparse gradients: the index :data:`PATTERNS` (duplicates, empty index lists, every
  row, one row many times, a permutation), :func:`make_indices`, :func:`make_gradient`.
"""
import functools
import warnings

import numpy as np

import numba_adamax as na
from conformance import load_tf_sparse_configs

__all__ = [
    "PATTERNS",
    "SPARSE_NAMES",
    "TF",
    "TF_NAMES",
    "legacy_grads",
    "legacy_kwargs",
    "make_gradient",
    "make_indices",
    "replay_legacy",
]

# ============================================================ recorded legacy-TF trajectories

TF = load_tf_sparse_configs()
TF_NAMES = list(TF)
#: Legacy defaults; the legacy optimizer keeps these hyperparameters in float32 variables.
_LEGACY_DEFAULTS = dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999)


def legacy_kwargs(cfg):
    """Constructor kwargs replaying ``cfg``: learning rate, betas and decay rounded to float32
    (tests/data/README.md, "Replaying them"); ``lr`` stays the keyword it was recorded with."""
    kwargs = {**_LEGACY_DEFAULTS, **cfg.meta["kwargs"]}
    if "lr" in kwargs:
        del kwargs["learning_rate"]
    for key in ("learning_rate", "lr", "beta_1", "beta_2", "decay"):
        if key in kwargs:
            kwargs[key] = float(np.float32(kwargs[key]))
    return kwargs


def legacy_grads(cfg, s):
    """The gradients of step ``s``: IndexedSlices, or the densified sums on dense steps."""
    dense = bool(cfg.arrays["is_dense_step"][s])
    out = []
    for j, var in enumerate(cfg.meta["variables"]):
        if dense:
            out.append(np.array(cfg.arrays[f"dense_grad{j}"][s]))
        else:
            out.append(na.IndexedSlices(np.array(cfg.arrays[f"values{j}"][s]),
                                        np.array(cfg.arrays[f"indices{j}"][s]),
                                        dense_shape=tuple(var["shape"])))
    return out


@functools.lru_cache(maxsize=None)
def replay_legacy(name, api):
    """Replay ``name`` through the class or the functional API; returns the trajectories
    (``value{j}``, ``m{j}``, ``v{j}``, ``iterations``, ``lr``) and the final ``get_weights``."""
    cfg = TF[name]
    kwargs = legacy_kwargs(cfg)
    params = [np.array(cfg.arrays[f"value{j}"][0]) for j in range(cfg.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # lr and decay are deprecated
        if api == "class":
            opt = na.Adamax(**kwargs)
            opt.build(params, names=cfg.var_names)
            state = opt.state
        else:
            if "lr" in kwargs:
                kwargs["learning_rate"] = kwargs.pop("lr")
            state = na.init(params, names=cfg.var_names, **kwargs)
    out = {"iterations": [state.iterations], "lr": []}
    for j in range(cfg.n_vars):
        out[f"value{j}"], out[f"m{j}"], out[f"v{j}"] = [params[j].copy()], [], []
        out[f"m{j}"].append(state.m[j].copy())
        out[f"v{j}"].append(state.u[j].copy())
    for s in range(cfg.steps):
        out["lr"].append(state.hyperparameters.learning_rate_at(state.raw_steps))
        grads = legacy_grads(cfg, s)
        if api == "class":
            opt.apply(grads, params)
        else:
            na.step(params, grads, state)
        out["iterations"].append(state.iterations)
        for j in range(cfg.n_vars):
            out[f"value{j}"].append(params[j].copy())
            out[f"m{j}"].append(state.m[j].copy())
            out[f"v{j}"].append(state.u[j].copy())
    out = {k: np.array(v) for k, v in out.items()}
    # the legacy get_weights() order: counter, every m, then every v
    weights = [np.array(state.raw_steps)] + [m.copy() for m in state.m] + \
        [u.copy() for u in state.u]
    return out, weights


# ============================================================ random sparse gradients

#: Variable names of the sparse problems: "bias" and "big" match ``configs.EXCLUDE``, "w_"
#: matches ``^w_``.
SPARSE_NAMES = ["w_emb", "bias", "big"]
PATTERNS = ("random", "empty", "all_rows", "one_row_many", "permutation")


def make_indices(rng, pattern, n_rows):
    if pattern == "empty":
        return np.zeros(0, np.int64)
    if pattern == "all_rows":
        return np.concatenate([rng.permutation(n_rows), rng.integers(0, n_rows, 3)])
    if pattern == "one_row_many":
        return np.full(int(rng.integers(2, 9)), rng.integers(0, n_rows))
    if pattern == "permutation":
        return rng.permutation(n_rows)
    return rng.integers(0, n_rows, int(rng.integers(1, 2 * n_rows + 2)))


def make_gradient(rng, kind, pattern, shape, dtype):
    """A gradient of ``kind`` ("none", "dense", "sparse"); indices in varying integer dtypes."""
    if kind == "none":
        return None
    if kind == "dense":
        return rng.standard_normal(shape).astype(dtype)
    indices = make_indices(rng, pattern, shape[0])
    indices = indices.astype([np.int64, np.int32, np.uint16][rng.integers(3)])
    values = rng.standard_normal((indices.size, *shape[1:])).astype(dtype)
    return na.IndexedSlices(values, indices, dense_shape=shape if rng.random() < 0.5 else None)
