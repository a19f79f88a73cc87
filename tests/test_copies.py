"""``copy.deepcopy`` and pickling of ``Adamax``, ``AdamaxState``, ``Hyperparameters`` and
``FlatBuffer``.

A copy taken in the middle of a run is an independent optimizer over copies of the variables:
right after the copy everything (variables, every slot buffer, the touched rows, counters,
names, weight-decay mask, config) is bit-identical, each further call with equal gradients
leaves both bit-identical, and calls on the copy never change the original. Its kernel tables
point at its own arrays. States on CUDA or with a stream are refused with ``TypeError``.
"""
import copy
import pickle

import numpy as np
import pytest

import numba_adamax as na
from checkpoint_helpers import APIS, CALLS, HALF, RESUME_CONFIGS, Run
from configs import ClockLR
from conftest import assert_unchanged, make_ramp_grads, make_variables, snapshot_state
from numba_adamax.kernels.addresses import data_address


def _pickled(x):
    return pickle.loads(pickle.dumps(x))


COPIERS = {"deepcopy": copy.deepcopy, "pickle": _pickled}


def _no_memory_shared(xs, ys):
    return not any(np.shares_memory(x, y) for x in xs for y in ys)


def assert_same_state(a, b):
    """Two states hold the same values in different memory, and each one's kernel tables
    point at its own variables."""
    assert_unchanged(snapshot_state(a, a.params), snapshot_state(b, b.params), "copy")
    assert a.names == b.names and a.weight_decay_mask == b.weight_decay_mask
    assert a.hyperparameters.get_config() == b.hyperparameters.get_config()
    assert a.hyperparameters is not b.hyperparameters
    assert _no_memory_shared(a.params, b.params)
    assert _no_memory_shared([g.m for g in a.groups], [g.m for g in b.groups])
    for state in (a, b):
        for group in state.groups:
            assert list(group.table[:, 0]) == [data_address(state.arrays[i])
                                               for i in group.indices]


# ------------------------------------------------------------------------ the reported bugs

@pytest.mark.parametrize("how", sorted(COPIERS))
def test_a_fresh_optimizer_and_a_fresh_state_can_be_copied(how):
    copier = COPIERS[how]
    opt = copier(na.Adamax(learning_rate=0.01, use_ema=True))
    assert opt.get_config() == na.Adamax(learning_rate=0.01, use_ema=True).get_config()
    assert not opt.built
    w = np.ones(3)
    state = na.init([w], learning_rate=0.01)
    twin = copier(state)
    assert twin.params[0] is not w and np.array_equal(twin.params[0], w)
    na.step(twin.params, [np.ones(3)], twin)
    assert twin.raw_steps == 1 and state.raw_steps == 0 and np.array_equal(w, np.ones(3))


# ------------------------------------------------------------------------ mid-run copies

# the callable learning rates of the table are closures, which pickle cannot store
MID_RUN_CASES = [(name, api, how) for name in sorted(RESUME_CONFIGS) for api in APIS
                 for how in sorted(COPIERS)
                 if how == "deepcopy" or not isinstance(
                     RESUME_CONFIGS[name].kwargs.get("learning_rate"), ClockLR)]


@pytest.mark.parametrize("name, api, how", MID_RUN_CASES)
def test_a_copy_mid_run_continues_exactly_and_independently(name, api, how):
    run = Run(name, api).run(0, HALF)
    twin = COPIERS[how](run)  # the optimizer together with its variables and gradients
    state, twin_state = run.optimizer_state, twin.optimizer_state
    assert all(p is q for p, q in zip(twin_state.params, twin.params))
    assert_same_state(state, twin_state)
    if api == "class":
        assert twin.opt.iterations == run.opt.iterations
        assert twin.opt.state is twin_state and twin.opt._hp is twin_state.hyperparameters
    for c in range(HALF, CALLS):
        # a deep-copied closure learning rate still reads the original clock
        run.clock.step = c
        before = run.snapshot()
        twin.run(c, c + 1)
        assert_unchanged(before, run.snapshot(), "the original after a call on the copy")
        run.run(c, c + 1)
        assert_unchanged(run.snapshot(), twin.snapshot(), f"call {c}")
    assert_unchanged(Run(name, api).run(0, CALLS).snapshot(), twin.snapshot(), "uninterrupted")


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_a_copy_keeps_the_rows_touched_in_the_open_accumulation_window(how):
    vs = make_variables()
    opt = na.Adamax(learning_rate=0.05, gradient_accumulation_steps=3, use_ema=True,
                    weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["variable_1"])
    opt.apply([na.IndexedSlices(np.ones((1, 3)), np.array([1])), make_ramp_grads(0)[1]], vs)
    opt.apply([na.IndexedSlices(np.ones((1, 3)), np.array([0])), make_ramp_grads(1)[1]], vs)
    twin_opt, twin_vs = COPIERS[how]((opt, vs))
    assert twin_opt.state.touched(0).tolist() == [0, 1] == opt.state.touched(0).tolist()
    assert twin_opt.state.weight_decay_mask == [True, False]
    assert_same_state(opt.state, twin_opt.state)
    for k in range(2, 6):
        grads = [na.IndexedSlices(np.full((1, 3), 0.5 + k), np.array([k % 2])),
                 make_ramp_grads(k)[1]]
        twin_opt.apply(grads, twin_vs)
        opt.apply(grads, vs)
        assert_same_state(opt.state, twin_opt.state)


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_a_state_copied_alone_is_over_copies_of_its_variables(how):
    vs = make_variables()
    state = na.init(vs, names=["w", "b"], learning_rate=0.05, use_ema=True)
    na.step(vs, make_ramp_grads(0), state)
    twin = COPIERS[how](state)
    assert_same_state(state, twin)
    with pytest.raises(ValueError, match="Unknown variable"):
        na.step(vs, make_ramp_grads(1), twin)  # the original arrays are not the copy's
    before = snapshot_state(state, vs)
    na.step(list(twin.params), make_ramp_grads(1), twin)
    assert_unchanged(before, snapshot_state(state, vs), "the original")
    na.step(vs, make_ramp_grads(1), state)
    assert_same_state(state, twin)


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_a_state_on_a_flat_buffer_is_copied_with_its_buffer(how):
    params = na.FlatBuffer.from_arrays({"w": np.arange(6.0).reshape(2, 3), "b": np.ones(4)})
    state = na.init(params, learning_rate=0.05, weight_decay=0.1,
                    exclude_from_weight_decay=["b"])
    grads = params.zeros_like()
    grads.data[:] = 0.25
    na.step(params, grads, state)
    twin = COPIERS[how](state)
    assert isinstance(twin.buffer, na.FlatBuffer) and twin.buffer is not params
    assert twin.buffer.names == ("w", "b") and twin.buffer.layout == params.layout
    assert all(p is a and a.base is twin.buffer.data
               for p, a in zip(twin.params, twin.buffer.arrays))
    assert_same_state(state, twin)
    twin_grads = twin.buffer.zeros_like()
    twin_grads.data[:] = 0.5
    grads.data[:] = 0.5
    assert na.functional.is_flat_gradient(twin, twin_grads)  # the O(1) path
    na.step(twin.buffer, twin_grads, twin)
    na.step(params, grads, state)
    assert_same_state(state, twin)


@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("load", ["load_state_dict", "load_own_variables"])
def test_an_unbuilt_optimizer_with_a_pending_load_can_be_copied(load, how):
    vs = make_variables()
    source = na.Adamax(learning_rate=0.05, use_ema=True)
    for k in range(3):
        source.apply(make_ramp_grads(k), vs)
    fresh = na.Adamax(learning_rate=0.05, use_ema=True)
    if load == "load_state_dict":
        fresh.load_state_dict(source.state_dict())
    else:
        store = {}
        source.save_own_variables(store)
        fresh.load_own_variables(store)
    twin = COPIERS[how](fresh)
    twin_vs = [v.copy() for v in vs]
    fresh.build(vs)
    twin.build(twin_vs)
    assert_same_state(fresh.state, twin.state)
    assert twin.iterations == source.iterations == 3


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_copied_settings_stay_validated_and_locked(how):
    vs = make_variables()
    opt = na.Adamax(learning_rate=na.schedules.ExponentialDecay(0.05, 3, 0.5), clipnorm=1.0)
    opt.apply(make_ramp_grads(0), vs)
    twin = COPIERS[how](opt)
    assert twin.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="cannot be changed after"):
        twin.use_ema = True
    with pytest.raises(ValueError, match="Only one of"):
        twin.clipvalue = 0.5
    with pytest.raises(TypeError, match="not settable"):
        twin.learning_rate = 0.1
    twin.beta_1 = 0.5
    assert opt.beta_1 == 0.9
    unlocked = COPIERS[how](na.Hyperparameters(beta_2=0.5))
    unlocked.use_ema = True  # never locked: still free
    assert unlocked.beta_2 == 0.5 and unlocked.use_ema is True


class _FakeStream:
    def synchronize(self):
        pass


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_device_states_and_streams_are_refused(how, monkeypatch):
    vs = make_variables()
    state = na.init(vs)
    state.stream = _FakeStream()
    with pytest.raises(TypeError, match="with a CUDA stream cannot be pickled or copied"):
        COPIERS[how](state)
    state.stream = None
    monkeypatch.setattr(state, "device", "cuda")
    with pytest.raises(TypeError, match="on CUDA cannot be pickled or copied.*state_dict"):
        COPIERS[how](state)
    with pytest.raises(TypeError, match="with a CUDA stream.*`stream = None`"):
        COPIERS[how](na.Adamax(stream=_FakeStream()))

