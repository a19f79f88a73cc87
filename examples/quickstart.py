"""Quick start: train a small MLP on a 3-class spiral with numba_adamax.Adamax.

The model (2 -> 64 ReLU -> 3 softmax) and its backward pass are hand-written
NumPy; every parameter is a contiguous float32 array in a dict that the
optimizer updates in place. It shows the Keras-like class API with a learning
rate schedule and decoupled weight decay that skips the biases.

    python examples/quickstart.py [--epochs 200]

Exits with status 1 if the training loss did not fall.
"""
import argparse

import numpy as np

import numba_adamax as na


def make_spiral(rng, n_per_class=100, n_classes=3):
    """The classic 2-D spiral: n_classes interleaved arms, with noise."""
    X, y = [], []
    for k in range(n_classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(4.0 * k, 4.0 * (k + 1), n_per_class) + 0.2 * rng.standard_normal(n_per_class)
        X.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        y.append(np.full(n_per_class, k))
    return np.concatenate(X).astype(np.float32), np.concatenate(y)


def forward(params, X):
    h = np.maximum(X @ params["W1"] + params["b1"], 0.0)
    logits = h @ params["W2"] + params["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return h, probs


def loss_and_grads(params, X, y):
    """Mean cross-entropy and its gradients (same keys as params)."""
    n = X.shape[0]
    h, probs = forward(params, X)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    dlogits = probs.copy()
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    dh = (dlogits @ params["W2"].T) * (h > 0)
    grads = {"W1": X.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}
    return loss, grads


def main(epochs=200, seed=0, batch_size=60, hidden=64):
    rng = np.random.default_rng(seed)
    X, y = make_spiral(rng)
    params = {
        "W1": (rng.standard_normal((2, hidden)) * np.sqrt(2.0 / 2)).astype(np.float32),
        "b1": np.zeros(hidden, dtype=np.float32),
        "W2": (rng.standard_normal((hidden, 3)) * np.sqrt(2.0 / hidden)).astype(np.float32),
        "b2": np.zeros(3, dtype=np.float32),
    }
    schedule = na.schedules.ExponentialDecay(
        initial_learning_rate=0.02, decay_steps=100, decay_rate=0.9)
    opt = na.Adamax(learning_rate=schedule, weight_decay=1e-4)
    opt.exclude_from_weight_decay(var_names=["b"])  # regex: matches b1, b2

    first_loss, _ = loss_and_grads(params, X, y)
    every = max(1, epochs // 10)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            _, grads = loss_and_grads(params, X[idx], y[idx])
            opt.apply(grads, params)  # first call builds the slots
        if epoch % every == 0 or epoch == epochs:
            loss, _ = loss_and_grads(params, X, y)
            acc = float((forward(params, X)[1].argmax(axis=1) == y).mean())
            print(f"epoch {epoch:4d}  loss {loss:.4f}  acc {acc:.3f}  "
                  f"lr {float(opt.learning_rate):.5f}  step {opt.iterations}")

    final_loss, _ = loss_and_grads(params, X, y)
    accuracy = float((forward(params, X)[1].argmax(axis=1) == y).mean())
    print(f"final accuracy {accuracy:.3f}  loss {first_loss:.4f} -> {final_loss:.4f}")
    return {"first_loss": first_loss, "final_loss": final_loss,
            "accuracy": accuracy, "ok": final_loss < first_loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = main(epochs=args.epochs, seed=args.seed)
    if not result["ok"]:
        print("FAILED: training loss did not decrease")
        raise SystemExit(1)
