"""Adamax on GPU arrays: CuPy arrays when CuPy is installed, else Numba device arrays.

A linear least-squares model ``y ~ x @ w + b`` is fitted with its data, variables
and gradients all on the GPU, through the class API
``numba_adamax.Adamax().apply(grads, params)``, which updates device arrays in
place. Without CuPy the gradients come from two small ``numba.cuda`` kernels.

Without a usable CUDA GPU (numba-cuda missing, or ``numba.cuda.is_available()``
False) the script says so and exits with status 0.

    python examples/gpu_cupy.py [--steps 300]

Exits with status 1 if the loss did not fall.
"""
import argparse
import importlib.util

import numpy as np

import numba_adamax as na
from progress import Progress

#: ``numba.cuda``, set by ``cuda_unavailable_reason`` (a module global, so that the
#: kernels below find it as CUDA kernels and the CUDA simulator expect).
cuda = None


def cuda_unavailable_reason():
    """Why the GPU cannot be used, or None when ``numba.cuda`` reports a usable GPU."""
    global cuda
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc})"
    if not cuda.is_available():
        return "no CUDA GPU is available (numba.cuda.is_available() is False)"
    return None


class CupyModel:
    """Data, variables and gradients as CuPy arrays; gradients with CuPy operations."""

    name = "cupy"

    def __init__(self, x, y):
        import cupy

        self.xp = cupy
        self.x, self.y = cupy.asarray(x), cupy.asarray(y)
        self.w = cupy.zeros(x.shape[1], dtype=np.float32)
        self.b = cupy.zeros(1, dtype=np.float32)

    def loss_and_grads(self):
        r = self.x @ self.w + self.b - self.y
        scale = np.float32(2.0 / len(r))
        grads = [self.x.T @ r * scale, (r.sum() * scale).reshape(1)]
        return float((r * r).mean()), [self.xp.ascontiguousarray(g) for g in grads]

    def weights(self):
        return self.w.get(), self.b.get()


class NumbaModel:
    """Data, variables and gradients as Numba device arrays; gradients from two kernels."""

    name = "numba.cuda"

    def __init__(self, x, y, threads=128):
        self.kernels = _gradient_kernels()
        self.threads = threads
        self.x, self.y = cuda.to_device(x), cuda.to_device(y)
        self.w = cuda.to_device(np.zeros(x.shape[1], dtype=np.float32))
        self.b = cuda.to_device(np.zeros(1, dtype=np.float32))
        self.r = cuda.device_array(len(y), dtype=np.float32)
        self.gw = cuda.device_array(x.shape[1], dtype=np.float32)
        self.gb = cuda.device_array(1, dtype=np.float32)

    def loss_and_grads(self):
        residual, gradient = self.kernels
        n, d = self.x.shape
        t = self.threads
        residual[(n + t - 1) // t, t](self.x, self.w, self.b, self.y, self.r)
        gradient[(d + t) // t, t](self.x, self.r, 2.0 / n, self.gw, self.gb)
        r = self.r.copy_to_host()
        return float(np.mean(r.astype(np.float64) ** 2)), [self.gw, self.gb]

    def weights(self):
        return self.w.copy_to_host(), self.b.copy_to_host()


def _gradient_kernels():
    """The two ``cuda.jit`` kernels of ``NumbaModel`` (compiled on first launch)."""

    @cuda.jit
    def residual(x, w, b, y, r):
        """r[i] = x[i] . w + b - y[i], one thread per sample."""
        i = cuda.grid(1)
        if i < x.shape[0]:
            acc = b[0] - y[i]
            for j in range(x.shape[1]):
                acc += x[i, j] * w[j]
            r[i] = acc

    @cuda.jit
    def gradient(x, r, scale, gw, gb):
        """gw[j] = scale * sum_i x[i, j] r[i] (thread j < d); gb[0] = scale * sum_i r[i]
        (thread d)."""
        j = cuda.grid(1)
        if j <= x.shape[1]:
            acc = 0.0
            for i in range(x.shape[0]):
                acc += (x[i, j] if j < x.shape[1] else 1.0) * r[i]
            if j < x.shape[1]:
                gw[j] = acc * scale
            else:
                gb[0] = acc * scale

    return residual, gradient


def make_model(x, y):
    """A ``CupyModel`` when CuPy is installed, else a ``NumbaModel``."""
    if importlib.util.find_spec("cupy") is None:
        return NumbaModel(x, y)
    return CupyModel(x, y)


def main(steps=300, n=4096, d=64, seed=0, learning_rate=0.05):
    """Fit the model on the GPU; return the losses, or ``{"skipped": reason}`` without one."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"Skipping the GPU example: {reason}. It needs an NVIDIA GPU and numba-cuda "
              "(pip install -e \".[cuda]\"); CuPy is optional.")
        return {"skipped": reason, "ok": True}

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    y = (x @ w_true + 0.5 + 0.01 * rng.standard_normal(n)).astype(np.float32)
    model = make_model(x, y)
    print(f"device arrays: {model.name}")

    opt = na.Adamax(learning_rate=learning_rate)
    first_loss = None
    progress = Progress(steps, "step", every=max(1, steps // 10))
    for step in range(1, steps + 1):
        loss, grads = model.loss_and_grads()
        first_loss = loss if first_loss is None else first_loss
        opt.apply(grads, [model.w, model.b])  # updates the device arrays in place
        progress.update(step, loss=loss)
    progress.close()
    final_loss, _ = model.loss_and_grads()
    w, b = model.weights()
    error = float(np.abs(w - w_true).max())
    print(f"loss {first_loss:.4f} -> {final_loss:.6f}; max |w - w_true| {error:.4f}, "
          f"b {float(b[0]):.4f} (true 0.5)")
    return {"backend": model.name, "first_loss": first_loss, "final_loss": final_loss,
            "weight_error": error, "ok": final_loss < 0.1 * first_loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not main(steps=args.steps, seed=args.seed)["ok"]:
        print("FAILED: the loss did not fall")
        raise SystemExit(1)
