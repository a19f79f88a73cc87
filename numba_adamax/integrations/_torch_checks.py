"""Checks on PyTorch tensors.

CUDA tensors are handled in exactly one function, ``cuda_parameter``, and sparse
gradients in one, ``sparse_gradient`` (which turns them into ``IndexedSlices``).
Everything else here raises ``TypeError`` for the wrong kind of object or dtype and
``ValueError`` for a wrong layout or shape, and mutates nothing.
"""
import math

import torch

from .._indexed_slices import IndexedSlices

#: dtypes the CPU kernels accept.
DTYPES = (torch.float32, torch.float64)


def cuda_parameter(param, label):
    """Handle a CUDA parameter. The CUDA kernels are not wired into the PyTorch
    optimizer in this version, so this raises ``NotImplementedError``."""
    raise NotImplementedError(
        f"{label} is a CUDA tensor ({param.device}); numba_adamax.integrations.torch.Adamax "
        "supports CPU tensors only in this version.")


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
    indices = grad._indices()[0].contiguous().numpy()
    values = grad._values().detach().contiguous().numpy()
    return IndexedSlices(values, indices, tuple(param.shape))


def parameter(param, label):
    """Check one parameter: a leaf, dense, C-contiguous float32/float64 CPU tensor."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(param).__name__}.")
    if not (param.is_leaf or param.retains_grad):
        raise ValueError(f"{label} is not a leaf tensor; an optimizer can only update leaves.")
    if param.is_cuda:
        cuda_parameter(param, label)
    if param.device.type != "cpu":
        raise TypeError(f"{label} is on device {param.device}; only CPU tensors are supported.")
    if param.layout != torch.strided:
        raise TypeError(f"{label} has layout {param.layout}; only dense tensors are supported.")
    if param.dtype not in DTYPES:
        raise TypeError(f"{label} has dtype {param.dtype}; expected torch.float32 or "
                        "torch.float64.")
    if not param.is_contiguous():
        raise ValueError(f"{label} is not contiguous; make it contiguous before building "
                         "the optimizer (e.g. `p.data = p.data.contiguous()`).")


def gradient(param, label):
    """The gradient of ``param`` as a zero-copy NumPy array, or None when it has none.

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
    return grad.detach().numpy()


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
