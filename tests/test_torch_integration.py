"""numba_adamax.integrations.torch.Adamax: parity with the NumPy functional API (bit for bit),
param groups, add_param_group, closure, zero_grad, state_dict round trips, flat mode, errors."""
import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

import numba_adamax as na
from configs import CONFIGS, Clock, make_kwargs
from conftest import assert_unchanged, bit_identical
from numba_adamax.integrations.torch import Adamax

#: Odd shapes, a 0-d and an empty parameter, two dtypes.
SHAPES = (((5, 3), torch.float32), ((7,), torch.float64), ((), torch.float32),
          ((2, 3, 4), torch.float32), ((0,), torch.float32))

#: (step, parameter) pairs that get no gradient.
MISSING = {(2, 1), (4, 0), (4, 3)}

#: CONFIGS entries expressible as constructor arguments (no TF 1.x decay, no name exclusions).
PARITY_CONFIGS = [name for name, c in CONFIGS.items() if not c.has_decay and not c.exclude_names]


def make_params(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
            for shape, dtype in shapes]


def gradient_rows(params, steps, seed=1, missing=MISSING):
    """Per step, one NumPy gradient (or None) per parameter."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(steps):
        rows.append([None if (s, k) in missing else
                     np.asarray(rng.standard_normal(tuple(p.shape)) * 2, dtype=_np_dtype(p))
                     for k, p in enumerate(params)])
    return rows


def _np_dtype(tensor):
    return np.float32 if tensor.dtype == torch.float32 else np.float64


def set_grads(params, row):
    for p, g in zip(params, row):
        p.grad = None if g is None else torch.from_numpy(g.copy())


def numpy_step(arrays, row, state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the NumPy API warns on None gradients
        na.step(arrays, row, state)


def assert_bits(a, b):
    assert bit_identical(a, b)


def assert_matches_numpy(opt, params, arrays, state):
    """Parameters, every slot and the counter equal the NumPy state's, bit for bit."""
    for k, p in enumerate(params):
        assert_bits(p.detach().numpy(), arrays[k])
        entry = opt.state[p]
        assert_bits(entry["exp_avg"].numpy(), state.m[k])
        assert_bits(entry["exp_inf"].numpy(), state.u[k])
        if state.ema:
            assert_bits(entry["ema"].numpy(), state.ema[k])
        if state.accumulators:
            assert_bits(entry["accumulator"].numpy(), state.accumulators[k])
        assert int(entry["step"]) == state.raw_steps


def torch_snapshot(opt, params):
    """Copies of everything a failed call must leave unchanged, for ``assert_unchanged``: every
    tensor of ``state_dict()`` (``state[<id>].<key>``) and its ``param_groups``, the parameters'
    values and storage addresses, and the options of ``param_groups``."""
    state_dict = opt.state_dict()
    out = {f"state[{pid}].{key}": value.detach().numpy().copy()
           for pid, entry in state_dict["state"].items() for key, value in entry.items()}
    out["state_dict.param_groups"] = copy.deepcopy(state_dict["param_groups"])
    for k, p in enumerate(params):
        out[f"param[{k}]"] = p.detach().numpy().copy()
        out[f"data_ptr[{k}]"] = p.data_ptr()
    out["param_groups"] = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    return out


def assert_state_dicts_equal(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for pid, entry in a["state"].items():
        assert sorted(entry) == sorted(b["state"][pid])
        for key, value in entry.items():
            assert value.dtype == b["state"][pid][key].dtype
            assert_bits(value.numpy(), b["state"][pid][key].numpy())


# ----------------------------------------------------------------- parity with the NumPy path

@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_parity_with_functional_numpy_api(name, flat):
    clock_t, clock_n = Clock(), Clock()
    params = make_params()
    arrays = [p.detach().numpy().copy() for p in params]
    opt = Adamax(params, flat=flat, **make_kwargs(CONFIGS[name], clock_t))
    state = na.init(arrays, **make_kwargs(CONFIGS[name], clock_n))
    for s, row in enumerate(gradient_rows(params, 7)):
        clock_t.step = clock_n.step = s
        set_grads(params, row)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # missing gradients are skipped silently
            opt.step()
        numpy_step(arrays, row, state)
        assert_matches_numpy(opt, params, arrays, state)
    assert state.raw_steps == 7


def test_torch_and_keras_names_build_the_same_groups():
    a = Adamax(make_params(), lr=0.05, betas=(0.8, 0.95), eps=1e-4)
    b = Adamax(make_params(), learning_rate=0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-4)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in (a.param_groups[0],
                                                                      b.param_groups[0])]
    assert strip[0] == strip[1]
    assert strip[0]["betas"] == (0.8, 0.95) and strip[0]["lr"] == 0.05


def test_defaults_are_keras():
    group = Adamax(make_params()).param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.001, (0.9, 0.999), 1e-7)
    assert group["weight_decay"] is None and group["use_ema"] is False


def test_keras_semantics_differ_from_torch_adamax_as_documented():
    """One step from zero slots: eps outside the max, decoupled weight decay."""
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.1, 0.0, -3.0], dtype=torch.float64)
    lr, eps, wd = 0.1, 1e-3, 0.2
    p = torch.nn.Parameter(w0.clone())
    opt = Adamax([p], lr=lr, eps=eps, weight_decay=wd)
    p.grad = g.clone()
    opt.step()
    decayed = w0 - w0 * wd * lr
    m, u = g * 0.1, g.abs()
    expected = decayed - (lr * m) / ((1 - 0.9) * (u + eps))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-15, atol=0)
    q = torch.nn.Parameter(w0.clone())
    theirs = torch.optim.Adamax([q], lr=lr, eps=eps, weight_decay=wd)
    q.grad = g.clone()
    theirs.step()
    assert not torch.allclose(p.detach(), q.detach())


# ----------------------------------------------------------------- groups

def test_param_groups_with_different_hyperparameters():
    params = make_params()
    first, second = params[:2], params[2:]
    groups = [{"params": first, "lr": 0.05, "weight_decay": 0.1, "clipnorm": 1.0},
              {"params": second, "learning_rate": 0.01, "use_ema": True,
               "gradient_accumulation_steps": 2, "global_clipnorm": 0.5}]
    opt = Adamax(groups, betas=(0.8, 0.99))
    arrays = [p.detach().numpy().copy() for p in params]
    states = [na.init(arrays[:2], learning_rate=0.05, beta_1=0.8, beta_2=0.99,
                      weight_decay=0.1, clipnorm=1.0),
              na.init(arrays[2:], learning_rate=0.01, beta_1=0.8, beta_2=0.99, use_ema=True,
                      gradient_accumulation_steps=2, global_clipnorm=0.5)]
    for row in gradient_rows(params, 6):
        set_grads(params, row)
        opt.step()
        numpy_step(arrays[:2], row[:2], states[0])
        numpy_step(arrays[2:], row[2:], states[1])
    assert_matches_numpy(opt, first, arrays[:2], states[0])
    assert_matches_numpy(opt, second, arrays[2:], states[1])
    assert set(opt.state[second[0]]) == {"step", "exp_avg", "exp_inf", "ema", "accumulator"}
    assert set(opt.state[first[0]]) == {"step", "exp_avg", "exp_inf"}


def test_group_options_can_change_between_steps():
    params = make_params()
    opt = Adamax(params, lr=0.05)
    arrays = [p.detach().numpy().copy() for p in params]
    state = na.init(arrays, learning_rate=0.05)
    for s, row in enumerate(gradient_rows(params, 6)):
        if s == 3:
            opt.param_groups[0]["lr"] = 0.01
            opt.param_groups[0]["betas"] = [0.5, 0.9]
            opt.param_groups[0]["clipvalue"] = 0.3
            state.hyperparameters.learning_rate = 0.01
            state.hyperparameters.beta_1, state.hyperparameters.beta_2 = 0.5, 0.9
            state.hyperparameters.clipvalue = 0.3
        set_grads(params, row)
        opt.step()
        numpy_step(arrays, row, state)
    assert_matches_numpy(opt, params, arrays, state)


def test_torch_lr_scheduler_drives_the_learning_rate():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Adamax([p], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    arrays = [np.zeros(4)]
    state = na.init(arrays, learning_rate=0.1)
    for s in range(4):
        g = np.full(4, 1.0 + s)
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        numpy_step(arrays, [g], state)
        scheduler.step()
        state.hyperparameters.learning_rate = 0.1 * 0.5 ** (s + 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 4)
    assert_bits(p.detach().numpy(), arrays[0])


def test_add_param_group_takes_constructor_defaults_and_starts_its_own_counter():
    params = make_params()
    opt = Adamax(params[:2], lr=0.05, clipnorm=0.7)
    arrays = [p.detach().numpy().copy() for p in params]
    first = na.init(arrays[:2], learning_rate=0.05, clipnorm=0.7)
    rows = gradient_rows(params, 6, missing=())
    for row in rows[:2]:
        set_grads(params[:2], row[:2])
        opt.step()
        numpy_step(arrays[:2], row[:2], first)
    opt.add_param_group({"params": params[2:], "eps": 1e-3})
    group = opt.param_groups[1]
    assert group["lr"] == 0.05 and group["clipnorm"] == 0.7 and group["eps"] == 1e-3
    second = na.init(arrays[2:], learning_rate=0.05, clipnorm=0.7, epsilon=1e-3)
    for row in rows[2:]:
        set_grads(params, row)
        opt.step()
        numpy_step(arrays[:2], row[:2], first)
        numpy_step(arrays[2:], row[2:], second)
    assert_matches_numpy(opt, params[:2], arrays[:2], first)
    assert_matches_numpy(opt, params[2:], arrays[2:], second)
    assert (first.raw_steps, second.raw_steps) == (6, 4)


def test_add_param_group_does_not_modify_its_argument():
    params = make_params()
    opt = Adamax(params[:1])
    given = {"params": (p for p in params[1:3]), "learning_rate": 0.2}
    keys = set(given)
    opt.add_param_group(given)
    assert set(given) == keys
    assert opt.param_groups[1]["lr"] == 0.2 and "learning_rate" not in opt.param_groups[1]


def test_named_parameters_and_empty_groups():
    model = torch.nn.Linear(3, 2)
    opt = Adamax([{"params": list(model.named_parameters())},
                  {"params": [], "param_names": []}], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    assert state["param_groups"][1]["params"] == []
    assert int(state["state"][0]["step"]) == 1
    opt.load_state_dict(state)
    assert_state_dicts_equal(opt.state_dict(), state)


# ----------------------------------------------------------------- step, closure, zero_grad

def test_step_returns_the_closure_loss_and_enables_grad():
    model = torch.nn.Linear(4, 1).double()
    opt = Adamax(model.parameters(), lr=0.1)
    x = torch.randn(8, 4, dtype=torch.float64)
    calls = []

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        calls.append(loss)
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [loss] and loss is calls[0]
    assert int(opt.state[model.weight]["step"]) == 1
    assert opt.step() is None


def test_zero_grad_sets_none_and_a_step_without_gradients_changes_nothing():
    params = make_params()
    opt = Adamax(params, lr=0.1, use_ema=True)
    set_grads(params, gradient_rows(params, 1, missing=())[0])
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    before = torch_snapshot(opt, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert_unchanged(before, torch_snapshot(opt, params))
    set_grads(params, gradient_rows(params, 1, missing=())[0])
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.step()
    assert int(opt.state[params[0]]["step"]) == 2


def test_parameters_without_gradient_are_skipped_silently():
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    live = torch.nn.Parameter(torch.ones(3))
    opt = Adamax([frozen, live], lr=0.1)
    live.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert torch.equal(frozen, torch.ones(3)) and not torch.equal(live.detach(), torch.ones(3))
    assert not opt.state[frozen]["exp_avg"].any()


def test_step_marks_parameters_modified_for_autograd():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adamax([p], lr=0.1)
    loss = (p * p).sum()  # saves p for backward
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_state_entries_are_live_views():
    params = make_params()
    opt = Adamax(params, lr=0.1)
    exp_avg = opt.state[params[0]]["exp_avg"]
    for row in gradient_rows(params, 2, missing=()):
        set_grads(params, row)
        opt.step()
    assert opt.state[params[0]]["exp_avg"] is exp_avg and exp_avg.any()


# ----------------------------------------------------------------- state dict

def test_state_dict_layout():
    params = make_params()
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "use_ema": True,
                                            "gradient_accumulation_steps": 2}], lr=0.1)
    for row in gradient_rows(params, 3):
        set_grads(params, row)
        opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3, 4]]
    assert set(sd["state"]) == {0, 1, 2, 3, 4}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_inf"}
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_inf", "ema", "accumulator"}
    assert sd["state"][0]["step"].dtype == torch.int64 and int(sd["state"][2]["step"]) == 3
    assert sd["state"][1]["exp_inf"].dtype == torch.float64
    assert sd["param_groups"][1]["gradient_accumulation_steps"] == 2
    before = {k: v.clone() for k, v in sd["state"][0].items()}
    set_grads(params, gradient_rows(params, 1, seed=9, missing=())[0])
    opt.step()
    for key, value in before.items():  # copies: later steps do not change them
        assert torch.equal(sd["state"][0][key], value)


@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
@pytest.mark.parametrize("config", ["kitchen", "ema_accum", "schedule"])
def test_state_dict_into_a_fresh_optimizer_continues_bit_exactly(config, flat):
    kwargs = {"kitchen": {"lr": 0.05, "gradient_accumulation_steps": 3, "use_ema": True,
                          "ema_momentum": 0.8, "ema_overwrite_frequency": 2, "clipnorm": 0.5,
                          "weight_decay": 0.1, "loss_scale_factor": 64.0},
              "ema_accum": {"lr": 0.05, "use_ema": True, "gradient_accumulation_steps": 2},
              "schedule": {"lr": na.schedules.ExponentialDecay(0.05, 3, 0.5)}}[config]
    params = make_params()
    opt = Adamax([{"params": params[:3]}, {"params": params[3:], "lr": 0.02}], flat=flat,
                 **copy.deepcopy(kwargs))
    rows = gradient_rows(params, 10)
    for row in rows[:5]:
        set_grads(params, row)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = Adamax([{"params": twins[:3]}, {"params": twins[3:]}], lr=0.9, flat=not flat)
    fresh.load_state_dict(saved)
    assert_state_dicts_equal(fresh.state_dict(), opt.state_dict())
    for row in rows[5:]:
        set_grads(params, row)
        set_grads(twins, row)
        opt.step()
        fresh.step()
    assert_state_dicts_equal(fresh.state_dict(), opt.state_dict())
    for p, q in zip(params, twins):
        assert_bits(p.detach().numpy(), q.detach().numpy())


def test_state_dict_round_trip_into_the_same_optimizer():
    params = make_params()
    opt = Adamax(params, lr=0.05, use_ema=True)
    rows = gradient_rows(params, 6)
    for row in rows[:3]:
        set_grads(params, row)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for row in rows[3:]:
        set_grads(params, row)
        opt.step()
    opt.load_state_dict(saved)
    assert_state_dicts_equal(opt.state_dict(), saved)
    assert int(opt.state[params[0]]["step"]) == 3


def test_load_state_dict_can_change_which_slots_exist():
    params = make_params()
    source = Adamax(params, lr=0.05, use_ema=True, gradient_accumulation_steps=2)
    for row in gradient_rows(params, 3):
        set_grads(params, row)
        source.step()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    target = Adamax(twins, lr=0.05)
    target.load_state_dict(source.state_dict())
    assert target.param_groups[0]["use_ema"] is True
    assert set(target.state[twins[0]]) == {"step", "exp_avg", "exp_inf", "ema", "accumulator"}
    assert_state_dicts_equal(target.state_dict(), source.state_dict())


def test_state_dict_hooks_run_as_in_pytorch():
    params = make_params()
    opt = Adamax(params, lr=0.05)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: {**sd, "param_groups": [{**g, "lr": 0.5} for g in sd["param_groups"]]})
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    saved = opt.state_dict()
    assert saved["extra"] == 1 and calls == ["pre"]
    opt.load_state_dict(saved)
    assert calls == ["pre", "post"] and opt.param_groups[0]["lr"] == 0.5


# ----------------------------------------------------------------- flat mode

def test_flat_mode_makes_each_group_views_of_one_buffer_per_dtype():
    params = make_params()
    values = [p.detach().clone() for p in params]
    opt = Adamax([{"params": params[:4]}, {"params": params[4:]}], flat=True)
    buffers = opt.flat_buffers
    assert set(buffers[0]) == {torch.float32, torch.float64} and set(buffers[1]) == {torch.float32}
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)  # values preserved
        assert p.requires_grad and p.is_leaf
    for group, group_buffers in zip(opt.param_groups, buffers):
        for p in group["params"]:
            buf = group_buffers[p.dtype]
            assert p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
            assert p.data_ptr() % 64 == buf.data_ptr() % 64
    assert Adamax(make_params()).flat_buffers == [{}]


def test_flat_mode_trains_a_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = Adamax(model.parameters(), lr=0.02, flat=True)
    x = torch.randn(64, 3)
    y = x.sum(dim=1, keepdim=True)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    buf = opt.flat_buffers[0][torch.float32]
    assert all(p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
               for p in model.parameters())


# ----------------------------------------------------------------- errors

def _noncontiguous():
    return torch.nn.Parameter(torch.randn(4, 3).t())


def _non_leaf():
    return torch.randn(3, requires_grad=True) * 2


CONSTRUCTOR_ERRORS = {
    "negative_lr": (lambda ps: Adamax(ps, lr=-1.0), ValueError, "`lr`"),
    "betas_not_a_pair": (lambda ps: Adamax(ps, betas=(0.9,)), ValueError, "betas"),
    "beta_2_range": (lambda ps: Adamax(ps, betas=(0.9, 1.0)), ValueError, r"`betas\[1\]`"),
    "lr_and_learning_rate": (lambda ps: Adamax(ps, lr=0.1, learning_rate=0.1), ValueError,
                             "not both"),
    "betas_and_beta_1": (lambda ps: Adamax(ps, betas=(0.9, 0.9), beta_1=0.5), ValueError,
                         "not both"),
    "eps_and_epsilon": (lambda ps: Adamax(ps, eps=1e-3, epsilon=1e-3), ValueError, "not both"),
    "two_clips": (lambda ps: Adamax(ps, clipnorm=1.0, clipvalue=1.0), ValueError,
                  "Only one of"),
    "gas_1": (lambda ps: Adamax(ps, gradient_accumulation_steps=1), ValueError,
              "gradient_accumulation_steps"),
    "flat_not_bool": (lambda ps: Adamax(ps, flat="yes"), ValueError, "flat"),
    "flat_in_group": (lambda ps: Adamax([{"params": ps, "flat": True}]), ValueError,
                      "optimizer-wide"),
    "bad_group_option": (lambda ps: Adamax([{"params": ps[:2]}, {"params": ps[2:], "lr": -1}],
                                           flat=True), ValueError, r"param_groups\[1\]"),
    "single_tensor": (lambda ps: Adamax(ps[0]), TypeError, "single tensor"),
    "empty": (lambda ps: Adamax([]), ValueError, "empty parameter list"),
    "set": (lambda ps: Adamax([{"params": set(ps)}]), TypeError, "set"),
    "not_a_tensor": (lambda ps: Adamax(ps + [np.zeros(3)]), TypeError, "torch.Tensor"),
    "int_dtype": (lambda ps: Adamax(ps + [torch.zeros(3, dtype=torch.int64)]), TypeError,
                  "dtype"),
    "float16": (lambda ps: Adamax(ps + [torch.nn.Parameter(torch.zeros(3).half())]), TypeError,
                "float16"),
    "non_contiguous": (lambda ps: Adamax(ps + [_noncontiguous()]), ValueError, "contiguous"),
    "non_leaf": (lambda ps: Adamax(ps + [_non_leaf()]), ValueError, "leaf"),
    "meta_device": (lambda ps: Adamax(ps + [torch.nn.Parameter(torch.empty(3, device="meta"))]),
                    TypeError, "meta"),
    "duplicate_in_group": (lambda ps: Adamax(ps + ps[:1]), ValueError, "more than once"),
    "shared_between_groups": (lambda ps: Adamax([{"params": ps}, {"params": ps[:1]}]),
                              ValueError, "more than one parameter group"),
    "named_and_unnamed": (lambda ps: Adamax([("a", ps[0]), ps[1]]), ValueError, "names"),
    "repeated_names": (lambda ps: Adamax([{"params": ps[:1]}, {"params": ps[1:],
                                                               "param_names": ["a"] * 4}],
                                         flat=True), ValueError, "repeated param_names"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_ERRORS))
def test_constructor_errors_change_nothing(case):
    build, error, pattern = CONSTRUCTOR_ERRORS[case]
    params = make_params()
    values = [p.detach().clone() for p in params]
    pointers = [p.data_ptr() for p in params]
    with pytest.raises(error, match=pattern):
        build(params)
    for p, v, ptr in zip(params, values, pointers):
        assert torch.equal(p.detach(), v) and p.data_ptr() == ptr


def test_add_param_group_errors_change_nothing():
    params = make_params()
    opt = Adamax(params[:2], flat=True)
    before = torch_snapshot(opt, params)
    for bad, error, pattern in [({"params": params[1:3]}, ValueError, "more than one"),
                                ({"params": params[2:], "clipnorm": 0.0}, ValueError,
                                 "clipnorm"),
                                ({"params": params[2:] + [_noncontiguous()]}, ValueError,
                                 "contiguous"),
                                ({"lr": 0.1}, ValueError, "'params'"),
                                ([params[2]], TypeError, "dict")]:
        with pytest.raises(error, match=pattern):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == 1 and len(opt.flat_buffers) == 1
        assert_unchanged(before, torch_snapshot(opt, params))


def _trained_two_group_optimizer(**kwargs):
    params = make_params()
    opt = Adamax([{"params": params[:2]}, {"params": params[2:]}], lr=0.05, use_ema=True,
                 **kwargs)
    for row in gradient_rows(params, 2):
        set_grads(params, row)
        opt.step()
    set_grads(params, gradient_rows(params, 1, seed=5, missing=())[0])
    return opt, params


def _set(group, key, value):
    def mutate(opt, params):
        opt.param_groups[group][key] = value
    return mutate


def _recast(opt, params):
    params[3].data = params[3].data.double()


def _transposed_grad(opt, params):
    params[0].grad = torch.randn(3, 5).t()


def _sparse_non_row_grad(opt, params):
    params[0].grad = torch.randn(*params[0].shape).to_sparse(2)


def _append_group(opt, params):
    opt.param_groups.append({"params": [torch.nn.Parameter(torch.zeros(2))]})


def _swap_param(opt, params):
    opt.param_groups[1]["params"][0] = torch.nn.Parameter(torch.zeros(()))


STEP_ERRORS = {
    # Group 0 is valid and would run first: the error must come before it changes.
    "invalid_lr": (_set(1, "lr", -0.5), ValueError, r"param_groups\[1\].*`lr`"),
    "invalid_betas": (_set(1, "betas", (0.9,)), ValueError, "betas"),
    "two_clips": (lambda o, p: (_set(1, "clipnorm", 1.0)(o, p), _set(1, "clipvalue", 1.0)(o, p)),
                  ValueError, "Only one of"),
    "structural": (_set(1, "use_ema", False), ValueError, "use_ema"),
    "keras_name_left": (_set(1, "learning_rate", 0.1), ValueError, "PyTorch names"),
    "option_removed": (lambda o, p: o.param_groups[1].pop("eps"), ValueError, "eps"),
    "recast_param": (_recast, ValueError, "changed its dtype"),
    "non_contiguous_grad": (_transposed_grad, ValueError, "not contiguous"),
    "sparse_grad_not_rows": (_sparse_non_row_grad, ValueError, "sparse_dim 1"),
    "group_appended": (_append_group, ValueError, "add_param_group"),
    "param_swapped": (_swap_param, ValueError, "changed after the group was added"),
}


@pytest.mark.parametrize("case", list(STEP_ERRORS))
def test_step_errors_change_nothing(case):
    mutate, error, pattern = STEP_ERRORS[case]
    opt, params = _trained_two_group_optimizer()
    mutate(opt, params)
    bound = opt._bindings
    before = (copy.deepcopy([b.state.raw_steps for b in bound]),
              [np.copy(a) for b in bound for a in b.state.state_arrays()],
              [np.copy(a) for b in bound for a in b.state.params])
    with pytest.raises(error, match=pattern):
        opt.step()
    assert [b.state.raw_steps for b in bound] == before[0]
    slots = [a for binding in bound for a in binding.state.state_arrays()]
    for now, was in zip(slots, before[1]):
        assert_bits(now, was)
    for now, was in zip([a for binding in bound for a in binding.state.params], before[2]):
        assert_bits(now, was)
    assert [int(b.step) for b in bound] == before[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_embedding_gradients_take_the_lazy_path(dtype):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, sparse=True).to(dtype)
    opt = Adamax(embedding.parameters(), lr=0.05, weight_decay=0.01)
    weights = embedding.weight.detach().numpy().copy()
    state = na.init([weights], learning_rate=0.05, weight_decay=0.01)
    untouched = [0, 5, 9]
    for batch in ([1, 4, 4, 2], [3, 3, 8], [4, 1, 7, 6, 2]):
        opt.zero_grad()
        index = torch.tensor(batch)
        (embedding(index) ** 2).sum().backward()
        grad = embedding.weight.grad.coalesce()
        slices = na.IndexedSlices(grad.values().numpy().copy(), grad.indices()[0].numpy().copy())
        opt.step()
        na.step([weights], [slices], state)
    assert_bits(embedding.weight.detach().numpy(), weights)
    assert_bits(opt.state[embedding.weight]["exp_inf"].numpy(), state.u[0])
    assert np.all(state.m[0][untouched] == 0)  # lazy: rows never looked up stay put


def _saved(opt):
    return copy.deepcopy(opt.state_dict())


def _edit(fn):
    def build(opt):
        sd = _saved(opt)
        fn(sd)
        return sd
    return build


LOAD_ERRORS = {
    "not_a_dict": (lambda o: [], TypeError, "dict"),
    "missing_key": (lambda o: {"state": {}}, ValueError, "param_groups"),
    "group_count": (_edit(lambda sd: sd["param_groups"].pop()), ValueError, "1 parameter groups; this optimizer has 2"),
    "group_size": (_edit(lambda sd: sd["param_groups"][1]["params"].pop()), ValueError,
                   "parameters"),
    "bad_option": (_edit(lambda sd: sd["param_groups"][1].update(lr=-1.0)), ValueError,
                   "`lr`"),
    "maximize": (_edit(lambda sd: sd["param_groups"][0].update(maximize=True)), ValueError,
                 "maximize"),
    "missing_entry": (_edit(lambda sd: sd["state"].pop(3)), ValueError, "missing"),
    "missing_slot": (_edit(lambda sd: sd["state"][4].pop("ema")), ValueError, "keys"),
    "slot_dtype": (_edit(lambda sd: sd["state"][0].update(exp_avg=sd["state"][0]["exp_avg"]
                                                          .double())), TypeError, "dtype"),
    "slot_shape": (_edit(lambda sd: sd["state"][0].update(exp_inf=torch.zeros(3))),
                   ValueError, "shape"),
    "slot_not_tensor": (_edit(lambda sd: sd["state"][0].update(ema=np.zeros((5, 3),
                                                                           np.float32))),
                        TypeError, "torch.Tensor"),
    "steps_differ": (_edit(lambda sd: sd["state"][3].update(step=torch.tensor(7))),
                     ValueError, "different steps"),
    "negative_step": (_edit(lambda sd: [e.update(step=-1) for e in sd["state"].values()]),
                      ValueError, "non-negative"),
    "fractional_step": (_edit(lambda sd: [e.update(step=torch.tensor(1.5))
                                          for e in sd["state"].values()]),
                        ValueError, "non-negative integer"),
    "index_unhashable": (_edit(lambda sd: sd["param_groups"][0]["params"].__setitem__(0, [0])),
                         TypeError, "hashable"),
    "index_twice": (_edit(lambda sd: sd["param_groups"][1]["params"].__setitem__(0, 0)),
                    ValueError, "more than one place"),
}


@pytest.mark.parametrize("case", list(LOAD_ERRORS))
def test_load_state_dict_errors_change_nothing(case):
    build, error, pattern = LOAD_ERRORS[case]
    opt, params = _trained_two_group_optimizer()
    bad = build(opt)
    opt.param_groups[0]["lr"] = 0.01  # a pending option change must survive too
    before = torch_snapshot(opt, params)
    with pytest.raises(error, match=pattern):
        opt.load_state_dict(bad)
    assert_unchanged(before, torch_snapshot(opt, params))
