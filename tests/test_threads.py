"""Thread safety: the kernels release the GIL, and optimizers that share no variables can step
in parallel Python threads with exactly the results of sequential runs."""
import threading

import numpy as np
import pytest

import numba_adamax as na
from numba_adamax.kernels import cpu as cpu_kernels
from conftest import assert_unchanged, snapshot_state

SIZES = (100_003, 5, 0, 40_000)  # two parallel-loop sizes, a serial one, an empty one
STEPS = 12
SETTINGS = [
    dict(learning_rate=0.05, gradient_accumulation_steps=3, use_ema=True,
         ema_overwrite_frequency=2, clipnorm=0.5, weight_decay=0.1, loss_scale_factor=64.0),
    dict(learning_rate=0.01, global_clipnorm=1.0, nonfinite="skip"),
    dict(learning_rate=0.02, clipvalue=0.3, nonfinite="raise"),
]


def test_every_kernel_releases_the_gil():
    for kernel in cpu_kernels.DISPATCHERS:
        assert kernel.targetoptions["nogil"] is True, kernel.__name__


def _problem(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    rows = [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(STEPS)]
    rows[4][0][17] = np.nan  # skipped under "skip"; propagates under the others
    return params, rows


def _worker(api, kwargs, params, rows, barrier=None):
    if api == "class":
        opt = na.Adamax(**kwargs)
        opt.build(params)
        state = opt.state
    else:
        state = na.init(params, **kwargs)
    if barrier is not None:
        barrier.wait()
    for row in rows:
        try:
            if api == "class":
                opt.apply(row, params)
            else:
                na.step(params, row, state)
        except FloatingPointError:
            pass  # nonfinite="raise": the call changed nothing
    return state


@pytest.mark.parametrize("api", ["class", "functional"])
def test_parallel_threads_match_sequential_runs(api):
    problems = [_problem(seed, dtype) for seed, dtype in
                zip(range(len(SETTINGS)), (np.float32, np.float64, np.float32))]
    sequential = []
    for kwargs, (params, rows) in zip(SETTINGS, problems):
        own = [p.copy() for p in params]
        sequential.append(snapshot_state(_worker(api, kwargs, own, rows), own))

    for _ in range(3):  # a few rounds, to give interleavings a chance
        barrier = threading.Barrier(len(SETTINGS))
        copies = [[p.copy() for p in params] for params, _ in problems]
        states, errors = [None] * len(SETTINGS), []

        def run(k):
            try:
                states[k] = _worker(api, SETTINGS[k], copies[k], problems[k][1], barrier)
            except BaseException as exc:  # reported below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(SETTINGS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for k, want in enumerate(sequential):
            assert_unchanged(want, snapshot_state(states[k], copies[k]), f"optimizer {k}")
    assert int(sequential[1]["skipped_steps"]) == 1  # the "skip" optimizer skipped the NaN call
