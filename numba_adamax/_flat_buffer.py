"""``FlatBuffer``: many arrays carved out of one contiguous buffer, and where each
array sits in such a buffer (shared with the slot buffers)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

import numpy as np

from . import _validation as check
from .kernels.addresses import data_address

#: Element alignment of each array's slice inside a flat buffer (64 bytes of float32).
ALIGNMENT = 16


def aligned_offsets(sizes):
    """``(offsets, total)``: each size's start in a buffer where every slice begins on a
    multiple of ``ALIGNMENT`` elements, and the buffer's length."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // ALIGNMENT) * ALIGNMENT
    return offsets, total


class FlatBuffer(Sequence[np.ndarray]):
    """Arrays of given shapes that are views into one contiguous, aligned buffer.

    Allocate a model's parameters this way, and their gradients with ``zeros_like()``;
    an optimizer built on a ``FlatBuffer`` and given a ``FlatBuffer`` of gradients
    with the same layout checks the gradients in O(1) instead of once per array. The
    arrays behave like any numpy arrays (write into them in place, e.g.
    ``np.matmul(x.T, d, out=grads[0])``); rebinding a list entry does not change the
    buffer. Each array starts on a 64-byte boundary.

    Args:
        shapes: a list or tuple of shapes (each a tuple of non-negative ints: ``(n,)``
            for a 1-D array, never a bare ``n``), or a dict name -> shape.
        dtype: ``float32`` or ``float64``.
        names: optional distinct names, one per array (default ``variable_<i>``, or the
            keys of a dict of shapes).

    Attributes:
        data: the whole 1-D buffer (zero-initialised), padding included.
        arrays: tuple of the shaped views, in order.
        names: tuple of their names.
        layout: ``(dtype, shapes)``, equal for buffers whose arrays line up.

    ``copy.deepcopy`` and pickling give a buffer of the same layout and names over a
    copy of ``data``.
    """

    names: tuple[str, ...]
    layout: tuple[str, tuple[tuple[int, ...], ...]]
    data: np.ndarray
    arrays: tuple[np.ndarray, ...]
    addresses: np.ndarray

    def __init__(self, shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
                 dtype: Any = np.float32, *, names: Iterable[str] | None = None) -> None:
        keys = list(shapes) if isinstance(shapes, dict) else None
        listed, names = _entries(shapes, names, "`shapes`")
        if keys is None and listed and all(check.is_int(n) for n in listed):
            shape = tuple(int(n) for n in listed)
            raise ValueError(f"`shapes` must be a list of shapes, got {shape!r}: for one array "
                             f"of shape {shape} pass [{shape}]"
                             + (f", for 1-D arrays pass {[(n,) for n in shape]}."
                                if len(shape) > 1 else "."))
        checked = [_shape(s, i if keys is None else keys[i]) for i, s in enumerate(listed)]
        dtype = check.float_dtype(dtype, "`dtype`")
        self.names = (check.names(names, len(checked)) if names is not None
                      else tuple(f"variable_{i}" for i in range(len(checked))))
        self.layout = (dtype.str, tuple(checked))
        self._offsets, total = aligned_offsets(_size(shape) for shape in checked)
        self._carve(np.zeros(total, dtype=dtype))

    def _carve(self, data):
        self.data = data
        self.arrays = tuple(data[offset:offset + _size(shape)].reshape(shape)
                            for offset, shape in zip(self._offsets, self.layout[1]))
        self.addresses = np.array([data_address(a) for a in self.arrays], dtype=np.int64)

    def __reduce__(self):
        # the views and their addresses are rebuilt over the copied ``data``
        return _rebuilt, (self.names, self.layout, self._offsets, self.data)

    @classmethod
    def from_arrays(cls, arrays: Sequence[Any] | Mapping[str, Any], *,
                    names: Iterable[str] | None = None) -> FlatBuffer:
        """A new buffer holding copies of ``arrays`` (a list or tuple, or a dict name ->
        array; one dtype, float32 or float64)."""
        arrays, names = _entries(arrays, names, "`arrays`")
        dtypes = {np.asarray(a).dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"`arrays` mix dtypes {sorted(map(str, dtypes))}; a FlatBuffer "
                            "holds one dtype (use one buffer per dtype).")
        buffer = cls([np.shape(a) for a in arrays], dtypes.pop() if dtypes else np.float32,
                     names=names)
        for view, a in zip(buffer.arrays, arrays):
            view[...] = a
        return buffer

    def zeros_like(self) -> FlatBuffer:
        """A new zeroed buffer with the same layout and names (e.g. for gradients)."""
        return _rebuilt(self.names, self.layout, self._offsets, np.zeros_like(self.data))

    @property
    def dtype(self) -> np.dtype:
        """The one dtype of the arrays (``float32`` or ``float64``)."""
        return self.data.dtype

    def __len__(self) -> int:
        return len(self.arrays)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[np.ndarray, ...]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | tuple[np.ndarray, ...]:
        return self.arrays[index]

    def __repr__(self) -> str:
        return (f"FlatBuffer({len(self.arrays)} arrays, {self.data.size} elements, "
                f"dtype={self.data.dtype})")


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def _entries(values, names, label):
    """``(list of values, names)`` from a list or tuple (``names`` as given) or a dict
    (its values, and its keys as the names; ``names`` must then be None)."""
    if not isinstance(values, dict):
        return check.sequence(values, label), names
    if names is not None:
        raise ValueError(f"`names` cannot be given when {label} is a dict.")
    return list(values.values()), [str(k) for k in values]


def _shape(shape, key):
    label = f"`shapes[{key!r}]`"
    if check.is_int(shape):
        raise ValueError(f"{label} must be a tuple of non-negative ints, got the int {shape}; "
                         f"a 1-D array of {shape} elements has the shape ({shape},).")
    return check.shape(shape, label)


def _rebuilt(names, layout, offsets, data):
    """A ``FlatBuffer`` over ``data`` (unpickled or copied) with the given layout."""
    buffer = object.__new__(FlatBuffer)
    buffer.names, buffer.layout, buffer._offsets = names, layout, offsets
    buffer._carve(data)
    return buffer
