"""Benchmarks of numba_adamax, and the helpers the asv suite and the tests share.

Commands (each with ``--help``):

* ``python -m numba_adamax.benchmark``: one step side by side with a roofline, NumPy,
  PyTorch and optax (``runner``);
* ``python -m numba_adamax.benchmark.gpu``: one step on a CUDA GPU against the copy
  bandwidth and PyTorch;
* ``python -m numba_adamax.benchmark.nonfinite``: the cost of each ``nonfinite`` policy;
* ``python -m numba_adamax.benchmark.numpy``: numba_adamax against NumPy alone;
* ``python -m numba_adamax.benchmark.busy``: step latency (median, p90) beside CPU-bound
  processes.

Modules: ``problems`` (the data), ``contenders`` (the timed implementations),
``roofline`` (streaming kernels with a step's memory traffic), ``devices`` (CPU or
CUDA arrays). The runtime package never imports this subpackage.
"""
from .contenders import LR, VARIANTS, NumpyAdamax, Unavailable
from .devices import gpu_unavailable_reason, place, require, synchronizer
from .problems import embedding_batch, mixed_shapes, problem, random_arrays, zipf_indices
from .runner import (CONTENDERS, PEERS, VARIANT_NAMES, configure_threads, describe_machine,
                     format_report, main, measure, plot)

__all__ = ["CONTENDERS", "LR", "NumpyAdamax", "PEERS", "Unavailable", "VARIANTS",
           "VARIANT_NAMES", "configure_threads", "describe_machine", "embedding_batch",
           "format_report", "gpu_unavailable_reason", "main", "measure", "mixed_shapes",
           "place", "plot", "problem", "random_arrays", "require", "synchronizer",
           "zipf_indices"]
