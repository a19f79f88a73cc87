"""numba_adamax.integrations.torch.Adamax keeps the contract of ``torch.optim.Optimizer``:
non-parameter state and ``param_names`` in state dicts, any hashable parameter ids, deepcopy and
pickle, writable ``optimizer.state[p]``, re-pointed ``param.data``, the ``nonfinite`` policies,
loading a ``torch.optim.Adamax`` state dict, and errors that name options as they were given."""
import copy
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from conftest import bit_identical

import numba_adamax as na
from numba_adamax.integrations.torch import Adamax


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def grad_rows(params, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
             for p in params] for _ in range(steps)]


def set_grads(params, row):
    for p, g in zip(params, row):
        p.grad = None if g is None else g.clone()


def train(opt, params, rows):
    for row in rows:
        set_grads(params, row)
        opt.step()


def numpy_twin(params, **kwargs):
    """NumPy copies of ``params`` and a functional state over them."""
    arrays = [p.detach().numpy().copy() for p in params]
    return arrays, na.init(arrays, **kwargs)


def numpy_train(arrays, state, rows):
    for row in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            na.step(arrays, [None if g is None else g.numpy() for g in row], state)


def assert_bits(a, b):
    assert bit_identical(np.asarray(a), np.asarray(b))


def snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])


def assert_same_snapshot(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    for x, y in zip(a[1], b[1]):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------- state dict contract

def test_non_parameter_state_survives_state_dict_and_load():
    model = make_model()
    opt = Adamax(model.parameters(), lr=0.01)
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("sched", {"epoch": 3}))
    saved = opt.state_dict()
    assert saved["state"]["sched"] == {"epoch": 3}
    assert sorted(k for k in saved["state"] if isinstance(k, int)) == [0, 1, 2, 3]
    fresh = Adamax(make_model().parameters(), lr=0.01)
    fresh.load_state_dict(saved)
    assert fresh.state["sched"] == {"epoch": 3}
    assert fresh.state_dict()["state"]["sched"] == {"epoch": 3}


def test_param_names_are_kept_as_torch_keeps_them():
    model = make_model()
    named = Adamax(model.named_parameters(), lr=0.01)
    saved = named.state_dict()
    names = [name for name, _ in model.named_parameters()]
    assert saved["param_groups"][0]["param_names"] == names
    plain = Adamax(make_model().parameters(), lr=0.01)
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["param_names"] == names
    assert plain.state_dict()["param_groups"][0]["param_names"] == names
    # A dict without names leaves the current names alone.
    again = Adamax(make_model().named_parameters(), lr=0.01)
    unnamed = Adamax(make_model().parameters(), lr=0.01).state_dict()
    again.load_state_dict(unnamed)
    assert again.param_groups[0]["param_names"] == names


def test_any_hashable_parameter_ids_are_matched_by_position():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05, use_ema=True)
    train(opt, params, grad_rows(params, 3))
    saved = opt.state_dict()
    names = [name for name, _ in model.named_parameters()]
    renamed = {"state": {names[i]: entry for i, entry in saved["state"].items()},
               "param_groups": [{**saved["param_groups"][0], "params": names}]}
    twin = make_model(seed=5)
    twin_params = list(twin.parameters())
    fresh = Adamax(twin_params, lr=0.05, use_ema=True)
    fresh.load_state_dict(renamed)
    for p, q in zip(params, twin_params):
        for key in ("exp_avg", "exp_inf", "ema", "step"):
            assert torch.equal(opt.state[p][key], fresh.state[q][key])


# ----------------------------------------------------------------- copies

@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_are_independent_and_step_like_the_original(how, flat):
    model = make_model()
    params = list(model.parameters())
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.05,
                 use_ema=True, gradient_accumulation_steps=2, flat=flat)
    rows = grad_rows(params, 6)
    train(opt, params, rows[:3])
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    assert all(p is not q and p.data_ptr() != q.data_ptr()
               for p, q in zip(params, clone_params))
    before = snapshot(opt, params)
    train(clone, clone_params, rows[3:])
    assert_same_snapshot(before, snapshot(opt, params))  # the original did not move
    train(opt, params, rows[3:])
    for p, q in zip(params, clone_params):
        assert_bits(p.detach().numpy(), q.detach().numpy())
        for key in opt.state[p]:
            assert_bits(opt.state[p][key].numpy(), clone.state[q][key].numpy())
    assert clone.param_groups[1]["lr"] == 0.02


# ----------------------------------------------------------------- writable state

def test_replacing_a_state_entry_writes_the_live_slots_and_counter():
    model = make_model()
    params = list(model.parameters())
    source = Adamax(params, lr=0.05)
    rows = grad_rows(params, 5)
    train(source, params, rows[:3])
    twin = make_model()
    twin_params = list(twin.parameters())
    for p, q in zip(params, twin_params):
        q.data.copy_(p.detach())
    target = Adamax(twin_params, lr=0.05)
    for p, q in zip(params, twin_params):
        target.state[q] = {k: v.clone() for k, v in source.state[p].items()}
        target.state[q]["step"] = source.state[p]["step"].clone()  # as ZeRO writes it
    assert int(target.state[twin_params[0]]["step"]) == 3
    train(source, params, rows[3:])
    train(target, twin_params, rows[3:])
    for p, q in zip(params, twin_params):
        assert_bits(p.detach().numpy(), q.detach().numpy())


@pytest.mark.parametrize("entry, error, pattern", [
    ({"step": 1, "exp_avg": torch.zeros(7), "exp_inf": torch.zeros(3, 4)}, ValueError, "shape"),
    ({"step": 1, "exp_avg": torch.zeros(3, 4)}, ValueError, "keys"),
    ({"step": 1, "exp_avg": torch.zeros(3, 4, dtype=torch.float64),
      "exp_inf": torch.zeros(3, 4)}, TypeError, "dtype"),
    ({"step": -2, "exp_avg": torch.zeros(3, 4), "exp_inf": torch.zeros(3, 4)}, ValueError,
     "non-negative"),
    ({"step": 1, "exp_avg": torch.zeros(3, 4), "exp_inf": torch.zeros(3, 4), "ema": 1},
     ValueError, "keys"),
    ([1, 2], TypeError, "dict"),
])
def test_a_bad_state_entry_is_refused_and_changes_nothing(entry, error, pattern):
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05)
    train(opt, params, grad_rows(params, 2))
    before = snapshot(opt, params)
    with pytest.raises(error, match=pattern):
        opt.state[params[0]] = entry
    assert_same_snapshot(before, snapshot(opt, params))


# ----------------------------------------------------------------- re-pointed parameters

def test_a_parameter_moved_to_new_memory_is_rebound():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05, use_ema=True)
    arrays, state = numpy_twin(params, learning_rate=0.05, use_ema=True)
    rows = grad_rows(params, 6)
    train(opt, params, rows[:3])
    numpy_train(arrays, state, rows[:3])
    bucket = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:  # what ZeroRedundancyOptimizer(parameters_as_bucket_view=True) does
        p.data = bucket[offset:offset + p.numel()].view_as(p.data)
        offset += p.numel()
    train(opt, params, rows[3:])
    numpy_train(arrays, state, rows[3:])
    for k, p in enumerate(params):
        assert_bits(p.detach().numpy(), arrays[k])
        assert_bits(opt.state[p]["exp_inf"].numpy(), state.u[k])
    assert bucket.data_ptr() == params[0].data_ptr()


def test_a_flat_group_whose_parameters_moved_is_rebound_and_no_longer_flat():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05, flat=True)
    arrays, state = numpy_twin(params, learning_rate=0.05)
    rows = grad_rows(params, 4)
    train(opt, params, rows[:2])
    numpy_train(arrays, state, rows[:2])
    params[0].data = params[0].data.clone()
    train(opt, params, rows[2:])
    numpy_train(arrays, state, rows[2:])
    assert opt.flat_buffers == [{}]
    for k, p in enumerate(params):
        assert_bits(p.detach().numpy(), arrays[k])
        assert_bits(opt.state[p]["exp_avg"].numpy(), state.m[k])


def test_a_parameter_cast_to_another_dtype_is_still_refused():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05)
    train(opt, params, grad_rows(params, 1))
    params[1].data = params[1].data.double()
    params[1].grad = torch.zeros_like(params[1].data)
    with pytest.raises(ValueError, match="dtype"):
        opt.step()


# ----------------------------------------------------------------- nonfinite

def _nan_rows(params):
    rows = grad_rows(params, 4)
    rows[1][2] = rows[1][2].clone()
    rows[1][2][0, 0] = float("nan")
    return rows


@pytest.mark.parametrize("policy", ["propagate", "skip"])
def test_nonfinite_policies_match_the_numpy_api(policy):
    model = make_model()
    params = list(model.parameters())
    opt = Adamax(params, lr=0.05, nonfinite=policy)
    arrays, state = numpy_twin(params, learning_rate=0.05, nonfinite=policy)
    rows = _nan_rows(params)
    train(opt, params, rows)
    numpy_train(arrays, state, rows)
    for k, p in enumerate(params):
        assert_bits(p.detach().numpy(), arrays[k])
    assert int(opt.state[params[0]]["step"]) == state.raw_steps
    assert opt.param_groups[0]["nonfinite"] == policy


def test_nonfinite_raise_names_the_parameter_and_changes_nothing():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "nonfinite": "raise"}],
                 lr=0.05, nonfinite="skip")
    rows = _nan_rows(params)
    train(opt, params, rows[:1])
    before = snapshot(opt, params)
    set_grads(params, rows[1])
    with pytest.raises(FloatingPointError, match=r"param_groups\[1\]\['params'\]\[0\]"):
        opt.step()
    assert_same_snapshot(before, snapshot(opt, params))


def test_nonfinite_is_per_group():
    model = make_model()
    params = list(model.parameters())
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "nonfinite": "skip"}],
                 lr=0.05)
    rows = _nan_rows(params)
    train(opt, params, rows[:2])
    assert int(opt.state[params[0]]["step"]) == 2  # group 0 counted the call
    assert int(opt.state[params[2]]["step"]) == 1  # group 1 skipped it
    with pytest.raises(ValueError, match="nonfinite"):
        Adamax(params, nonfinite="ignore")


# ----------------------------------------------------------------- switching optimizers

def _torch_trained(cls, **kwargs):
    model = make_model()
    params = list(model.parameters())
    opt = cls(params, **kwargs)
    train(opt, params, grad_rows(params, 3))
    return model, opt


def test_a_torch_adamax_state_dict_loads_with_its_slots_mapped():
    model, source = _torch_trained(torch.optim.Adamax, lr=0.01, betas=(0.8, 0.99))
    params = list(model.parameters())
    target = Adamax(params, lr=0.5, global_clipnorm=1.0)
    with pytest.warns(UserWarning, match="eps"):
        target.load_state_dict(source.state_dict())
    group = target.param_groups[0]
    assert group["lr"] == 0.01 and group["betas"] == (0.8, 0.99) and group["eps"] == 1e-8
    assert group["weight_decay"] is None and group["global_clipnorm"] is None  # Keras defaults
    assert "foreach" not in group and "maximize" not in group
    for p in params:
        assert torch.equal(target.state[p]["exp_avg"], source.state[p]["exp_avg"])
        assert torch.equal(target.state[p]["exp_inf"], source.state[p]["exp_inf"])
        assert int(target.state[p]["step"]) == 3
    # The next step is the NumPy API's from the same slots and counter.
    arrays, state = numpy_twin(params, learning_rate=0.01, beta_1=0.8, beta_2=0.99,
                               epsilon=1e-8, global_clipnorm=1.0)
    for k, p in enumerate(params):
        state.m[k][...] = source.state[p]["exp_avg"].numpy()
        state.u[k][...] = source.state[p]["exp_inf"].numpy()
    state.raw_steps = 3
    target.param_groups[0]["global_clipnorm"] = 1.0
    rows = grad_rows(params, 1, seed=7)
    train(target, params, rows)
    numpy_train(arrays, state, rows)
    for k, p in enumerate(params):
        assert_bits(p.detach().numpy(), arrays[k])


def test_a_torch_adam_state_dict_is_refused_with_the_reason():
    model, source = _torch_trained(torch.optim.Adam, lr=0.01)
    params = list(model.parameters())
    target = Adamax(params, lr=0.05)
    before = snapshot(target, params)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        target.load_state_dict(source.state_dict())
    assert_same_snapshot(before, snapshot(target, params))


@pytest.mark.parametrize("kwargs, named, unnamed", [
    ({"betas": (0.9, 1.5)}, "betas", "beta_2"),
    ({"beta_2": 1.5}, "beta_2", "betas"),
    ({"eps": -1.0}, "eps", "epsilon"),
    ({"lr": -1.0}, "lr", "learning_rate"),
    ({"learning_rate": -1.0}, "learning_rate", "`lr`"),
])
def test_errors_name_options_as_they_were_given(kwargs, named, unnamed):
    with pytest.raises(ValueError) as info:
        Adamax(make_model().parameters(), **kwargs)
    assert named in str(info.value) and unnamed not in str(info.value)
