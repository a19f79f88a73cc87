"""Custom training loop with the functional API: init() / step() on a NumPy MLP.

A 2 -> hidden (tanh) -> 1 regression network, written in NumPy (float64), fits
y = sin(2 x0) cos(x1) from noisy samples. The loop uses:

- ``numba_adamax.init`` / ``numba_adamax.step`` (the state is an ``AdamaxState``);
- a learning-rate schedule: ``CosineDecay`` with a linear warmup;
- gradient accumulation: each update averages 4 micro-batches;
- an EMA of the weights, evaluated next to the raw weights.

    python examples/custom_loop_functional.py [--steps 1200]

Exits with status 1 if the held-out loss did not fall.
"""
import argparse

import numpy as np

import numba_adamax as na
from progress import Progress

NAMES = ["W1", "b1", "W2", "b2"]


def make_data(rng, n):
    x = rng.uniform(-1.5, 1.5, size=(n, 2))
    y = np.sin(2.0 * x[:, :1]) * np.cos(x[:, 1:]) + 0.05 * rng.standard_normal((n, 1))
    return x, y


def init_params(rng, hidden):
    return [rng.standard_normal((2, hidden)) * np.sqrt(1.0 / 2), np.zeros(hidden),
            rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden), np.zeros(1)]


def loss_and_grads(params, x, y):
    """Mean squared error and its gradients, in the order of ``params``."""
    W1, b1, W2, b2 = params
    h = np.tanh(x @ W1 + b1)
    err = h @ W2 + b2 - y
    loss = float(np.mean(err ** 2))
    d_out = 2.0 * err / len(x)
    d_h = (d_out @ W2.T) * (1.0 - h ** 2)
    return loss, [x.T @ d_h, d_h.sum(axis=0), h.T @ d_out, d_out.sum(axis=0)]


def main(steps=1200, seed=0, micro_batch=32, accumulation=4, hidden=32):
    """Train for ``steps`` micro-steps (``steps // accumulation`` updates); return the losses."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(rng, 2048)
    x_test, y_test = make_data(rng, 512)
    params = init_params(rng, hidden)

    updates = steps // accumulation
    schedule = na.schedules.CosineDecay(
        initial_learning_rate=0.002, decay_steps=steps, alpha=0.05,
        warmup_target=0.02, warmup_steps=steps // 10)  # called with the micro-step count
    state = na.init(params, names=NAMES, learning_rate=schedule, use_ema=True,
                    ema_momentum=0.9, gradient_accumulation_steps=accumulation)

    first_loss = loss_and_grads(params, x_test, y_test)[0]
    progress = Progress(steps, "micro-step", every=max(1, steps // 8))
    for i in range(1, steps + 1):
        idx = rng.integers(0, len(x_train), micro_batch)
        loss, grads = loss_and_grads(params, x_train[idx], y_train[idx])
        lr = state.hyperparameters.learning_rate_at(state.raw_steps)
        state = na.step(params, grads, state)  # params and state change in place
        progress.update(i, loss=loss, lr=lr, updates=state.iterations)
    progress.close()

    final_loss = loss_and_grads(params, x_test, y_test)[0]
    ema_loss = loss_and_grads(list(state.ema), x_test, y_test)[0]
    print(f"{state.raw_steps} micro-steps, {state.iterations} updates "
          f"({accumulation} micro-batches of {micro_batch} each)")
    print(f"held-out loss {first_loss:.4f} -> {final_loss:.4f} (weights), "
          f"{ema_loss:.4f} (EMA of the weights)")
    return {"first_loss": first_loss, "final_loss": final_loss, "ema_loss": ema_loss,
            "updates": state.iterations, "raw_steps": state.raw_steps,
            "expected_updates": updates, "ok": final_loss < 0.5 * first_loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not main(steps=args.steps, seed=args.seed)["ok"]:
        print("FAILED: the held-out loss did not fall")
        raise SystemExit(1)
