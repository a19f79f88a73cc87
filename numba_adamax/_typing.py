"""Names for the types in the public API's annotations (nothing here runs at a step).

Arrays are annotated ``Any``: a variable is a NumPy array or a CUDA device array (any
object with ``__cuda_array_interface__``), which no single static type describes.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from ._flat_buffer import FlatBuffer
    from ._indexed_slices import IndexedSlices
    from .schedules import LearningRateSchedule

#: A variable or a dense gradient, a NumPy array or a CUDA device array.
Array = Any
#: The variables of an optimizer, as a list or tuple, a dict name -> array, or a
#: FlatBuffer.
Variables = Union[Sequence[Array], Mapping[str, Array], "FlatBuffer"]
#: One call's gradients, in the structure of the variables; an entry may be None (no
#: gradient) or an ``IndexedSlices`` (some rows).
Gradients = Union[Sequence[Union[Array, "IndexedSlices", None]],
                  Mapping[str, Union[Array, "IndexedSlices", None]], "FlatBuffer"]
#: A learning rate, as a number, a schedule, or a callable taking no argument.
LearningRate = Union[float, "LearningRateSchedule", Callable[[], float]]
#: A file path.
PathLike = Union[str, "os.PathLike[str]"]
