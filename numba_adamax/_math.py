"""Per-element Adamax arithmetic, written once for every target.

``compile_for(decorator)`` defines the scalar functions and compiles them with the
given decorator: the CPU kernels use ``numba.njit(inline="always")`` and the CUDA
kernels ``cuda.jit(device=True)``, so both targets run exactly the same float
operations in the same order (the order Keras 3 uses; see the README's "Update
rule"). ``compile_for(lambda f: f)`` gives the plain Python versions.

Every scalar argument already has the variable's dtype when these functions run:
the kernels cast the Python floats they receive before the element loop, and the
functions use no float literals (a literal would promote float32 to float64).
"""
from types import SimpleNamespace

# Kernel modes: what one fused pass does to each element.
MODE_UPDATE = 0      # unscale, accumulate-mean, clip, decay, Adamax update, EMA
MODE_ACCUMULATE = 1  # accumulator += unscaled gradient, then EMA
MODE_EMA_ONLY = 2    # no gradient for this variable: EMA (and overwrite) only

# Gradient clipping modes, resolved in Python from the Keras priority rules.
CLIP_NONE = 0
CLIP_NORM = 1        # g * clip_a / clip_b, with clip_b = max(||g||, clipnorm)
CLIP_SCALE = 2       # g * clip_a  (global_clipnorm's common scale)
CLIP_VALUE = 3       # clip(g, -clip_a, clip_a)


def compile_for(decorator):
    """Return a namespace of the element functions, each wrapped by ``decorator``."""

    @decorator
    def nan_max(a, b):
        """The larger of ``a`` and ``b``, or NaN when either is NaN (like ``np.maximum``)."""
        if a != a:
            return a
        if b != b:
            return b
        return a if a >= b else b

    @decorator
    def nan_clip(x, limit):
        """``x`` clipped to ``[-limit, limit]``; NaN stays NaN (like ``np.clip``)."""
        if x != x:
            return x
        if x < -limit:
            return -limit
        if x > limit:
            return limit
        return x

    @decorator
    def effective_gradient(g, acc, has_loss_scale, loss_scale, use_acc, steps):
        """The gradient an update sees before clipping.

        Loss-scale unscaling first; then, on an accumulation update step, the mean of
        the accumulated micro-gradients and this one: ``(g + acc) / steps``.
        """
        if has_loss_scale:
            g = g / loss_scale
        if use_acc:
            g = (g + acc) / steps
        return g

    @decorator
    def clip_gradient(g, clip_mode, clip_a, clip_b):
        """Apply the clipping chosen in Python (see the ``CLIP_*`` constants)."""
        if clip_mode == CLIP_NORM:
            return (g * clip_a) / clip_b
        if clip_mode == CLIP_SCALE:
            return g * clip_a
        if clip_mode == CLIP_VALUE:
            return nan_clip(g, clip_a)
        return g

    @decorator
    def adamax_update(w, g, m, u, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon,
                      bias_correction):
        """Decoupled weight decay, then the Keras 3 Adamax rule; returns ``(w, m, u)``.

        ``bias_correction`` is ``1 - beta_1 ** t`` already rounded to the dtype.
        """
        if has_wd:
            w = w - w * wd * lr
        m = m + (g - m) * one_minus_beta_1
        u = nan_max(beta_2 * u, abs(g))
        w = w - (lr * m) / (bias_correction * (u + epsilon))
        return w, m, u

    @decorator
    def ema_update(average, w, momentum, one_minus_momentum):
        """One exponential-moving-average step of ``average`` towards ``w``."""
        return momentum * average + one_minus_momentum * w

    @decorator
    def fused_element(mode, w, g, m, u, e, a,
                      has_loss_scale, loss_scale, use_acc, steps,
                      clip_mode, clip_a, clip_b,
                      lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction,
                      use_ema, ema_momentum, one_minus_ema_momentum, overwrite):
        """Everything one optimizer call does to one element; returns ``(w, m, u, e, a)``.

        ``MODE_UPDATE``: gradient preparation, weight decay, Adamax update and, when
        accumulating, the accumulator reset. ``MODE_ACCUMULATE``: the unscaled
        gradient is added to the accumulator. ``MODE_EMA_ONLY``: the variable had no
        gradient. In every mode the EMA step and the optional overwrite ``w = e``
        come last.
        """
        if mode == MODE_UPDATE:
            g = effective_gradient(g, a, has_loss_scale, loss_scale, use_acc, steps)
            g = clip_gradient(g, clip_mode, clip_a, clip_b)
            w, m, u = adamax_update(w, g, m, u, lr, has_wd, wd, one_minus_beta_1,
                                    beta_2, epsilon, bias_correction)
            if use_acc:
                a = steps - steps  # a zero of the right dtype
        elif mode == MODE_ACCUMULATE:
            if has_loss_scale:
                g = g / loss_scale
            a = a + g
        if use_ema:
            e = ema_update(e, w, ema_momentum, one_minus_ema_momentum)
            if overwrite:
                w = e
        return w, m, u, e, a

    return SimpleNamespace(
        nan_max=nan_max, nan_clip=nan_clip, effective_gradient=effective_gradient,
        clip_gradient=clip_gradient, adamax_update=adamax_update, ema_update=ema_update,
        fused_element=fused_element)
