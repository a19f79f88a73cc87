"""The argument types every CUDA kernel is launched with, per configuration shape.

A configuration's *shape* is what changes the types a kernel is compiled for: the
variables' dtype and which features are on (``Options``). The CUDA driver
(``backends/cuda.py``) passes an unconfigured slot or feature as ``None``, a scalar
converted to the group's math dtype (float32 for float16 variables, else the
variables' dtype), and Numba device arrays, which the CUDA dispatcher types as
C-contiguous arrays. ``signatures`` writes those types down for each kernel, so that
the kernels can be compiled ahead of time (``gpu_check.ptx``) for exactly the
launches the driver makes; ``tests/test_cuda.py`` checks, under the simulator, that
every launch its tests make has one of these signatures.

``OPTION_SETS`` holds the feature combinations of the CPU tests' configuration
table (``tests/configs.py``; tests/test_ptx.py checks that it covers the table) and
of the float16 test, ``DTYPES`` the variable dtypes. This module imports only
numba's type system: it works under the simulator and without a GPU.
"""
from dataclasses import dataclass

import numpy as np
from numba import types
from numba.np.numpy_support import from_dtype


@dataclass(frozen=True)
class Options:
    """The features that change kernel types: ``clip`` is ``"none"``, ``"value"``
    (``clipvalue``) or ``"norm"`` (``clipnorm`` or ``global_clipnorm``)."""

    loss_scale: bool = False
    clip: str = "none"
    accumulation: bool = False
    ema: bool = False
    weight_decay: bool = False

    def label(self):
        """A short name: the features that are on, joined by ``+`` (``plain`` for none)."""
        on = [name for name, flag in (("loss_scale", self.loss_scale),
                                      (f"clip_{self.clip}", self.clip != "none"),
                                      ("accumulation", self.accumulation),
                                      ("ema", self.ema), ("weight_decay", self.weight_decay))
              if flag]
        return "+".join(on) or "plain"


def options_of(kwargs):
    """The ``Options`` of ``Adamax(**kwargs)`` (keyword arguments as the constructor
    takes them; a schedule or callable learning rate changes no type)."""
    clip = ("norm" if kwargs.get("clipnorm") or kwargs.get("global_clipnorm")
            else "value" if kwargs.get("clipvalue") else "none")
    return Options(loss_scale=kwargs.get("loss_scale_factor") is not None, clip=clip,
                   accumulation=kwargs.get("gradient_accumulation_steps") is not None,
                   ema=bool(kwargs.get("use_ema")),
                   weight_decay=kwargs.get("weight_decay") is not None)


#: The feature combinations of the CPU tests' configurations (and, last, of the
#: float16 test of tests/test_cuda.py).
OPTION_SETS = (
    Options(),
    Options(weight_decay=True),
    Options(clip="norm"),
    Options(clip="value"),
    Options(loss_scale=True),
    Options(accumulation=True),
    Options(ema=True),
    Options(loss_scale=True, clip="norm", accumulation=True, ema=True, weight_decay=True),
    Options(clip="norm", accumulation=True),
    Options(clip="value", ema=True),
    Options(accumulation=True, ema=True),
    Options(accumulation=True, weight_decay=True),
    Options(loss_scale=True, clip="norm", weight_decay=True),
    Options(loss_scale=True, clip="value", accumulation=True),
    Options(clip="norm", ema=True),
    Options(loss_scale=True, clip="value", weight_decay=True),
)

#: The variable dtypes (float16 runs on CUDA only, with float32 math and slots).
DTYPES = ("float16", "float32", "float64")

_I64 = types.int64
_BOOL = types.boolean
_NONE = types.none
_INDEX_1D = types.int64[::1]
_INDEX_2D = types.int64[:, ::1]
_F64_1D = types.float64[::1]
_FLAGS = types.int32[::1]


def _vector(t):
    return t[::1]


def _matrix(t):
    return t[:, ::1]


def _math_dtype(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _dense(options, var, math):
    """``(kernel, argtypes)`` of the dense (``kernels.cuda``) launches of one shape."""
    slot = _vector(math)
    e = slot if options.ema else _NONE
    a = slot if options.accumulation else _NONE
    loss_scale = math if options.loss_scale else _NONE
    table = (_INDEX_2D, _INDEX_2D, _INDEX_1D, _vector(var))  # chunks, table, refs, like
    clip = types.UniTuple(math, 3) if options.clip == "value" else _NONE
    clip_table = _matrix(math) if options.clip == "norm" else _NONE
    wd = math if options.weight_decay else _NONE
    out = [("update_kernel", table + (clip, clip_table, math, slot, slot, e, a, loss_scale,
                                      math, math, wd, math, math, math, math, math, math,
                                      _BOOL)),
           ("all_finite_kernel", table + (_FLAGS,))]
    if options.accumulation:
        out.append(("accumulate_kernel", table + (e, a, loss_scale, math, math, _BOOL)))
    if options.ema:  # ``ema_only``: the EMA pass alone
        out.append(("accumulate_kernel", table + (e, _NONE, loss_scale, math, math, _BOOL)))
        out.append(("assign_kernel", (_vector(var), slot)))  # finalize_variable_values
    if options.clip == "norm":
        out += [("sum_of_squares_kernel", table + (a, loss_scale, math, _F64_1D)),
                ("variable_sums_kernel", (_INDEX_1D, _F64_1D, _F64_1D, _I64)),
                ("total_kernel", (_F64_1D, _F64_1D)),
                ("clipnorm_table_kernel", (_F64_1D, _I64, math, _matrix(math))),
                ("global_clip_table_kernel", (_F64_1D, math, math, _matrix(math)))]
    return out


def _sparse(options, var, math):
    """``(kernel, argtypes)`` of the sparse (``kernels.cuda_sparse``) launches of one
    shape. Deduplicated rows are in the math dtype; with accumulation the row update
    and the norm read the accumulator instead of the rows."""
    slot = _vector(math)
    a = slot if options.accumulation else _NONE
    g = _NONE if options.accumulation else slot
    clip_table = _matrix(math) if options.clip == "norm" else _NONE
    out = [("sum_rows_kernel", (_INDEX_1D, _INDEX_1D, _matrix(var), _matrix(math))),
           ("update_rows_kernel", (_INDEX_1D, _I64, _vector(var), g, slot, slot, a, math, math,
                                   clip_table, _I64, math, math, math, math, _BOOL, math, math,
                                   math, math, math)),
           ("nonfinite_kernel", (_vector(var), _FLAGS))]
    if options.accumulation:
        out.append(("scatter_accumulate_kernel", (_INDEX_1D, _I64, slot, slot, math)))
    if options.clip == "norm":
        out += [("sum_of_squares_kernel", (_INDEX_1D, _I64, _I64, g, a, math, math, _F64_1D)),
                ("store_total_kernel", (_F64_1D, _F64_1D, _I64))]
    return out


def signatures(option_sets=OPTION_SETS, dtypes=DTYPES):
    """Every distinct launch: a list of ``(module, kernel, argtypes, shapes)`` in first-seen
    order, ``module`` being ``"cuda"`` or ``"cuda_sparse"`` (under
    ``numba_adamax.kernels``) and ``shapes`` the ``"dtype/options"`` labels that launch
    it."""
    found = {}
    for dtype in dtypes:
        var = from_dtype(np.dtype(dtype))
        math = from_dtype(_math_dtype(dtype))
        for options in option_sets:
            label = f"{dtype}/{options.label()}"
            for module, launches in (("cuda", _dense(options, var, math)),
                                     ("cuda_sparse", _sparse(options, var, math))):
                for kernel, argtypes in launches:
                    found.setdefault((module, kernel, tuple(argtypes)), []).append(label)
    return [(module, kernel, argtypes, tuple(shapes))
            for (module, kernel, argtypes), shapes in found.items()]
