"""Numba code only: the element arithmetic and the loops that run it on each target.

Nothing in this package imports from the rest of ``numba_adamax``; the host
drivers in ``numba_adamax.backends`` call it. The conventions every kernel keeps:

* Arrays are flat and C-contiguous. One call serves a whole dtype group of
  variables through two int64 tables (``table[k] = (data address, size, slot
  offset, weight decay on)`` and ``chunks[c] = (k, begin, end)``) and a gradient
  table ``refs[k]`` (0: no gradient this call); see ``addresses``.
* A slot or feature that is not configured is passed as ``None``. Numba compiles
  the branches that test it away, so each configuration gets a loop with exactly
  the memory traffic it needs, at the price of one signature per configuration.
* Scalars arrive as Python floats and are cast once per call to the math dtype;
  no float literal appears in element code, since one would promote float32
  arithmetic to float64.
* Every tunable (threshold, chunk and block sizes, JIT options) is in ``config``.

Kernels compile on first use and are cached on disk (``cache=True``). Numba's
cache is keyed on the file that defines a kernel, not on the files it calls:
after editing ``elementwise.py`` (or any module here), clear the ``__pycache__``
folder of this package, or touch every kernel module. The kernels rely on
address intrinsics and ``@overload`` helpers, so they cannot run with
``NUMBA_DISABLE_JIT=1``.
"""
