"""The implementations the benchmarks time: each is built as a zero-argument callable
that makes one optimizer step on its own copy of the variables.

A builder takes the initial variables ``ws`` and the gradients ``gs`` (lists of
arrays of one dtype) and returns the step callable; it raises ``Unavailable`` when
its library is not installed. Every contender copies ``ws`` (the step mutates its
copy) and only reads ``gs``. The learning rate is ``LR`` everywhere. ``deduplication``
takes a sparse gradient instead. A step callable may have a ``finish()`` method, which
waits for the work it left running.
"""
import numpy as np

LR = 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


class Unavailable(Exception):
    """A contender that cannot run here; the message says why."""


class NumpyAdamax:
    """Keras 3 Adamax on one array in NumPy ufuncs with preallocated buffers: every
    operation writes through ``out=``, so a step allocates nothing."""

    def __init__(self, w, learning_rate, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON):
        dt = w.dtype.type
        self.lr, self.b1, self.b2, self.eps = dt(learning_rate), beta_1, dt(beta_2), dt(epsilon)
        self.one_minus_b1 = dt(1.0 - beta_1)
        self.m, self.u = np.zeros_like(w), np.zeros_like(w)
        self.tmp, self.tmp2 = np.empty_like(w), np.empty_like(w)
        self.t = 0

    def step(self, w, g):
        """One update of ``w`` (in place) with gradient ``g``; mutates w and the slots."""
        self.t += 1
        dt = w.dtype.type
        m, u, tmp, tmp2 = self.m, self.u, self.tmp, self.tmp2
        np.subtract(g, m, out=tmp)
        np.multiply(tmp, self.one_minus_b1, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(u, self.b2, out=u)
        np.abs(g, out=tmp)
        np.maximum(u, tmp, out=u)
        np.multiply(m, self.lr, out=tmp)
        np.add(u, self.eps, out=tmp2)
        np.multiply(tmp2, dt(1) - dt(self.b1) ** dt(self.t), out=tmp2)
        np.divide(tmp, tmp2, out=tmp)
        np.subtract(w, tmp, out=w)


def numba_adamax_list(ws, gs, options=None, calls=1):
    """The class API on a list of arrays; a step is ``calls`` calls of ``apply``."""
    import numba_adamax as na
    w = [x.copy() for x in ws]
    opt = na.Adamax(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                    **(options or {}))
    if calls == 1:
        return lambda: opt.apply(gs, w)

    def step():
        for _ in range(calls):
            opt.apply(gs, w)
    return step


def numba_adamax_bound(ws, gs):
    """The class API's bound step (``Adamax.bind``) over the arrays of ``gs``."""
    import numba_adamax as na
    w = [x.copy() for x in ws]
    opt = na.Adamax(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    return opt.bind(gs, w)


def numba_adamax_flat(ws, gs):
    """The class API on ``FlatBuffer`` parameters and gradients."""
    import numba_adamax as na
    params, grads = na.FlatBuffer.from_arrays(ws), na.FlatBuffer.from_arrays(gs)
    opt = na.Adamax(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    return lambda: opt.apply(grads, params)


def _one_buffer(arrays):
    return arrays[0].ravel() if len(arrays) == 1 else np.concatenate([a.ravel() for a in arrays])


def roofline(ws, gs, variant="plain"):
    """The streaming kernels of ``roofline`` over one buffer of all the elements, making
    the passes ``variant`` makes (its float32 bytes per element are in ``VARIANTS``)."""
    from . import roofline as _roofline
    w, g = _one_buffer(ws).copy(), _one_buffer(gs)
    m, u = np.zeros_like(w), np.zeros_like(w)
    parallel = w.size >= _roofline.config.PARALLEL_THRESHOLD
    lr = LR / (1 - BETA_1)
    omb1 = 1 - BETA_1
    if variant in ("plain", "weight_decay"):
        return lambda: _roofline.update(parallel, w, g, m, u, 1.0, omb1, BETA_2, lr, EPSILON)
    if variant in ("clipnorm", "global_clipnorm"):
        def step():
            norm = np.sqrt(_roofline.sum_of_squares(parallel, g))
            _roofline.update(parallel, w, g, m, u, 1.0 / max(norm, 1.0), omb1, BETA_2, lr,
                             EPSILON)
        return step
    if variant == "ema":
        e = np.zeros_like(w)
        return lambda: _roofline.update_ema(parallel, w, g, m, u, e, omb1, BETA_2, lr,
                                            EPSILON, 0.99)
    if variant == "accumulation":
        a = np.zeros_like(w)

        def step():
            _roofline.accumulate(parallel, g, a)
            _roofline.update_mean(parallel, w, g, m, u, a, 2.0, omb1, BETA_2, lr, EPSILON)
        return step
    raise ValueError(f"unknown variant {variant!r}")


def deduplication(slices, variable):
    """The deduplication alone of the sparse gradient ``slices`` (an ``IndexedSlices``)
    of ``variable`` (a NumPy or ``numba.cuda`` array): what a sparse step does first,
    and the floor it cannot go below. A step runs the variable's driver (the state of
    ``numba_adamax.init``, on the default stream) and returns its ``Rows``; mutates
    nothing."""
    import numba_adamax as na

    state = na.init([variable])

    def step():
        return state.backend.deduplicate(state, 0, slices)
    if state.device is not None:
        from numba import cuda
        step.finish = cuda.synchronize
    return step


#: For each variant: numba_adamax options, calls per timed step, and float32 bytes per
#: element that a timed step must move (the roofline's traffic).
VARIANTS = {
    "plain": ({}, 1, 28),
    "clipnorm": ({"clipnorm": 1.0}, 1, 32),
    "global_clipnorm": ({"global_clipnorm": 1.0}, 1, 32),
    "ema": ({"use_ema": True}, 1, 36),
    "weight_decay": ({"weight_decay": 1e-4}, 1, 28),
    "accumulation": ({"gradient_accumulation_steps": 2}, 2, 48),
}


def numpy_adamax(ws, gs):
    """``NumpyAdamax`` on each array in turn."""
    w = [x.copy() for x in ws]
    opts = [NumpyAdamax(x, LR) for x in w]

    def step():
        for opt, x, g in zip(opts, w, gs):
            opt.step(x, g)
    return step


def torch_adamax(ws, gs, foreach, threads):
    """``torch.optim.Adamax`` (``foreach`` multi-tensor or single-tensor loop) on
    tensors that copy ``ws``; the gradients are zero-copy views of ``gs``."""
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed") from None
    torch.set_num_threads(threads)
    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in ws]
    for p, g in zip(params, gs):
        p.grad = torch.from_numpy(g)
    opt = torch.optim.Adamax(params, lr=LR, betas=(BETA_1, BETA_2), eps=EPSILON,
                             foreach=foreach)
    return opt.step


class _OptaxStep:
    """One step of jitted ``optax.adamax``; ``finish()`` waits for every output."""

    def __init__(self, run, params, state, grads):
        self.run, self.params, self.state, self.grads = run, params, state, grads

    def __call__(self):
        self.params, self.state = self.run(self.params, self.state, self.grads)
        self.params[-1].block_until_ready()

    def finish(self):
        import jax
        jax.block_until_ready((self.params, self.state))


def optax_adamax(ws, gs):
    """``optax.adamax`` with its update and ``apply_updates`` under one ``jax.jit``,
    parameters and optimizer state donated. A step waits for its result
    (``block_until_ready`` on one output: the outputs of one XLA execution become ready
    together, and the next step consumes them); ``finish`` waits for all of them."""
    try:
        import jax
        import optax
    except ImportError:
        raise Unavailable("jax or optax is not installed") from None
    if ws[0].dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    params = [jnp.array(x, copy=True) for x in ws]  # XLA's own buffers, safe to donate
    grads = [jnp.array(g, copy=True) for g in gs]
    tx = optax.adamax(LR, b1=BETA_1, b2=BETA_2, eps=EPSILON)

    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return _OptaxStep(jax.jit(update, donate_argnums=(0, 1)), params, tx.init(params), grads)
