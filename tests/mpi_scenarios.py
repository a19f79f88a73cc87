"""Scenarios of the sharded optimizer, run under MPI by tests/test_mpi.py:

    mpiexec -n N python -m mpi4py tests/mpi_scenarios.py <case> <out-dir>

Every rank writes ``<out-dir>/<case>-<rank>.json``: a list of checks, each
``{"name": ..., "ok": bool, "detail": ..., "digest": ...}``. Each rank computes the
single-process reference itself (it can make every rank's gradients from their
seeds), so the checks are local; ``digest`` (a hash of the parameters) lets the test
see that the ranks agree.

The chunk size is made small here (``config.CHUNK``) so that variables of a few
thousand elements are split over up to four ranks, and the serial kernels always run
(``config.PARALLEL_THRESHOLD``): the logic does not depend on those values.

Cases: ``all`` (``steps`` then ``errors``), ``steps`` (every configuration of tests/configs.py, both stages, deterministic
and library reductions, sum and mean, sparse variables), ``errors`` (agreed failures),
``fail`` (one rank raises; the launcher must end the job), ``example``.
"""
import hashlib
import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from numba_adamax.kernels import config as kernel_config

kernel_config.CHUNK = 512
kernel_config.PARALLEL_THRESHOLD = 1 << 40

from configs import CONFIGS, Clock, make_kwargs
from mpi4py import MPI

import numba_adamax as na
from numba_adamax import distributed as nad
from numba_adamax._flat_buffer import aligned_offsets

COMM = nad.MPIComm(MPI.COMM_WORLD)
RANK, SIZE = COMM.rank, COMM.size
STEPS = 6

#: Variable names the configurations' weight-decay exclusions refer to.
SHAPES = {"w_a": (7, 5), "bias_b": (5,), "w_c": (3, 4, 2), "empty": (0,), "big": (2600,)}


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def gradients(seed, step, rank, shapes, dtypes, none=()):
    """Rank ``rank``'s gradients of call ``step`` (None for the names in ``none``)."""
    rng = np.random.default_rng([seed, step, rank])
    return [None if name in none else rng.standard_normal(shape).astype(dtype)
            for (name, shape), dtype in zip(shapes.items(), dtypes)]


def folded(seed, step, shapes, dtypes, reduce, none=()):
    """Every rank's gradients added in rank order (divided by N for ``"mean"``)."""
    per_rank = [gradients(seed, step, r, shapes, dtypes, none) for r in range(SIZE)]
    return [None if per_rank[0][i] is None else rank_order(
        [grads[i] for grads in per_rank], reduce) for i in range(len(shapes))]


def rank_order(per_rank, reduce):
    """A new array: ``per_rank[0] + per_rank[1] + ...`` in that order, divided by their
    number for ``"mean"``."""
    total = per_rank[0].copy()
    for other in per_rank[1:]:
        np.add(total, other, out=total)
    if reduce == "mean":
        np.divide(total, len(per_rank), out=total)
    return total


def quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def compare(opt, ref, params, ref_params):
    """Mismatches between the sharded optimizer and the reference (collective)."""
    bad = []
    for i, (p, q) in enumerate(zip(params, ref_params)):
        if not np.array_equal(p, q, equal_nan=True):
            bad.append(f"param {i}: max diff {np.nanmax(np.abs(p - q)) if p.size else 0}")
        for slot in opt.get_slot_names():
            full = opt.gather_slot(p, slot)
            want = ref.get_slot(q, slot)
            if not np.array_equal(full, want, equal_nan=True):
                bad.append(f"slot {slot} of {i}")
    if (opt.iterations, opt.skipped_steps) != (ref.iterations, ref.skipped_steps):
        bad.append(f"counters {(opt.iterations, opt.skipped_steps)} != "
                   f"{(ref.iterations, ref.skipped_steps)}")
    return bad


def run_config(name, config, *, stage, deterministic, reduce, flat, dtypes, seed):
    """STEPS calls of ``config`` sharded and on one process; the check's record."""
    clock = Clock()
    shapes = SHAPES
    if flat:
        params = na.FlatBuffer(shapes, np.float32)
        ref_params = na.FlatBuffer(shapes, np.float32)
        arrays, ref_arrays = list(params.arrays), list(ref_params.arrays)
    else:
        arrays = [np.zeros(s, d) for s, d in zip(shapes.values(), dtypes)]
        ref_arrays = [np.zeros(s, d) for s, d in zip(shapes.values(), dtypes)]
        params, ref_params = arrays, ref_arrays
    rng = np.random.default_rng(seed)
    for a, b in zip(arrays, ref_arrays):
        a[...] = rng.standard_normal(a.shape)
        b[...] = a
    opt = quiet(lambda: nad.ShardedAdamax(COMM, zero_stage=stage, reduce=reduce,
                                          deterministic=deterministic,
                                          **make_kwargs(config, clock)))
    ref = quiet(lambda: na.Adamax(**make_kwargs(config, clock)))
    if config.exclude_names:
        opt.exclude_from_weight_decay(var_names=list(config.exclude_names))
        ref.exclude_from_weight_decay(var_names=list(config.exclude_names))
    names = list(shapes)
    opt.build(params, names=None if flat else names)
    ref.build(ref_params, names=None if flat else names)
    for step in range(STEPS):
        clock.step = step
        none = ("w_c",) if step == 2 else ()  # a None gradient on every rank
        mine = gradients(seed, step, RANK, shapes, dtypes, none)
        if flat and not none:
            g = params.zeros_like()
            for dst, src in zip(g.arrays, mine):
                dst[...] = src
            mine = g
        ref_grads = folded(seed, step, shapes, dtypes, reduce, none)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.apply(mine, params)
            ref.apply(ref_grads, ref_arrays)
    if config.kwargs.get("use_ema"):
        opt.finalize_variable_values(params)
        ref.finalize_variable_values(ref_arrays)
    bad = compare(opt, ref, arrays, ref_arrays)
    close = all(np.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)
                for a, b in zip(arrays, ref_arrays))
    return {"name": name, "stage": stage, "deterministic": deterministic, "reduce": reduce,
            "flat": flat, "exact": not bad, "close": close, "detail": bad[:4],
            "digest": digest(arrays), "local_nbytes": opt.local_nbytes,
            "names": names}


def case_steps(out):
    f32 = [np.float32] * len(SHAPES)
    mixed = [np.float64, np.float32, np.float64, np.float32, np.float32]
    # both stages at three and four ranks too would double the slowest launches (the
    # ranks share two cores in CI); the launches at one and two ranks cover both
    stages = (0, 1) if SIZE <= 2 else (1,)
    for j, (name, config) in enumerate(CONFIGS.items()):
        for stage in stages:
            out.append(run_config(name, config, stage=stage, deterministic=True,
                                  reduce="mean" if j % 2 else "sum", flat=j % 3 != 0,
                                  dtypes=f32 if j % 3 != 0 else mixed, seed=j))
    for name in ("defaults", "global_clipnorm", "kitchen_sink"):
        for stage in (0, 1):
            out.append(run_config(name, CONFIGS[name], stage=stage, deterministic=False,
                                  reduce="mean", flat=True, dtypes=f32, seed=99))
    out.append(memory_check())
    out.extend(nonfinite_checks())
    out.extend(sparse_checks())


def memory_check():
    params = na.FlatBuffer({"a": (20000,), "b": (3000,)}, np.float32)
    opt = nad.ShardedAdamax(COMM, zero_stage=1, use_ema=True)
    opt.build(params)
    total = 3 * 4 * (20000 + 3000)  # m, u, ema in float32
    everyone = COMM.allgather_object(opt.local_nbytes)
    share = total / SIZE
    ok = sum(everyone) >= total and all(abs(b - share) <= 3 * 4 * (kernel_config.CHUNK + 32)
                                        for b in everyone)
    return {"name": "local_nbytes", "exact": ok, "close": ok, "detail": everyone,
            "digest": "", "stage": 1}


NONFINITE_SHAPES = {"a": (1500,), "big": (2600,), "c": (9,)}
BIG_OFFSET = aligned_offsets([1500, 2600, 9])[0][1]


def nonfinite_checks():
    out = []
    shapes = NONFINITE_SHAPES
    for policy in ("skip", "raise"):
        for stage in (0, 1):
            params = na.FlatBuffer(shapes, np.float32)
            ref_params = na.FlatBuffer(shapes, np.float32)
            opt = nad.ShardedAdamax(COMM, zero_stage=stage, deterministic=True,
                                    nonfinite=policy, global_clipnorm=1.0)
            ref = na.Adamax(nonfinite=policy, global_clipnorm=1.0)
            record = {"name": f"nonfinite_{policy}_{stage}", "stage": stage}
            messages = []
            for step in range(3):
                g = params.zeros_like()
                per_rank = [np.random.default_rng([7, step, r]).standard_normal(
                    g.data.size).astype(np.float32) for r in range(SIZE)]
                if step == 1:  # a NaN only in the last rank's gradient, in the split variable
                    per_rank[-1][BIG_OFFSET + 2000] = np.nan
                g.data[:] = per_rank[RANK]
                rg = ref_params.zeros_like()
                rg.data[:] = rank_order(per_rank, "mean")
                try:
                    opt.apply(g, params)
                except FloatingPointError as exc:
                    messages.append(str(exc))
                try:
                    ref.apply(rg, ref_params)
                except FloatingPointError:
                    pass
            bad = compare(opt, ref, list(params.arrays), list(ref_params.arrays))
            if policy == "raise":
                ok = len(messages) == 1 and "'big'" in messages[0]
            else:
                ok = not messages and opt.skipped_steps == 1
            record.update(exact=ok and not bad, close=ok, detail=[messages, bad],
                          digest=digest([params.data]))
            out.append(record)
    return out


def sparse_checks():
    """IndexedSlices for an embedding declared sparse (or, for the second settings, found
    sparse by the first apply, which builds): rows repeated within and across ranks,
    with accumulation and clipping, against one process given every rank's rows
    concatenated in rank order."""
    out = []
    settings = [{"learning_rate": 0.05}, {"learning_rate": 0.05, "global_clipnorm": 0.5},
                {"learning_rate": 0.05, "gradient_accumulation_steps": 2, "clipnorm": 0.3,
                 "weight_decay": 0.1}]
    for j, kwargs in enumerate(settings):
        for stage in (0, 1):
            shapes = {"emb": (300, 4), "w": (1800,), "emb2": (50, 3)}
            arrays = [np.random.default_rng(j).standard_normal(s).astype(np.float32)
                      for s in shapes.values()]
            ref_arrays = [a.copy() for a in arrays]
            opt = nad.ShardedAdamax(COMM, zero_stage=stage, deterministic=True, reduce="sum",
                                    sparse_variables=None if j == 1 else [0, 2], **kwargs)
            ref = na.Adamax(**kwargs)
            for step in range(4):
                rows = []
                for r in range(SIZE):
                    rng = np.random.default_rng([j, step, r, 1])
                    idx = rng.integers(0, 300, 12)
                    idx[3] = 7  # repeated on every rank
                    rows.append((idx, rng.standard_normal((12, 4)).astype(np.float32)))
                dense = [np.random.default_rng([j, step, r, 2]).standard_normal(1800).astype(
                    np.float32) for r in range(SIZE)]
                idx2 = [np.array([1, 1, 49]) for _ in range(SIZE)]
                val2 = [np.full((3, 3), r + 1.0, np.float32) for r in range(SIZE)]
                mine = [na.IndexedSlices(rows[RANK][1], rows[RANK][0]), dense[RANK],
                        na.IndexedSlices(val2[RANK], idx2[RANK])]
                opt.apply(mine, arrays)
                total = dense[0].copy()
                for r in range(1, SIZE):
                    np.add(total, dense[r], out=total)
                ref.apply([na.IndexedSlices(np.concatenate([v for _, v in rows]),
                                            np.concatenate([i for i, _ in rows])), total,
                           na.IndexedSlices(np.concatenate(val2), np.concatenate(idx2))],
                          ref_arrays)
            bad = compare(opt, ref, arrays, ref_arrays)
            out.append({"name": f"sparse_{j}_{stage}", "stage": stage, "exact": not bad,
                        "close": not bad, "detail": bad[:4], "digest": digest(arrays)})
    return out


def expect(exc_type, match, call):
    """Run ``call``; the record says whether it raised ``exc_type`` with ``match``."""
    try:
        call()
    except exc_type as exc:
        return match in str(exc), str(exc)
    except Exception as exc:  # noqa: BLE001 -- reported, not raised
        return False, f"{type(exc).__name__}: {exc}"
    return False, "did not raise"


def case_errors(out):
    def record(name, outcome, unchanged=True):
        ok, message = outcome
        out.append({"name": name, "exact": ok and unchanged, "close": ok, "detail": message,
                    "digest": ""})

    params = na.FlatBuffer({"a": (1500,), "b": (2000,)}, np.float32)
    before = params.data.copy()
    # a bad argument on one rank only: every rank raises the same error
    record("bad_argument_on_one_rank", expect(
        ValueError, "learning_rate",
        lambda: nad.ShardedAdamax(COMM, learning_rate=-1.0 if RANK == SIZE - 1 else 0.1)))
    record("bad_zero_stage", expect(ValueError, "zero_stage",
                                    lambda: nad.ShardedAdamax(COMM, zero_stage=2)))
    record("bad_reduce", expect(ValueError, "reduce",
                                lambda: nad.ShardedAdamax(COMM, reduce="max")))
    record("bad_comm", expect(TypeError, "communicator",
                              lambda: nad.ShardedAdamax(MPI.COMM_WORLD)))
    one = (True, "one rank")
    record("settings_differ", expect(ValueError, "different optimizer settings",
                                     lambda: nad.ShardedAdamax(COMM, epsilon=1e-7 + RANK))
           if SIZE > 1 else one)
    opt = nad.ShardedAdamax(COMM, zero_stage=1)
    opt.build(params)
    # the None pattern differs: rank 0 passes None for b
    g = [np.ones(1500, np.float32), None if RANK == 0 else np.ones(2000, np.float32)]
    record("none_pattern_differs", expect(ValueError, "same pattern",
                                          lambda: opt.apply(g, list(params.arrays)))
           if SIZE > 1 else one, np.array_equal(params.data, before) and opt.iterations == 0)
    # a wrong gradient shape on one rank only
    g = [np.ones(1500, np.float32),
         np.ones(2001 if RANK == SIZE - 1 else 2000, np.float32)]
    record("bad_gradient_on_one_rank", expect(ValueError, f"rank {SIZE - 1}" if SIZE > 1
                                              else "shape",
                                              lambda: opt.apply(g, list(params.arrays))),
           np.array_equal(params.data, before) and opt.iterations == 0)
    # a callable learning rate that differs across ranks
    opt2 = nad.ShardedAdamax(COMM, learning_rate=lambda: 0.01 * (1 + RANK))
    opt2.build(params)
    record("callable_rate_differs",
           expect(ValueError, "differs across the ranks", lambda: opt2.apply(
               params.zeros_like(), params)) if SIZE > 1 else one,
           np.array_equal(params.data, before) and opt2.iterations == 0)
    record("sparse_not_declared", expect(
        ValueError, "sparse_variables",
        lambda: opt.apply([na.IndexedSlices(np.ones(1, np.float32), np.array([0])),
                           np.ones(2000, np.float32)], list(params.arrays))))
    # a first apply builds, and the ranks' gradients disagree on what is sparse
    fresh = nad.ShardedAdamax(COMM)
    arrays = [np.ones((20, 2), np.float32), np.ones(30, np.float32)]
    first = [na.IndexedSlices(np.ones((1, 2), np.float32), np.array([3])) if RANK == 0
             else np.ones((20, 2), np.float32), np.ones(30, np.float32)]
    record("first_apply_sparse_differs",
           expect(ValueError, "variables differ", lambda: fresh.apply(first, arrays))
           if SIZE > 1 else one,
           all(np.all(a == 1) for a in arrays) and fresh.iterations == 0)
    record("plan_differs", expect(
        ValueError, "variables differ",
        lambda: nad.ShardedAdamax(COMM).build([np.zeros(10 + RANK, np.float32)]))
           if SIZE > 1 else one)
    # get_slot is this rank's piece (None when it holds none); the pieces add up
    held = COMM.allgather_object([None if opt.get_slot(v, "m") is None
                                  else int(opt.get_slot(v, "m").size) for v in params.arrays])
    record("get_slot_pieces", (all(sum(r[k] or 0 for r in held) == v.size
                                   for k, v in enumerate(params.arrays)), held))
    record("bind_refused", expect(TypeError, "apply", lambda: opt.bind(params.zeros_like())))
    record("state_dict_refused", expect(TypeError, "gather_slot", opt.state_dict))
    # broadcast_ makes every rank equal to root's
    mine = na.FlatBuffer({"a": (5,)}, np.float64)
    mine.data[:] = RANK + 1
    nad.broadcast_(mine, COMM, root=SIZE - 1)
    record("broadcast", (bool(np.all(mine.data == SIZE)), list(mine.data)))
    # the functional pair equals the class
    state = nad.init(params, COMM, zero_stage=1, deterministic=True, learning_rate=0.1)
    twin = na.FlatBuffer({"a": (1500,), "b": (2000,)}, np.float32)
    twin.data[:] = params.data
    opt3 = nad.ShardedAdamax(COMM, zero_stage=1, deterministic=True, learning_rate=0.1)
    g = params.zeros_like()
    g.data[:] = np.random.default_rng(RANK).standard_normal(g.data.size)
    nad.step(params, g, state)
    opt3.apply(g, twin)
    record("functional_equals_class", (np.array_equal(params.data, twin.data)
                                       and state.iterations == opt3.iterations == 1, ""))
    record("functional_rejects_state", expect(TypeError, "ShardedState",
                                              lambda: nad.step(params, g, object())))
    out.extend(settings_change_checks())


#: (setting, value in force, value one rank assigns later, through the class or the
#: functional state)
SETTING_CHANGES = [("learning_rate", 0.01, 0.1, "class"), ("clipnorm", None, 2.0, "class"),
                   ("weight_decay", 0.004, 0.0, "class"), ("beta_1", 0.9, 0.8, "functional"),
                   ("excluded_from_weight_decay", [], ["a"], "class")]


def settings_change_checks():
    """After two steps, rank 1 alone assigns another value to one setting: the next
    call raises the same ValueError on every rank, naming the setting and its values
    per rank, and changes nothing; once rank 1 sets it back, the call runs and equals
    one process. The record's ``detail`` is the message, ``digest`` the parameters'."""
    out = []
    shapes = {"a": (1500,), "b": (2000,)}
    for setting, value, other, api in SETTING_CHANGES:
        exclusions = setting == "excluded_from_weight_decay"
        kwargs = ({"learning_rate": 0.01, "weight_decay": 0.004} if exclusions
                  else {"learning_rate": 0.01, setting: value})
        params = na.FlatBuffer(shapes, np.float32)
        params.data[:] = np.random.default_rng(3).standard_normal(params.data.size)
        ref_params = na.FlatBuffer(shapes, np.float32)
        ref_params.data[:] = params.data
        ref = na.Adamax(**kwargs)

        def assign(new, opt=None, hp=None):
            if exclusions:
                opt.exclude_from_weight_decay(var_names=new or None)
            else:
                setattr(opt if api == "class" else hp, setting, new)

        if api == "class":
            opt = nad.ShardedAdamax(COMM, zero_stage=1, deterministic=True, **kwargs)
            hp = opt._hp

            def call(g, opt=opt, params=params):
                opt.apply(g, params)
        else:
            state = nad.init(params, COMM, zero_stage=1, deterministic=True, **kwargs)
            opt = ShardedView(state)
            hp = state.hyperparameters

            def call(g, state=state, params=params):
                nad.step(params, g, state)

        def step(k, sharded=True, ref_too=True):
            per_rank = [np.random.default_rng([11, k, r]).standard_normal(
                params.data.size).astype(np.float32) for r in range(SIZE)]
            g = params.zeros_like()
            g.data[:] = per_rank[RANK]
            total = ref_params.zeros_like()
            total.data[:] = rank_order(per_rank, "mean")
            if sharded:
                call(g)
            if ref_too:
                ref.apply(total, ref_params)

        step(0)
        step(1)
        before = digest([params.data])
        if RANK == 1:
            assign(other, opt, hp)
        outcome = expect(ValueError, setting, lambda: step(2, ref_too=False)) \
            if SIZE > 1 else (True, "one rank")
        named = SIZE == 1 or all(str(v) in outcome[1] for v in (value, other))
        unchanged = digest([params.data]) == before and not compare(
            opt, ref, list(params.arrays), list(ref_params.arrays))
        if RANK == 1:
            assign(value, opt, hp)
        step(2)
        bad = compare(opt, ref, list(params.arrays), list(ref_params.arrays))
        out.append({"name": f"setting_changed_{setting}", "exact": outcome[0] and named
                    and unchanged and not bad, "close": outcome[0], "detail": outcome[1],
                    "digest": digest([params.data]), "mismatches": bad[:4]})
    return out


class ShardedView:
    """The slots and counters of a functional ``ShardedState``, as ``compare`` reads
    an optimizer."""

    def __init__(self, state):
        self.state = state

    def get_slot_names(self):
        return self.state.slot_names()

    def gather_slot(self, variable, slot):
        return self.state.gather_slot(self.state.index_of(variable), slot)

    @property
    def iterations(self):
        return self.state.iterations

    @property
    def skipped_steps(self):
        return self.state.skipped_steps


def case_fail(out):
    # warm, so that only the failure is timed
    COMM.barrier()
    if RANK == SIZE - 1:
        raise RuntimeError("a bug on one rank")
    COMM.barrier()  # the other ranks wait here until the launcher ends the job
    out.append({"name": "not reached", "exact": False, "close": False, "detail": "",
                "digest": ""})


def case_device(out):
    """Device variables (run under NUMBA_ENABLE_CUDASIM=1 by the test): gradients and
    parameters staged through host buffers, the update on the device; equal to one
    process stepping the same device variables on the rank-order sum."""
    from numba import cuda
    kernel_config.CHUNK = 64
    shapes = {"w_a": (200,), "bias_b": (7,), "big": (130,)}  # w_a is split at two ranks
    for name, stage in (("global_clipnorm", 1), ("accum_2_ema_overwrite_1", 1),
                        ("weight_decay_exclude", 0)):
        config = CONFIGS[name]
        rng = np.random.default_rng(5)
        start = [rng.standard_normal(sh).astype(np.float32) for sh in shapes.values()]
        params = [cuda.to_device(a) for a in start]
        ref_params = [cuda.to_device(a) for a in start]
        opt = nad.ShardedAdamax(COMM, zero_stage=stage, deterministic=True,
                                **make_kwargs(config))
        ref = na.Adamax(**make_kwargs(config))
        opt.build(params, names=list(shapes))
        ref.build(ref_params, names=list(shapes))
        if config.exclude_names:
            opt.exclude_from_weight_decay(var_names=list(config.exclude_names))
            ref.exclude_from_weight_decay(var_names=list(config.exclude_names))
        for step in range(3):
            per_rank = [[np.random.default_rng([step, r, k]).standard_normal(sh).astype(
                np.float32) for k, sh in enumerate(shapes.values())] for r in range(SIZE)]
            folded_grads = []
            for k in range(len(shapes)):
                total = per_rank[0][k].copy()
                for r in range(1, SIZE):
                    np.add(total, per_rank[r][k], out=total)
                np.divide(total, SIZE, out=total)
                folded_grads.append(total)
            opt.apply([cuda.to_device(g) for g in per_rank[RANK]], params)
            ref.apply([cuda.to_device(g) for g in folded_grads], ref_params)
        bad = []
        for k, (p, q) in enumerate(zip(params, ref_params)):
            if not np.array_equal(p.copy_to_host(), q.copy_to_host()):
                bad.append(f"param {k}")
            for slot in opt.get_slot_names():
                if not np.array_equal(opt.gather_slot(p, slot),
                                      ref.get_slot(q, slot).copy_to_host()):
                    bad.append(f"slot {slot} of {k}")
        out.append({"name": f"device_{name}_{stage}", "stage": stage, "exact": not bad,
                    "close": not bad, "detail": bad[:4],
                    "digest": digest([p.copy_to_host() for p in params])})


def case_all(out):
    case_steps(out)
    case_errors(out)


def main():
    case, directory = sys.argv[1], sys.argv[2]
    out = []
    cases = {"all": case_all, "steps": case_steps, "errors": case_errors, "fail": case_fail,
             "device": case_device}
    cases[case](out)
    with open(os.path.join(directory, f"{case}-{RANK}.json"), "w") as f:
        json.dump(out, f, default=str)


if __name__ == "__main__":
    main()
