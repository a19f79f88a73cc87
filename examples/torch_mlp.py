"""A PyTorch MLP trained with numba_adamax's optimizer next to torch.optim.Adamax.

Two copies of the same network (3 -> hidden -> hidden -> 1, tanh) fit a smooth
function of generated data, one with ``numba_adamax.integrations.torch.Adamax``
and one with ``torch.optim.Adamax``, on the same mini-batches with the same
learning rate and epsilon. The loss curves are printed side by side. They are
close but not equal: numba_adamax follows Keras (epsilon added outside the
maximum), torch adds epsilon to |g| inside it.

    python examples/torch_mlp.py [--steps 400] [--plot curves.png]

``--plot`` writes a PNG of both curves when matplotlib is installed. Exits with
status 1 if either optimizer failed to reduce the loss.
"""
import argparse
import copy
import statistics
import time

import torch

from numba_adamax.integrations.torch import Adamax
from progress import Progress


def make_data(generator, n):
    x = torch.rand(n, 3, generator=generator) * 4 - 2
    y = torch.sin(x[:, :1] * x[:, 1:2]) + 0.5 * torch.cos(2 * x[:, 2:]) \
        + 0.05 * torch.randn(n, 1, generator=generator)
    return x, y


def make_model(hidden):
    return torch.nn.Sequential(
        torch.nn.Linear(3, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1))


def save_plot(path, curves, every):
    """Write both loss curves to ``path`` (PNG); returns False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed; no plot written")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, losses in curves.items():
        ax.plot([every * i for i in range(len(losses))], losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}")
    return True


def main(steps=400, seed=0, hidden=64, batch_size=64, lr=0.005, eps=1e-7, every=None,
         plot=None):
    """Train both copies for ``steps`` mini-batches; return their held-out loss curves
    (one point every ``every`` steps) and the median time of one ``step()`` call."""
    every = every or max(1, steps // 10)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = make_data(generator, 4096)
    x_test, y_test = make_data(generator, 1024)
    torch.manual_seed(seed)
    models = {"numba_adamax": make_model(hidden)}
    models["torch.optim.Adamax"] = copy.deepcopy(models["numba_adamax"])
    optimizers = {
        "numba_adamax": Adamax(models["numba_adamax"].parameters(), lr=lr, eps=eps),
        "torch.optim.Adamax": torch.optim.Adamax(models["torch.optim.Adamax"].parameters(),
                                                 lr=lr, eps=eps),
    }

    def held_out(model):
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x_test), y_test).item()

    curves = {name: [held_out(model)] for name, model in models.items()}
    seconds = {name: [] for name in models}
    progress = Progress(steps, "step", every=every)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=generator)
        for name, model in models.items():
            opt = optimizers[name]
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx]).backward()
            start = time.perf_counter()
            opt.step()
            seconds[name].append(time.perf_counter() - start)
        if step % every == 0:
            for name, model in models.items():
                curves[name].append(held_out(model))
        progress.update(step, ours=curves["numba_adamax"][-1],
                        torch=curves["torch.optim.Adamax"][-1])
    progress.close()

    print(f"{'step':>6}  {'numba_adamax':>12}  {'torch.optim.Adamax':>18}")
    for i, (a, b) in enumerate(zip(curves["numba_adamax"], curves["torch.optim.Adamax"])):
        print(f"{i * every:6d}  {a:12.5f}  {b:18.5f}")
    ours, theirs = curves["numba_adamax"], curves["torch.optim.Adamax"]
    gap = max(abs(x - y) / y for x, y in zip(ours, theirs))
    print(f"final held-out loss: numba_adamax {ours[-1]:.5f}, torch.optim.Adamax "
          f"{theirs[-1]:.5f} (from {ours[0]:.5f}); largest relative gap {gap:.2e}")
    # The first call loads (or compiles) the kernels; it is left out of the timing.
    step_us = {name: 1e6 * statistics.median(s[1:] or s) for name, s in seconds.items()}
    print("median optimizer.step(): " + ", ".join(f"{name} {us:.1f} us"
                                                  for name, us in step_us.items()))
    if plot:
        save_plot(plot, curves, every)
    ok = all(c[-1] < 0.7 * c[0] for c in curves.values())
    return {"curves": curves, "every": every, "gap": gap, "step_us": step_us, "ok": ok}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="PNG path for the loss curves")
    args = parser.parse_args()
    if not main(steps=args.steps, seed=args.seed, plot=args.plot)["ok"]:
        print("FAILED: a loss did not fall")
        raise SystemExit(1)
