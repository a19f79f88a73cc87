"""The partition plan of the sharded optimizer: pure NumPy, no processes launched."""
import numpy as np
import pytest

import numba_adamax as na
from numba_adamax import distributed as nad
from numba_adamax._flat_buffer import aligned_offsets
from numba_adamax.kernels import config

CHUNK = config.CHUNK

LAYOUTS = {
    "one_big": ([(5 * CHUNK + 123,)], [np.float32]),
    "mixed": ([(12000,), (40,), (800,), (20,), (70000,), (3,)], [np.float32] * 6),
    "zero_size": ([(0,), (3 * CHUNK,), (0, 4), (17,)], [np.float32] * 4),
    "dtypes": ([(CHUNK + 5,), (9,), (2 * CHUNK,), (4, 4), (3,)],
               [np.float32, np.float64, np.float64, np.float32, np.float64]),
    "tiny": ([(3,), (2, 2)], [np.float64] * 2),
}


def _plan(name, n, sparse=()):
    shapes, dtypes = LAYOUTS[name]
    return nad.ShardPlan(shapes, dtypes, n, sparse)


def _elements(plan, rank):
    """{variable: set of element indices} the rank owns."""
    out = {}
    for p in plan.pieces(rank):
        out.setdefault(p.variable, set()).update(range(p.begin, p.end))
    return out


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 16, 33, 64])
def test_pieces_cover_every_element_once_on_chunk_boundaries(name, n):
    plan = _plan(name, n)
    shapes, _ = LAYOUTS[name]
    seen = {i: np.zeros(int(np.prod(s)), np.int64) for i, s in enumerate(shapes)}
    for r in range(n):
        for p in plan.pieces(r):
            assert 0 <= p.begin < p.end <= p.variable_size
            assert p.begin % CHUNK == 0  # cut on the variable's chunk starts
            assert p.end % CHUNK == 0 or p.end == p.variable_size
            seen[p.variable][p.begin:p.end] += 1
    for i, counts in seen.items():
        assert np.all(counts == 1), (i, counts)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 9, 64])
def test_each_groups_ranges_are_contiguous_and_balanced_within_a_chunk(name, n):
    plan = _plan(name, n)
    for group in plan.groups:
        assert group.cuts[0] == 0 and group.cuts[-1] == group.comm_total
        assert np.all(np.diff(group.cuts) >= 0)
        # the same layout as a single-process state's flat buffer
        offsets, total = aligned_offsets(group.sizes)
        assert (list(group.offsets), group.total) == (offsets, total)
        ideal = group.comm_total / n
        assert np.all(np.abs(group.counts - ideal) <= CHUNK + 1), (group.counts, ideal)
        # the chunk cuts index the same boundaries
        starts = [group.comm_offsets[k] + b for k, b, _ in group.dense_chunks] + [
            group.comm_total]
        assert [starts[c] for c in group.chunk_cuts] == list(group.cuts)
        # a rank's pieces are exactly its range
        for r in range(n):
            owned = sum(p.size for p in group.dense_pieces(r))
            lo, hi = group.cuts[r], group.cuts[r + 1]
            inside = sum(max(0, min(hi, o + s) - max(lo, o))
                         for o, s in zip(group.comm_offsets, group.sizes))
            assert owned == inside


def test_chunk_table_is_the_single_process_one():
    shapes, dtypes = LAYOUTS["dtypes"]
    plan = _plan("dtypes", 3)
    state = na.init([np.zeros(s, d) for s, d in zip(shapes, dtypes)])
    assert len(state.groups) == len(plan.groups)
    for group, sg in zip(plan.groups, state.groups):
        assert group.indices == sg.indices
        assert group.offsets == sg.offsets and group.total == sg.total
        assert np.array_equal(group.chunks, sg.chunks)
        assert np.array_equal(group.dense_chunks, sg.chunks)  # no sparse variable


def test_more_ranks_than_chunks_leaves_ranks_empty():
    plan = _plan("tiny", 8)
    owned = [plan.pieces(r) for r in range(8)]
    assert sum(bool(p) for p in owned) == 2  # two variables, one chunk each
    assert [len(p) for p in owned].count(0) == 6
    assert sum(plan.slot_elements(r) for r in range(8)) == aligned_offsets([3, 4])[1]


def test_zero_size_variables_have_no_piece_and_no_holder():
    plan = _plan("zero_size", 3)
    assert all(p.variable not in (0, 2) for r in range(3) for p in plan.pieces(r))
    assert plan.holders(0) == [] and plan.holders(2) == []
    assert plan.holders(1) == [0, 1, 2]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_sparse_variables_are_owned_whole_and_leave_the_dense_layout(n):
    shapes, dtypes = LAYOUTS["mixed"]
    plan = nad.ShardPlan(shapes, dtypes, n, sparse={4, 1})
    for i in (1, 4):
        (owner,) = plan.holders(i)
        pieces = [p for p in plan.pieces(owner) if p.variable == i]
        assert len(pieces) == 1 and pieces[0].whole
        assert all(p.variable != i for r in range(n) if r != owner for p in plan.pieces(r))
    group = plan.groups[0]
    assert group.comm_total == aligned_offsets([12000, 0, 800, 20, 0, 3])[1]
    assert not any(k in (1, 4) for k in group.dense_chunks[:, 0])
    # every element still owned exactly once
    total = sum(len(e) for r in range(n) for e in _elements(plan, r).values())
    assert total == sum(int(np.prod(s)) for s in shapes)


def test_sparse_owners_spread_over_the_least_loaded_ranks():
    shapes = [(1000, 8)] * 4 + [(10,)]
    plan = nad.ShardPlan(shapes, [np.float32] * 5, 4, sparse={0, 1, 2, 3})
    assert sorted(plan.sparse_owner.values()) == [0, 1, 2, 3]


def test_the_plan_is_deterministic_and_described_by_its_key():
    a, b = _plan("mixed", 5), _plan("mixed", 5)
    assert a.key() == b.key()
    assert [a.pieces(r) for r in range(5)] == [b.pieces(r) for r in range(5)]
    assert _plan("mixed", 4).key() != a.key()


def test_shard_plan_takes_buffers_lists_and_dicts_and_names_sparse_variables():
    buf = na.FlatBuffer({"emb": (100, 4), "w": (30000,)}, np.float32)
    plan = nad.shard_plan(buf, 2, sparse_variables=["emb"])
    assert plan.sparse == {0}
    assert nad.shard_plan(list(buf.arrays), 2, sparse_variables=[0]).key() == plan.key()
    assert nad.shard_plan(dict(zip(buf.names, buf.arrays)), 2).sparse == frozenset()


@pytest.mark.parametrize("bad, kind, match", [
    (0, ValueError, "world_size"), (2.0, ValueError, "world_size"),
    (True, ValueError, "world_size")])
def test_shard_plan_rejects_a_bad_world_size(bad, kind, match):
    with pytest.raises(kind, match=match):
        nad.shard_plan([np.zeros(3)], bad)


def test_shard_plan_rejects_bad_sparse_variables():
    params = [np.zeros((3, 2)), np.zeros(4)]
    with pytest.raises(ValueError, match="not a variable"):
        nad.shard_plan(params, 2, sparse_variables=["nope"])
    with pytest.raises(ValueError, match="indices"):
        nad.shard_plan(params, 2, sparse_variables=[5])
    with pytest.raises(TypeError, match="list of variable names"):
        nad.shard_plan(params, 2, sparse_variables="variable_0")
    with pytest.raises(TypeError, match="must be an array"):
        nad.shard_plan([np.zeros(3), 7], 2)


# ---------------------------------------------------------------- one process (SelfComm)


def test_the_distributed_guide_runs(tmp_path, monkeypatch):
    """Every Python block of docs/guide/distributed.md, in order, in one namespace."""
    import re
    from pathlib import Path
    page = Path(__file__).resolve().parent.parent / "docs" / "guide" / "distributed.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name} block {i}", "exec"), namespace)  # noqa: S102


def test_one_process_bad_arguments_raise_and_change_nothing():
    params = na.FlatBuffer({"a": (30,), "b": (4,)}, np.float32)
    params.data[:] = 1.0
    opt = nad.ShardedAdamax(nad.SelfComm(), learning_rate=0.1, nonfinite="raise")
    with pytest.raises(ValueError, match="must already be built"):
        opt.apply(params.zeros_like())
    assert not opt.built
    bad = [np.ones(30, np.float32), np.ones(5, np.float32)]
    with pytest.raises(ValueError, match="shape"):
        opt.apply(bad, list(params.arrays))
    assert not opt.built  # a failed first call builds nothing
    opt.build(params)
    g = params.zeros_like()
    g.arrays[1][2] = np.inf
    with pytest.raises(FloatingPointError, match="'b'"):
        opt.apply(g, params)
    assert np.all(params.data[:34] == 1.0) and opt.iterations == 0
    assert opt.get_slot("a", "m").shape == (30,)
    with pytest.raises(ValueError, match="Unknown slot"):
        opt.get_slot("a", "ema")
    with pytest.raises(TypeError, match="gather_slot"):
        opt.state_dict()
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle
        pickle.dumps(opt)
    assert "iterations=0" in repr(opt)


def test_a_first_apply_takes_its_indexed_slices_as_the_sparse_variables():
    """Built by the first apply, the variables given IndexedSlices there are sparse (owned
    whole) and step as one process does; a variable the build did not make sparse refuses
    IndexedSlices later, naming the argument, with nothing changed."""
    start = [np.full((6, 2), 1.0, np.float32), np.full(5, 2.0, np.float32)]
    for layout in ("list", "dict"):
        arrays = [a.copy() for a in start]
        ref_arrays = [a.copy() for a in start]
        opt = nad.ShardedAdamax(nad.SelfComm(), learning_rate=0.1)
        ref = na.Adamax(learning_rate=0.1)
        rows = na.IndexedSlices(np.ones((2, 2), np.float32), np.array([4, 1]))
        dense = np.full(5, 0.5, np.float32)
        if layout == "dict":
            opt.apply({"emb": rows, "w": dense}, {"emb": arrays[0], "w": arrays[1]})
        else:
            opt.apply([rows, dense], arrays)
        ref.apply([rows, dense], ref_arrays)
        assert opt._state.plan.sparse == {0}
        assert all(np.array_equal(a, b) for a, b in zip(arrays, ref_arrays))
        before = [a.copy() for a in arrays]
        with pytest.raises(ValueError, match="not built as a sparse one"):
            opt.apply([None, na.IndexedSlices(np.ones((1,), np.float32), np.array([0]))],
                      arrays)
        with pytest.raises(ValueError, match="built as a sparse one; pass an IndexedSlices"):
            opt.apply([np.ones((6, 2), np.float32), dense], arrays)
        assert all(np.array_equal(a, b) for a, b in zip(arrays, before))
        assert opt.iterations == 1
    built = nad.ShardedAdamax(nad.SelfComm())
    built.build([a.copy() for a in start])
    assert built._state.plan.sparse == frozenset()  # an explicit build declares none

    # declared variables stay sparse when the building call gives one of them None
    start3 = [np.full((6, 2), 1.0, np.float32), np.full(5, 2.0, np.float32),
              np.full((4, 3), 3.0, np.float32)]
    arrays, ref_arrays = [a.copy() for a in start3], [a.copy() for a in start3]
    opt = nad.ShardedAdamax(nad.SelfComm(), learning_rate=0.1, sparse_variables=[0, 2])
    ref = na.Adamax(learning_rate=0.1)
    first = [na.IndexedSlices(np.ones((2, 2), np.float32), np.array([4, 1])),
             np.full(5, 0.5, np.float32), None]
    then = [None, np.full(5, 0.5, np.float32),
            na.IndexedSlices(np.ones((1, 3), np.float32), np.array([2]))]
    for grads in (first, then):
        opt.apply(grads, arrays)
        ref.apply(grads, ref_arrays)
    assert opt._state.plan.sparse == {0, 2}
    assert all(np.array_equal(a, b) for a, b in zip(arrays, ref_arrays))


@pytest.mark.parametrize("kwargs, kind, match", [
    ({"zero_stage": 2}, ValueError, "zero_stage"),
    ({"reduce": "max"}, ValueError, "reduce"),
    ({"deterministic": 1}, ValueError, "deterministic"),
    ({"beta_1": 1.5}, ValueError, "beta_1"),
])
def test_constructor_arguments_are_validated(kwargs, kind, match):
    with pytest.raises(kind, match=match):
        nad.ShardedAdamax(nad.SelfComm(), **kwargs)


def test_a_communicator_is_required():
    with pytest.raises(TypeError, match="communicator"):
        nad.ShardedAdamax(object())
    with pytest.raises(TypeError, match="communicator"):
        nad.init([np.zeros(3, np.float32)], object())
    with pytest.raises(TypeError, match="ShardedState"):
        nad.step([np.zeros(3)], [np.zeros(3)], object())


def test_the_settings_digest_is_recomputed_only_when_a_setting_changes(monkeypatch):
    """One process: the per-call digest of the settings is cached on the state; a call
    with unchanged settings does not recompute it, an assignment (the class or the
    functional state's ``hyperparameters``) does, and a change of value changes it."""
    from numba_adamax.distributed import _collective, _sharded
    calls = []

    def counting(hp, excluded=()):
        calls.append(hp.revision)
        return _collective.settings_digest(hp, excluded)

    monkeypatch.setattr(_sharded, "settings_digest", counting)
    params = na.FlatBuffer({"a": (30,), "b": (4,)}, np.float32)
    opt = nad.ShardedAdamax(nad.SelfComm(), learning_rate=0.1)
    grads = params.zeros_like()
    grads.data[:] = 1.0
    opt.apply(grads, params)
    opt.apply(grads, params)
    assert len(calls) == 1
    first = opt._state.settings_digest()
    assert len(calls) == 1
    opt.clipnorm = 2.0
    opt.apply(grads, params)
    assert len(calls) == 2 and opt._state.settings_digest() != first
    opt.clipnorm = None  # back to the first settings: a new revision, the same digest
    assert opt._state.settings_digest() == first and len(calls) == 3
    opt.learning_rate = 0.1  # the same value assigned again: recomputed, unchanged
    assert opt._state.settings_digest() == first and len(calls) == 4
    opt.apply(grads, params)
    assert len(calls) == 4 and opt.iterations == 4
    # the weight-decay exclusions are part of what the ranks agree on
    opt.exclude_from_weight_decay(var_names=["a"])
    excluded = opt._state.settings_digest()
    assert excluded != first and len(calls) == 5
    opt.apply(grads, params)
    assert len(calls) == 5
    opt.exclude_from_weight_decay()
    assert opt._state.settings_digest() == first and len(calls) == 6
    # a schedule is digested by its config; a callable by its name
    opt.learning_rate = na.schedules.ExponentialDecay(0.1, 10, 0.5)
    schedule = opt._state.settings_digest()
    opt.learning_rate = na.schedules.ExponentialDecay(0.1, 10, 0.25)
    assert opt._state.settings_digest() not in (first, schedule)
    # the functional state
    state = nad.init(params, nad.SelfComm(), beta_1=0.9)
    nad.step(params, grads, state)
    before = len(calls)
    nad.step(params, grads, state)
    assert len(calls) == before
    digest = state.settings_digest()
    state.hyperparameters.beta_1 = 0.8
    assert state.settings_digest() != digest and len(calls) == before + 1


def test_the_settings_mismatch_error_names_each_setting_and_its_values_per_rank():
    """The failure path's message (each rank's settings record gathered): only the
    settings that differ, with every rank's value."""
    from numba_adamax._hyperparameters import Hyperparameters
    from numba_adamax.distributed._collective import settings_differ, settings_record

    class Gathered(nad.SelfComm):
        """Three ranks' records, of which this process is rank 0."""

        def allgather_object(self, obj):
            other = Hyperparameters(learning_rate=0.1, clipnorm=2.0, beta_1=0.8)
            return [obj, settings_record(other), obj]

    error = settings_differ(Gathered(), Hyperparameters(learning_rate=0.1))
    assert isinstance(error, ValueError)
    message = str(error)
    assert "beta_1 (per rank: [0.9, 0.8, 0.9])" in message
    assert "clipnorm (per rank: [None, 2.0, None])" in message
    assert "learning_rate" not in message and "epsilon" not in message
    rate = settings_record(Hyperparameters(learning_rate=lambda: 0.1))["learning_rate"]
    assert rate.startswith("<callable ")
