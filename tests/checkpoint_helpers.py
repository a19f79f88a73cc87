"""Shared pieces of the checkpoint tests: a deterministic problem per configuration, runs of
the class and the functional API over a range of calls.

Run as a script (``python tests/checkpoint_helpers.py DIR``) it is the second half of the
exact-resume test: for every case written by ``save_first_halves(DIR)`` it rebuilds the
variables and the optimizer in this fresh process, loads the checkpoint file, runs the
remaining calls and writes the results to ``DIR/resumed.npz``.
"""
import hashlib
import json
import os
import sys
import warnings

import numpy as np

import numba_adamax as na
from configs import CONFIGS, Clock, Config, build_optimizer, init_state
from conftest import NAMES, SHAPES, snapshot_state

DTYPES = (np.float32, np.float64, np.float32, np.float64, np.float32)
CALLS = 10   # calls in a whole run
HALF = 5     # calls before the checkpoint: mid-window for gas=2 and gas=3
NONE_AT = frozenset({(1, 1), (3, 0), (6, 4), (8, 2)})
NAN_AT = frozenset({(2, 1), (7, 0)})  # only for the cases with a nonfinite policy

#: The shared table plus the non-finite policies (a NaN gradient on calls 2 and 7).
RESUME_CONFIGS = dict(CONFIGS)
RESUME_CONFIGS["skip_nonfinite_accum"] = Config({"learning_rate": 0.05, "nonfinite": "skip",
                                                 "gradient_accumulation_steps": 3,
                                                 "use_ema": True})
RESUME_CONFIGS["skip_nonfinite_clipnorm"] = Config({"learning_rate": 0.05, "nonfinite": "skip",
                                                    "clipnorm": 0.5})
APIS = ("class", "functional")


def files_digest(directory):
    """Every file under ``directory`` with the SHA-256 of its bytes."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def problem(name):
    """``(initial variables, gradient rows)`` for configuration ``name``; deterministic."""
    config = RESUME_CONFIGS[name]
    rng = np.random.default_rng(sorted(RESUME_CONFIGS).index(name))
    scale = config.kwargs.get("loss_scale_factor") or 1.0
    init = [np.array(rng.standard_normal(s), dtype=d) for s, d in zip(SHAPES, DTYPES)]
    rows = []
    for c in range(CALLS):
        row = []
        for j, (shape, dtype) in enumerate(zip(SHAPES, DTYPES)):
            g = np.array(rng.standard_normal(shape) * scale, dtype=dtype)
            if "nonfinite" in config.kwargs and (c, j) in NAN_AT:
                g.reshape(-1)[0] = np.nan
            row.append(None if (c, j) in NONE_AT else g)
        rows.append(row)
    return init, rows


class Run:
    """One optimizer (class or functional) over its own copy of the variables."""

    def __init__(self, name, api, params=None):
        self.config = RESUME_CONFIGS[name]
        self.api = api
        self.clock = Clock()
        init, self.rows = problem(name)
        self.params = [x.copy() for x in (init if params is None else params)]
        if api == "class":
            self.opt = build_optimizer(self.config, self.clock)
            self.opt.build(self.params, names=list(NAMES))
        else:
            self.opt = None
            self.state = init_state(self.config, self.params, names=list(NAMES), clock=self.clock)

    @property
    def optimizer_state(self):
        return self.opt.state if self.opt is not None else self.state

    def run(self, start, stop):
        """Apply the gradient rows ``start`` .. ``stop - 1`` (call indices)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # None gradients warn
            for c in range(start, stop):
                self.clock.step = c
                if self.opt is not None:
                    self.opt.apply(self.rows[c], self.params)
                else:
                    na.step(self.params, self.rows[c], self.state)
        return self

    def snapshot(self):
        """``conftest.snapshot_state`` of this run: variables, every slot, the counters."""
        return snapshot_state(self.optimizer_state, self.params)

    def save(self, path):
        if self.opt is not None:
            self.opt.save_state(path)
        else:
            na.save_state(self.state, path)

    def load(self, path):
        if self.opt is not None:
            self.opt.load_state(path)
        else:
            na.load_state(self.state, path)


def case_files(directory, name, api):
    stem = os.path.join(directory, f"{name}.{api}")
    return stem + ".ckpt.npz", stem + ".params.npz"


def save_first_halves(directory):
    """Run the first ``HALF`` calls of every case and save the optimizer checkpoint and
    the variables (``np.savez``) for the child process."""
    for name in RESUME_CONFIGS:
        for api in APIS:
            run = Run(name, api).run(0, HALF)
            checkpoint, params = case_files(directory, name, api)
            run.save(checkpoint)
            np.savez(params, *run.params)


def resume_second_halves(directory):
    """The child process: load every case and run the remaining calls; write all
    snapshots to ``directory/resumed.npz``."""
    results = {}
    for name in RESUME_CONFIGS:
        for api in APIS:
            checkpoint, params_file = case_files(directory, name, api)
            with np.load(params_file) as f:
                params = [f[f"arr_{i}"] for i in range(len(NAMES))]
            run = Run(name, api, params=params)
            run.load(checkpoint)
            run.run(HALF, CALLS)
            for key, value in run.snapshot().items():
                results[f"{name}|{api}|{key}"] = value
    np.savez(os.path.join(directory, "resumed.npz"), **results)
    print(json.dumps({"cases": len(RESUME_CONFIGS) * len(APIS)}))


if __name__ == "__main__":
    resume_second_halves(sys.argv[1])
