"""Checks on PyTorch tensors.

CUDA parameters are checked in one function, ``cuda_parameter``, and sparse
gradients in one, ``sparse_gradient`` (which turns them into ``IndexedSlices``);
tensors become arrays only through ``_torch_arrays``. Everything else here raises
``TypeError`` for the wrong kind of object or dtype and ``ValueError`` for a wrong
layout, shape or device mix, and mutates nothing.
"""
import math

import torch

from .._indexed_slices import IndexedSlices
from .._state import slot_names
from . import _torch_arrays as tensor_arrays
from . import _torch_options as options

#: dtypes the optimizer accepts (on the CPU and on CUDA).
DTYPES = (torch.float32, torch.float64)


def cuda_parameter(param, label):
    """Check that the CUDA parameter ``param`` can run on the CUDA kernels: raises
    ``TypeError`` when numba-cuda cannot be imported and ``ValueError`` when it
    reports no usable GPU."""
    tensor_arrays.require_cuda(f"{label} ({param.device})")


def one_device(params, labels):
    """Check that the tensors ``params`` (named by ``labels``) share one device: a
    parameter group is one optimizer state, and in flat mode one buffer per dtype.
    Raises ``ValueError`` naming the first parameter on another device."""
    for p, label in zip(params[1:], labels[1:]):
        if p.device != params[0].device:
            raise ValueError(
                f"{label} is on {p.device}, but {labels[0]} is on {params[0].device}: the "
                "parameters of one group must share a device; put those of another device "
                "in a parameter group of their own.")


def sparse_gradient(grad, param, label):
    """A sparse COO gradient (e.g. from ``nn.Embedding(sparse=True)``) as an
    ``IndexedSlices`` over zero-copy NumPy views of its row indices and values, so the
    step takes the lazy row update (repeated rows are summed there). Raises for
    another sparse layout or a gradient that does not index whole rows."""
    if grad.layout != torch.sparse_coo:
        raise TypeError(f"the gradient of {label} has layout {grad.layout}; only dense "
                        "and sparse COO gradients are supported.")
    if grad.sparse_dim() != 1 or tuple(grad.shape) != tuple(param.shape):
        raise ValueError(f"the sparse gradient of {label} must index rows (sparse_dim 1) "
                         f"of a tensor of shape {tuple(param.shape)}.")
    if grad.dtype != param.dtype:
        raise TypeError(f"the gradient of {label} has dtype {grad.dtype}; its parameter "
                        f"has dtype {param.dtype}.")
    if grad.device != param.device:
        raise TypeError(f"the sparse gradient of {label} is on {grad.device}, its parameter "
                        f"on {param.device}.")
    indices = tensor_arrays.host_indices(grad._indices()[0])
    values = tensor_arrays.as_array(grad._values().detach().contiguous(),
                                    f"the sparse gradient of {label}")
    return IndexedSlices(values, indices, tuple(param.shape))


def parameter(param, label):
    """Check one parameter: a leaf, dense, C-contiguous float32/float64 tensor on the
    CPU or on a CUDA device (then numba-cuda must be usable)."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(param).__name__}.")
    if not (param.is_leaf or param.retains_grad):
        raise ValueError(f"{label} is not a leaf tensor; an optimizer can only update leaves.")
    if param.device.type == "cuda":
        cuda_parameter(param, label)
    elif param.device.type != "cpu":
        raise TypeError(f"{label} is on device {param.device}; only CPU and CUDA tensors are "
                        "supported.")
    if param.layout != torch.strided:
        raise TypeError(f"{label} has layout {param.layout}; only dense tensors are supported.")
    if param.dtype not in DTYPES:
        raise TypeError(f"{label} has dtype {param.dtype}; expected torch.float32 or "
                        "torch.float64.")
    if not param.is_contiguous():
        raise ValueError(f"{label} is not contiguous; make it contiguous before building "
                         "the optimizer (e.g. `p.data = p.data.contiguous()`).")


def gradient(param, label):
    """The gradient of ``param`` as a zero-copy array (``_torch_arrays.as_array``: NumPy
    on the CPU, a Numba device array on CUDA), or None when it has none.

    A sparse gradient becomes an ``IndexedSlices`` (``sparse_gradient``). Raises for
    a gradient on another device or of another dtype (``TypeError``) and a
    non-contiguous one (``ValueError``).
    """
    grad = param.grad
    if grad is None:
        return None
    if grad.layout != torch.strided:
        return sparse_gradient(grad, param, label)
    if grad.device != param.device:
        raise TypeError(f"the gradient of {label} is on {grad.device}, its parameter on "
                        f"{param.device}.")
    if grad.dtype != param.dtype:
        raise TypeError(f"the gradient of {label} has dtype {grad.dtype}; its parameter "
                        f"has dtype {param.dtype}.")
    if not grad.is_contiguous():
        raise ValueError(f"the gradient of {label} is not contiguous.")
    return tensor_arrays.as_array(grad, f"the gradient of {label}")


def slot_tensor(value, param, label):
    """Check a loaded slot: a dense tensor with ``param``'s dtype and shape (any device)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(value).__name__}.")
    if value.layout != torch.strided:
        raise TypeError(f"{label} has layout {value.layout}; expected a dense tensor.")
    if value.dtype != param.dtype:
        raise TypeError(f"{label} has dtype {value.dtype}; its parameter has dtype "
                        f"{param.dtype}.")
    if value.shape != param.shape:
        raise ValueError(f"{label} has shape {tuple(value.shape)}; its parameter has shape "
                         f"{tuple(param.shape)}.")


def step_count(value, label):
    """A loaded ``step``: a non-negative integral int or 0-d real tensor; returns the int."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{label} must be a 0-d real tensor or an int, got {value!r}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be an int or a 0-d tensor, got {value!r}.")
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"{label} must be a non-negative integer, got {value!r}.")
    return int(value)


#: Group keys of ``torch.optim.Adamax`` / ``Adam`` state dicts that have no meaning here.
TORCH_ONLY = ("foreach", "maximize", "capturable", "differentiable", "fused", "amsgrad",
              "decoupled_weight_decay")


def rebound(param, layout, label):
    """Check that a parameter whose ``.data`` now lives elsewhere kept its ``layout``
    (``(shape, dtype, device)`` when bound) and is still contiguous."""
    now = (tuple(param.shape), param.dtype, param.device)
    for what, was, is_ in zip(("shape", "dtype", "device"), layout, now):
        if was != is_:
            raise ValueError(
                f"{label} changed its {what} from {was} to {is_} after the optimizer was "
                "built (was the model moved or cast?); build the optimizer after moving or "
                "casting the model.")
    if not param.is_contiguous():
        raise ValueError(f"{label} now holds non-contiguous data; make it contiguous "
                         "(`p.data = p.data.contiguous()`).")


def state_entry(entry, param, wanted, where):
    """Check one parameter's saved state: a dict with exactly the keys ``wanted``, a
    valid ``step`` and slot tensors matching ``param``. Returns the step count."""
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a dict, got {type(entry).__name__}.")
    if set(entry) != wanted:
        raise ValueError(f"{where} has keys {sorted(map(str, entry))}; with these options "
                         f"expected {sorted(wanted)}.")
    steps = step_count(entry["step"], f"{where}['step']")
    for key in sorted(wanted - {"step"}):
        slot_tensor(entry[key], param, f"{where}[{key!r}]")
    return steps


def _saved_options(saved, defaults, label):
    """A saved group's options as a group of this optimizer: keys of torch's own
    optimizers dropped (``maximize=True`` refused), ``weight_decay=0`` as None (torch's
    "off"), options it lacks taken from ``defaults``. Returns ``(group, from_torch)``."""
    group = {key: value for key, value in saved.items() if key not in ("params", "param_names")}
    from_torch = any(key in group for key in TORCH_ONLY)
    if from_torch:
        if group.get("maximize"):
            raise ValueError(f"{label} has maximize=True, which this optimizer does not "
                             "support; negate the loss instead.")
        for key in TORCH_ONLY:
            group.pop(key, None)
        if group.get("weight_decay") == 0:
            group["weight_decay"] = None
    for key, value in defaults.items():
        group.setdefault(key, value)
    return group, from_torch


def _refuse_other_optimizers(saved_state):
    for pid, entry in saved_state.items():
        if isinstance(entry, dict) and "exp_avg_sq" in entry:
            raise ValueError(
                f"state_dict['state'][{pid!r}] holds 'exp_avg_sq' (a torch.optim.Adam/AdamW "
                "state): Adam keeps the mean of squared gradients, Adamax the running "
                "maximum of |g| ('exp_inf'), which cannot be recovered from it, and "
                "'exp_avg' alone does not resume Adamax. Load the model weights only and "
                "start this optimizer fresh.")


def state_dict(state_dict, param_groups, bindings, defaults):
    """Validate a state dict against the optimizer's groups; mutates nothing.

    Parameter ids may be any hashable values: they are matched to the optimizer's
    parameters by position, as torch does. ``state`` entries that no group lists are
    kept (non-parameter state). A ``torch.optim.Adamax`` state dict is accepted:
    ``exp_avg``/``exp_inf`` are the same slots, options missing here take
    ``defaults``, and parameters it has no entry for start with zero slots.

    Returns ``(loaded, extra, from_torch)``: per group ``(group, hyperparameters,
    entries, steps)`` (the new group dict with the loaded options, ``params`` and
    ``param_names``; its validated settings; per parameter its state entry or None;
    the group's step count), the non-parameter entries, and whether any group came
    from one of torch's optimizers.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}.")
    missing = [key for key in ("state", "param_groups") if key not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks the key(s) {missing}.")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)):
        raise TypeError("state_dict['param_groups'] must be a list.")
    if not isinstance(saved_state, dict):
        raise TypeError("state_dict['state'] must be a dict.")
    if len(saved_groups) != len(param_groups):
        raise ValueError(f"state_dict has {len(saved_groups)} parameter groups; this "
                         f"optimizer has {len(param_groups)}.")
    _refuse_other_optimizers(saved_state)
    loaded, used, any_torch = [], set(), False
    for index, (saved, group, binding) in enumerate(zip(saved_groups, param_groups, bindings)):
        label = f"state_dict['param_groups'][{index}]"
        if not isinstance(saved, dict) or "params" not in saved:
            raise TypeError(f"{label} must be a dict with a 'params' list.")
        ids = saved["params"]
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"{label}['params'] must be a list of parameter ids.")
        if len(ids) != len(binding.params):
            raise ValueError(f"{label} has {len(ids)} parameters; group {index} of this "
                             f"optimizer has {len(binding.params)}.")
        new_group, from_torch = _saved_options(saved, defaults, label)
        any_torch = any_torch or from_torch
        hyperparameters = options.hyperparameters(new_group, label)
        new_group["betas"] = tuple(new_group["betas"])
        new_group["params"] = group["params"]
        if "param_names" in saved:
            names = list(saved["param_names"])
            if len(names) != len(ids):
                raise ValueError(f"{label} has {len(names)} param_names for {len(ids)} "
                                 "parameters.")
            new_group["param_names"] = names
        elif "param_names" in group:
            new_group["param_names"] = group["param_names"]
        wanted = {"step"} | {key for key, slot in options.SLOT_KEYS.items()
                             if slot in slot_names(
                                 hyperparameters.use_ema,
                                 hyperparameters.gradient_accumulation_steps is not None)}
        entries, steps = [], set()
        for k, pid in enumerate(ids):
            where = f"state_dict['state'][{pid!r}]"
            try:
                hash(pid)
            except TypeError:
                raise TypeError(f"{label}['params'] holds {pid!r}, which is not hashable; "
                                "parameter ids must be hashable (ints or names).") from None
            if pid in used:
                raise ValueError(f"parameter id {pid!r} appears in more than one place.")
            used.add(pid)
            if pid not in saved_state:
                if not from_torch:
                    raise ValueError(f"{where} is missing.")
                entries.append(None)  # torch creates state at a parameter's first step
                continue
            steps.add(state_entry(saved_state[pid], binding.params[k], wanted, where))
            entries.append(saved_state[pid])
        if len(steps) > 1:
            raise ValueError(f"the parameters of {label} have different steps "
                             f"{sorted(steps)}; a group shares one step counter.")
        loaded.append((new_group, hyperparameters, entries, steps.pop() if steps else 0))
    extra = {key: value for key, value in saved_state.items() if key not in used}
    return loaded, extra, any_torch
