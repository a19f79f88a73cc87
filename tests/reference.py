"""A slow, obvious NumPy reference of the Keras 3 Adamax optimizer.

This is the test oracle: every fast path of ``numba_adamax`` is compared with it. It is written
for readability, never for speed, in the order of operations of Keras 3's ``apply``, plus the
library's documented additions (the TF 1.x ``decay`` keyword).

By default everything is computed in float64. ``dtype=np.float32`` instead computes every
intermediate result in float32, with the Python scalars cast the way Keras casts them, so that
float32 trajectories recorded from Keras can be replayed with Keras' rounding.

It deliberately does not import ``numba_adamax``: learning-rate schedules are recognised by duck
typing (an object with a ``get_config`` attribute is a schedule, called with the raw counter).
"""

import re
import warnings

import numpy as np

__all__ = ["ReferenceAdamax", "is_schedule"]


def is_schedule(learning_rate):
    """A schedule is any object with ``get_config``; it is called as ``schedule(step)``."""
    return hasattr(learning_rate, "get_config") and callable(learning_rate)


class ReferenceAdamax:
    """Keras 3 ``Adamax`` (plus the TF 1.x ``decay`` keyword), on NumPy arrays.

    ``apply(grads, variables)`` updates ``variables`` (NumPy arrays) in place. Slots are public
    lists of arrays: ``m`` (first moment), ``u`` (infinity norm), ``ema`` (EMA averages, only with
    ``use_ema``) and ``acc`` (gradient accumulators, only with ``gradient_accumulation_steps``).
    ``raw`` counts the calls to ``apply`` that did not return early.

    No argument validation is done here (the library validates): this class just computes.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        decay=None,
        exclude_names=(),
        names=None,
        exclude_indices=(),
        dtype=np.float64,
    ):
        self.learning_rate = learning_rate
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        self.use_ema = use_ema
        self.ema_momentum = ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.decay = decay
        self.names = None if names is None else list(names)
        self.exclude_names = list(exclude_names)
        self.exclude_indices = list(exclude_indices)
        self.dtype = np.dtype(dtype)

        self.raw = 0  # number of apply() calls (Keras `_iterations`)
        self.built = False
        self.m = []
        self.u = []
        self.ema = []
        self.acc = []

    # ------------------------------------------------------------------ counters and lr

    @property
    def gas(self):
        """Gradient-accumulation steps, or 0 when off (0 and None both mean off)."""
        return self.gradient_accumulation_steps or 0

    @property
    def iterations(self):
        """`raw` without accumulation, `floor(raw / gas)` with it."""
        if self.gas:
            return self.raw // self.gas
        return self.raw

    def lr_value(self):
        """The learning rate the next `apply` will use, as a Python float.

        A schedule gets the raw counter; a zero-argument callable is just called; then the TF1
        inverse-time `decay` divides by (1 + decay * raw).
        """
        if is_schedule(self.learning_rate):
            lr = float(self.learning_rate(self.raw))
        elif callable(self.learning_rate):
            lr = float(self.learning_rate())
        else:
            lr = float(self.learning_rate)
        if self.decay:
            lr = lr / (1.0 + self.decay * self.raw)
        return lr

    def exclude_from_weight_decay(self, var_names=None, var_indices=None):
        """Replace the exclusions (a later call replaces the earlier one)."""
        self.exclude_names = list(var_names or [])
        self.exclude_indices = list(var_indices or [])

    # ------------------------------------------------------------------ helpers

    def _scalar(self, x):
        """A Python scalar as Keras sees it inside the math: rounded to the compute dtype."""
        return self.dtype.type(x)

    def _is_excluded(self, j):
        """One regex `'|'.join(set(names))` searched in the variable's name."""
        if j in self.exclude_indices:
            return True
        if not self.exclude_names:
            return False
        if self.names is None:
            raise ValueError("exclude_names needs variable names (pass names=[...])")
        pattern = re.compile("|".join(set(self.exclude_names)))
        return pattern.search(self.names[j]) is not None

    def _build(self, variables):
        """Zero slots shaped like each variable (EMA, accumulators, then m/u)."""
        zeros = [np.zeros(np.shape(v), dtype=self.dtype) for v in variables]
        if self.use_ema:
            self.ema = [z.copy() for z in zeros]
        if self.gas:
            self.acc = [z.copy() for z in zeros]
        self.m = [z.copy() for z in zeros]
        self.u = [z.copy() for z in zeros]
        self.built = True

    # ------------------------------------------------------------------ the algorithm

    def apply(self, grads, variables):
        """One optimizer step, in the exact order of Keras' ``apply``."""
        # an empty gradient list returns at once (nothing built, no counter change).
        if len(grads) == 0:
            return
        if len(grads) != len(variables):
            raise ValueError("grads and variables must have the same length")

        # the first call builds the slots.
        if not self.built:
            self._build(variables)

        # Work on copies in the compute dtype; results are written back at the end.
        w = [np.array(v, dtype=self.dtype) for v in variables]

        # drop None gradients; all None is an error (already built, counter unchanged).
        active = [j for j, g in enumerate(grads) if g is not None]
        if not active:
            raise ValueError("No gradients provided for any variable.")
        if len(active) < len(grads):
            missing = [j for j, g in enumerate(grads) if g is None]
            warnings.warn(f"Gradients do not exist for variables {missing}", stacklevel=2)
        g = {j: np.array(grads[j], dtype=self.dtype) for j in active}

        # the learning rate is read once per apply (weight decay uses the same value).
        lr = self._scalar(self.lr_value())

        # loss-scale unscaling, before accumulation.
        if self.loss_scale_factor is not None:
            for j in active:
                g[j] = g[j] / self._scalar(self.loss_scale_factor)

        # gradient accumulation decides whether this call updates at all.
        if self.gas:
            is_update_step = (self.raw + 1) % self.gas == 0
            if is_update_step:
                # The mean of the last `gas` micro-gradients; then ALL accumulators restart at 0.
                for j in active:
                    g[j] = (g[j] + self.acc[j]) / self._scalar(self.gas)
                for a in self.acc:
                    a[...] = 0
            else:
                for j in active:
                    self.acc[j] = self.acc[j] + g[j]
        else:
            is_update_step = True

        if is_update_step:
            g = self._clip(g)
            self._weight_decay(w, active, lr)
            for j in active:
                self._adamax_update(j, g[j], w, lr)

        # EMA of all variables, then the optional overwrite.
        if self.use_ema:
            self._update_ema(w)

        # Write the results back into the caller's arrays, then count the call.
        for v, new in zip(variables, w):
            v[...] = new
        self.raw += 1

    def _clip(self, g):
        """The first positive setting among clipnorm, global_clipnorm, clipvalue wins."""
        if self.clipnorm and self.clipnorm > 0:
            # Per variable: g * c / max(||g||, c); applied even when ||g|| <= c.
            c = self._scalar(self.clipnorm)
            for j in g:
                norm = np.sqrt(np.sum(g[j] * g[j]))
                g[j] = g[j] * c / np.maximum(norm, c)
        elif self.global_clipnorm and self.global_clipnorm > 0:
            # One norm N over all gradients; scale = c * min(1/N, 1/c) + (N - N).
            # N = 0 gives scale 1; N inf or NaN gives scale NaN.
            c = self._scalar(self.global_clipnorm)
            n = np.sqrt(sum(np.sum(g[j] * g[j]) for j in g))
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = c * np.minimum(self._scalar(1) / n, self._scalar(1) / c) + (n - n)
            for j in g:
                g[j] = g[j] * scale
        elif self.clipvalue and self.clipvalue > 0:
            v = self._scalar(self.clipvalue)
            for j in g:
                g[j] = np.clip(g[j], -v, v)
        return g

    def _weight_decay(self, w, active, lr):
        """Decoupled decay w -= w * wd * lr, for the non-excluded variables of this call."""
        if self.weight_decay is None:
            return
        wd = self._scalar(self.weight_decay)
        for j in active:
            if not self._is_excluded(j):
                w[j] = w[j] - w[j] * wd * lr

    def _adamax_update(self, j, g, w, lr):
        """The Keras 3 update rule, in Keras' operation order."""
        t = self._scalar(self.iterations + 1)  # 1-based number of the *update*
        beta_1_power = self._scalar(self.beta_1) ** t  # recomputed every step, no running product
        one_minus_beta_1 = self._scalar(1 - self.beta_1)  # computed in Python, then rounded
        beta_2 = self._scalar(self.beta_2)
        epsilon = self._scalar(self.epsilon)

        # m += (g - m) * (1 - beta_1)
        self.m[j] = self.m[j] + (g - self.m[j]) * one_minus_beta_1
        # u = max(beta_2 * u, |g|), NaN-propagating
        self.u[j] = np.maximum(beta_2 * self.u[j], np.abs(g))
        # w -= (lr * m) / ((1 - beta_1^t) * (u + epsilon)), with the new m and u;
        # epsilon = 0 gives NaN where u == 0, as in Keras.
        with np.errstate(divide="ignore", invalid="ignore"):
            step = (lr * self.m[j]) / ((self._scalar(1) - beta_1_power) * (self.u[j] + epsilon))
        w[j] = w[j] - step

    def _update_ema(self, w):
        """avg = mom * avg + (1 - mom) * w for every variable; mom = 0 on the first update."""
        k = self.iterations  # read before the counter moves
        momentum = self._scalar(0 if k == 0 else self.ema_momentum)
        one_minus_momentum = self._scalar(1) - momentum
        for j in range(len(w)):
            self.ema[j] = momentum * self.ema[j] + one_minus_momentum * w[j]
        # Overwrite on the calls where (k + 1) % f == 0 (a whole block of micro-steps with gas).
        f = self.ema_overwrite_frequency
        if f is not None and (k + 1) % f == 0:
            for j in range(len(w)):
                w[j] = self.ema[j].copy()

    def finalize(self, variables):
        """`finalize_variable_values`: copy the EMA averages into the variables."""
        if not self.use_ema:
            return
        if len(variables) != len(self.ema):
            raise ValueError(
                f"The length of model variables ({len(variables)}) to override does not match "
                f"the length of EMA variables ({len(self.ema)})."
            )
        for v, avg in zip(variables, self.ema):
            v[...] = avg
