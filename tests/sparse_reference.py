"""A slow, obvious NumPy reference of lazy sparse Adamax.

``LazySparseReference`` is ``ReferenceAdamax`` (the Keras 3 algorithm) with one more kind of
gradient: an object with ``values`` and ``indices`` (``numba_adamax.IndexedSlices`` or the
``Slices`` tuple below). Such a gradient is turned into its equivalent dense gradient (duplicate
indices summed) plus the set of rows it touches, and then goes through the same steps as a dense
one, except that only the touched rows of the variable, ``m`` and ``u`` change:

* loss-scale unscaling, clipping (the norms are those of the equivalent dense gradient) and the
  EMA are exactly the dense ones;
* weight decay and the Adamax update are computed for the whole variable, as in the dense
  reference, and then kept on the touched rows only (untouched rows do not decay);
* with gradient accumulation, the dense equivalent is added to the accumulator and its rows are
  remembered; an update step touches every row remembered since the previous update. A dense
  gradient touches every row.

Like ``ReferenceAdamax`` it does not import ``numba_adamax`` and computes in float64 by default.
"""

import warnings
from collections import namedtuple

import numpy as np

from reference import ReferenceAdamax

__all__ = ["LazySparseReference", "Slices", "is_sparse"]

#: A sparse gradient for the reference: rows ``indices`` of axis 0 get ``values``.
Slices = namedtuple("Slices", ["values", "indices"])


def is_sparse(gradient):
    return hasattr(gradient, "values") and hasattr(gradient, "indices")


class LazySparseReference(ReferenceAdamax):
    """``ReferenceAdamax`` that also takes sparse gradients and applies them lazily."""

    def _build(self, variables):
        super()._build(variables)
        # rows touched by a gradient since the last update (only used with accumulation)
        self.window = [np.zeros(np.shape(v)[0] if np.ndim(v) else 1, bool) for v in variables]

    def _densify(self, gradient, variable):
        """``(dense gradient, touched-row mask)`` of one gradient, in the compute dtype."""
        n_rows = np.shape(variable)[0] if np.ndim(variable) else 1
        if not is_sparse(gradient):
            return np.array(gradient, dtype=self.dtype), np.ones(n_rows, bool)
        dense = np.zeros(np.shape(variable), dtype=self.dtype)
        indices = np.asarray(gradient.indices, dtype=np.int64)
        np.add.at(dense, indices, np.asarray(gradient.values, dtype=self.dtype))
        touched = np.zeros(n_rows, bool)
        touched[indices] = True
        return dense, touched

    def apply(self, grads, variables):
        """One optimizer call: the order of ``ReferenceAdamax.apply``, lazily on touched rows."""
        if len(grads) == 0:
            return
        if not self.built:
            self._build(variables)
        w = [np.array(v, dtype=self.dtype) for v in variables]
        active = [j for j, g in enumerate(grads) if g is not None]
        if not active:
            raise ValueError("No gradients provided for any variable.")
        if len(active) < len(grads):
            warnings.warn("Gradients do not exist for some variables", stacklevel=2)
        g, touched = {}, {}
        for j in active:
            g[j], touched[j] = self._densify(grads[j], variables[j])
        lr = self._scalar(self.lr_value())

        if self.loss_scale_factor is not None:
            for j in active:
                g[j] = g[j] / self._scalar(self.loss_scale_factor)

        is_update_step = True
        if self.gas:
            is_update_step = (self.raw + 1) % self.gas == 0
            if is_update_step:
                for j in active:
                    g[j] = (g[j] + self.acc[j]) / self._scalar(self.gas)
                    touched[j] = touched[j] | self.window[j]
                for a, rows in zip(self.acc, self.window):
                    a[...] = 0
                    rows[...] = False
            else:
                for j in active:
                    self.acc[j] = self.acc[j] + g[j]
                    self.window[j] |= touched[j]

        if is_update_step:
            g = self._clip(g)
            for j in active:
                before = (w[j].copy(), self.m[j].copy(), self.u[j].copy())
                if self.weight_decay is not None and not self._is_excluded(j):
                    wd = self._scalar(self.weight_decay)
                    w[j] = w[j] - w[j] * wd * lr
                self._adamax_update(j, g[j], w, lr)
                # untouched rows keep their values: no decay, no update
                keep = ~touched[j]
                if keep.any():
                    for current, old in zip((w[j], self.m[j], self.u[j]), before):
                        current[keep] = old[keep]

        if self.use_ema:
            self._update_ema(w)
        for v, new in zip(variables, w):
            v[...] = new
        self.raw += 1
