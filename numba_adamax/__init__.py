"""numba_adamax: Keras-exact Adamax with fused Numba kernels.

``Adamax`` is the Keras 3 optimizer interface; ``init`` / ``step`` are the
functional core it is built on (``AdamaxState`` is the record they share).
``schedules`` holds the Keras learning-rate schedules. ``IndexedSlices`` is a
sparse gradient (some rows of a variable), applied lazily as in TF 1.x.
Importing the package compiles nothing; kernels compile on first use (see
``warmup``).
"""
from . import schedules
from ._checkpoint import CheckpointError, load_state, save_state
from ._flat_buffer import FlatBuffer
from ._hyperparameters import Hyperparameters
from ._indexed_slices import IndexedSlices
from ._state import AdamaxState
from ._warmup import warmup
from .functional import bind, init, step
from .optimizer import Adamax

__all__ = ["Adamax", "AdamaxState", "CheckpointError", "FlatBuffer", "Hyperparameters",
           "IndexedSlices", "bind", "init", "load_state", "save_state", "schedules", "step",
           "warmup"]
__version__ = "0.1.0"
