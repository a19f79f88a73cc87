"""Per-element Adamax arithmetic, written once for every target.

``compile_for(decorator)`` defines the element functions and compiles them with
the given decorator: the CPU kernels use ``numba.njit(inline="always")`` and the
CUDA kernels ``cuda.jit(device=True)``, so both targets run exactly the same float
operations in the same order (Keras 3's order; see the README's "Update rule").
Two target hooks keep the targets' results identical:

* every element of a variable or of its gradient is read through ``widen`` (CUDA:
  float16 to float32, so no arithmetic or comparison runs in float16; the CPU has no
  float16 and reads elements as they are);
* every product that is then added to or subtracted from is ``mul(a, b)``, rounded
  on its own. On CUDA, NVVM and ptxas otherwise contract ``a * b + c`` into one
  fused multiply-add, rounded once, which the CPU never does.

Two layers:

* scalar rules (``adamax_update``, ``clip_gradient``, ...), pure functions of
  numbers;
* per-index bodies (``update_at``, ``accumulate_at``, ``ema_at``, ``square_at``,
  ``without_gradient_at`` and the ``sparse_*`` bodies) that load element ``i`` of
  the arrays, apply the rules and store the results.
  A kernel is a loop over ``i`` calling one body. Optional slots (EMA averages,
  accumulators) are passed as ``None`` when not configured; numba then compiles
  the branches on them away, so each configuration gets a loop with exactly the
  memory traffic it needs.

All scalars already have the variables' dtype when these functions run (the
kernels cast them once per call), and no float literal appears: one would promote
float32 arithmetic to float64. Features that are off are passed as ``None`` too
(``loss_scale``, ``clip``), so their arithmetic (two divisions per element) is
compiled away rather than done with neutral values.
"""
import math
from types import SimpleNamespace


def compile_for(decorator, float64, widen=None, mul=None):
    """Return a namespace of the element functions, each wrapped by ``decorator``;
    ``float64`` is the target's conversion to float64 (``numba.float64``: the builtin
    ``float`` keeps a float32 a float32 in CPU code), ``widen`` its conversion of a
    loaded variable or gradient element to the math dtype (default: none) and ``mul``
    its separately rounded product (default: ``a * b``)."""
    if widen is None:
        @decorator
        def widen(x):
            return x

    if mul is None:
        @decorator
        def mul(a, b):
            return a * b

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
    def nan_min(a, b):
        """The smaller of ``a`` and ``b``, or NaN when either is NaN (like ``np.minimum``)."""
        if a != a:
            return a
        if b != b:
            return b
        return a if a <= b else b

    @decorator
    def is_finite(x):
        """False exactly when ``x`` is NaN or +-inf (branch-free: ``inf - inf`` is NaN)."""
        return x - x == x - x

    @decorator
    def clipnorm_divisor(squared_norm, c):
        """``max(sqrt(squared_norm), c)``, the divisor of ``clipnorm = c``; the squared
        norm already rounded to the dtype."""
        return nan_max(c - c + math.sqrt(squared_norm), c)

    @decorator
    def global_clip_scale(squared_norm, c, one):
        """``c * min(1/N, 1/c) + (N - N)`` with ``N = sqrt(squared_norm)``, the factor of
        ``global_clipnorm = c`` (NaN when N is not finite); ``one`` is 1 in the dtype."""
        n = c - c + math.sqrt(squared_norm)
        return mul(c, nan_min(one / n, one / c)) + (n - n)

    @decorator
    def clip_gradient(g, clip_scale, clip_divisor, clip_value):
        """``clip((g * clip_scale) / clip_divisor, -clip_value, clip_value)``.

        ``clipnorm = c``: scale ``c``, divisor ``max(||g||, c)``. ``global_clipnorm``:
        scale ``c * min(1/N, 1/c) + (N - N)``, divisor 1. ``clipvalue = v``: scale
        and divisor 1, value ``v``. Off: 1, 1, inf.
        """
        return nan_clip((g * clip_scale) / clip_divisor, clip_value)

    @decorator
    def adamax_update(w, g, m, u, lr, one_minus_beta_1, beta_2, epsilon, bias_correction):
        """The Keras 3 Adamax rule; returns ``(w, m, u)``.

        ``bias_correction`` is ``1 - beta_1 ** t``, already rounded to the dtype.
        """
        m = m + mul(g - m, one_minus_beta_1)
        u = nan_max(mul(beta_2, u), abs(g))
        w = w - (lr * m) / (bias_correction * (u + epsilon))
        return w, m, u

    @decorator
    def ema_update(average, w, momentum, one_minus_momentum):
        """One exponential-moving-average step of ``average`` towards ``w``."""
        return mul(momentum, average) + mul(one_minus_momentum, w)

    @decorator
    def update_at(i, w, g, m, u, e, a, loss_scale, steps, clip, lr, has_wd, wd,
                  one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                  one_minus_ema_momentum, overwrite):
        """An update step on element ``i``; mutates ``w``, ``m``, ``u`` and ``e``/``a`` if given.

        Order: unscale, accumulated mean (and accumulator reset), clip, weight decay,
        Adamax, EMA, overwrite. ``clip`` is ``(clip_scale, clip_divisor, clip_value)``.
        ``wd`` is None without weight decay; ``has_wd`` is False for an excluded
        variable.
        """
        gi = effective_gradient_at(i, g, a, loss_scale, steps)
        if a is not None:
            a[i] = 0
        if clip is not None:
            gi = clip_gradient(gi, clip[0], clip[1], clip[2])
        wi = widen(w[i])
        if wd is not None:  # weight decay configured (compiled away when not)
            if has_wd:  # and this variable not excluded
                wi = wi - mul(wi * wd, lr)
        wi, m[i], u[i] = adamax_update(wi, gi, m[i], u[i], lr, one_minus_beta_1, beta_2,
                                       epsilon, bias_correction)
        if e is not None:
            ei = ema_update(e[i], wi, ema_momentum, one_minus_ema_momentum)
            e[i] = ei
            if overwrite:
                wi = ei
        w[i] = wi

    @decorator
    def accumulate_at(i, w, g, e, a, loss_scale, ema_momentum, one_minus_ema_momentum,
                      overwrite):
        """An accumulation micro-step on element ``i``: ``a += g / loss_scale``, then EMA.
        Without an accumulator (``a`` None) only the EMA step runs."""
        if a is not None:
            gi = widen(g[i])
            if loss_scale is not None:
                gi = gi / loss_scale
            a[i] = a[i] + gi
        if e is not None:
            ema_at(i, w, e, ema_momentum, one_minus_ema_momentum, overwrite)

    @decorator
    def ema_at(i, w, e, ema_momentum, one_minus_ema_momentum, overwrite):
        """The EMA step (and optional overwrite ``w = e``) on element ``i``."""
        ei = ema_update(e[i], widen(w[i]), ema_momentum, one_minus_ema_momentum)
        e[i] = ei
        if overwrite:
            w[i] = ei

    @decorator
    def without_gradient_at(i, w, e, a, ema_momentum, one_minus_ema_momentum, overwrite,
                            reset_accumulator):
        """Element ``i`` of a variable without a gradient this call: the EMA step (when
        ``e`` is given) and, when ``reset_accumulator``, the accumulator reset."""
        if e is not None:
            ema_at(i, w, e, ema_momentum, one_minus_ema_momentum, overwrite)
        if a is not None:
            if reset_accumulator:
                a[i] = 0

    @decorator
    def effective_gradient_at(i, g, a, loss_scale, steps):
        """The gradient an update of element ``i`` sees before clipping: unscaled
        (``g / loss_scale``) and, with an accumulator, the window's mean."""
        gi = widen(g[i])
        if loss_scale is not None:
            gi = gi / loss_scale
        if a is not None:
            gi = (gi + a[i]) / steps
        return gi

    @decorator
    def square_at(i, g, a, loss_scale, steps):
        """The square, in float64, of the effective gradient of element ``i`` (one term
        of a squared norm for clipping)."""
        x = float64(effective_gradient_at(i, g, a, loss_scale, steps))
        return mul(x, x)

    # Lazy sparse updates (``IndexedSlices``): ``g`` holds deduplicated gradient rows,
    # so element ``k`` of ``g`` belongs to element ``i`` of the variable and slots. A
    # kernel maps each ``k`` of a touched row to its ``i``; the bodies below never
    # look at other elements, so any loop order (or one GPU thread per ``k``) works.

    @decorator
    def scatter_accumulate_at(k, i, g, a, loss_scale):
        """``a[i] += g[k] / loss_scale``: a sparse gradient element joins the accumulator."""
        a[i] = a[i] + g[k] / loss_scale

    @decorator
    def sparse_gradient_at(k, i, g, a, loss_scale, steps):
        """The gradient element ``i`` sees on a lazy update, before clipping.

        Exactly one of ``g`` and ``a`` is given. Without accumulation: ``g[k] /
        loss_scale``. With accumulation (``g`` None) the call's rows were already
        scatter-added into ``a`` (``scatter_accumulate_at``), so it is ``a[i] / steps``,
        the same bits as the dense ``(g / loss_scale + a) / steps`` (the addition
        commutes).
        """
        # Two independent tests: numba drops a branch only when its test is on a None.
        gi = steps - steps
        if g is not None:
            gi = g[k] / loss_scale
        if a is not None:
            gi = a[i] / steps
        return gi

    @decorator
    def sparse_square_at(k, i, g, a, loss_scale, steps):
        """The square, in float64, of ``sparse_gradient_at``: one term of a sparse
        gradient's squared norm."""
        x = float64(sparse_gradient_at(k, i, g, a, loss_scale, steps))
        return mul(x, x)

    @decorator
    def sparse_update_at(k, i, w, g, m, u, a, loss_scale, steps, clip_scale, clip_divisor,
                         clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon,
                         bias_correction):
        """A lazy update of element ``i`` from gradient element ``k``; mutates ``w[i]``,
        ``m[i]``, ``u[i]`` and resets ``a[i]`` when given.

        The order of ``update_at`` without the EMA (which covers the whole variable
        and runs as its own pass): gradient, clip, weight decay, Adamax.
        """
        gi = clip_gradient(sparse_gradient_at(k, i, g, a, loss_scale, steps), clip_scale,
                           clip_divisor, clip_value)
        if a is not None:
            a[i] = 0
        wi = widen(w[i])
        if has_wd:
            wi = wi - mul(wi * wd, lr)
        w[i], m[i], u[i] = adamax_update(wi, gi, m[i], u[i], lr, one_minus_beta_1, beta_2,
                                         epsilon, bias_correction)

    return SimpleNamespace(
        widen=widen, mul=mul, nan_max=nan_max, nan_min=nan_min, nan_clip=nan_clip,
        is_finite=is_finite,
        clipnorm_divisor=clipnorm_divisor, global_clip_scale=global_clip_scale,
        clip_gradient=clip_gradient, adamax_update=adamax_update, ema_update=ema_update,
        update_at=update_at, accumulate_at=accumulate_at, ema_at=ema_at,
        without_gradient_at=without_gradient_at, effective_gradient_at=effective_gradient_at,
        square_at=square_at, scatter_accumulate_at=scatter_accumulate_at,
        sparse_gradient_at=sparse_gradient_at, sparse_square_at=sparse_square_at,
        sparse_update_at=sparse_update_at)
