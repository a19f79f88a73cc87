"""``IndexedSlices``: a sparse gradient that covers some rows of a variable."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IndexedSlices:
    """A gradient for the rows ``indices`` of axis 0 of a variable.

    ``values[k]`` is the gradient of row ``indices[k]``, so ``values`` has the shape
    ``(len(indices), *variable.shape[1:])`` and the variable's dtype. An index may
    appear several times: its rows are summed. ``dense_shape``, when given, must be
    the variable's shape. Rows that no index names get no update at all: their
    ``m`` and ``u`` do not decay (the TF 1.x "lazy" Adamax).

    The object only holds its three fields; the optimizer checks them against the
    variable when it is applied (``numba_adamax._validation.sparse_gradient``).
    """

    __slots__ = ("values", "indices", "dense_shape")

    def __init__(self, values: Any, indices: Any,
                 dense_shape: Sequence[int] | None = None) -> None:
        self.values = values
        self.indices = indices
        self.dense_shape = dense_shape

    def __repr__(self) -> str:
        def describe(x):
            shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
            return type(x).__name__ if shape is None else f"array{tuple(shape)} {dtype}"

        return (f"IndexedSlices(values={describe(self.values)}, "
                f"indices={describe(self.indices)}, dense_shape={self.dense_shape!r})")
