"""Train an embedding table with sparse gradients (numba_adamax.IndexedSlices).

Generated data with a planted structure: every item belongs to one of a few hidden
groups, items are drawn with Zipf frequencies (a few are very common, most are
rare), and the task is to tell whether two items are in the same group. The model
is one embedding per item and ``p(same) = sigmoid(e_i . e_j)``. A batch touches a
few hundred rows of the table, many of them several times, so each step passes
``IndexedSlices(values, indices)``: the optimizer sums repeated rows and updates
only the touched rows (lazy Adamax).

It prints the held-out pair accuracy as it improves (under a tqdm progress bar when
tqdm is installed), then the time of one optimizer step with the sparse gradient and
with the same gradient made dense.

    python examples/embeddings_sparse.py [--steps 400] [--items 100000]

Exits with status 1 if the accuracy did not improve.
"""
import argparse
import time

import numpy as np

import numba_adamax as na

try:
    from tqdm import tqdm
except ImportError:  # progress lines without tqdm
    tqdm = None


def make_data(rng, n_items, n_groups, zipf_a=1.3):
    """The hidden group of every item, and a sampler of labelled item pairs."""
    groups = rng.integers(0, n_groups, n_items)
    # popularity rank -> item, so that frequency tells nothing about the group
    by_rank = rng.permutation(n_items)
    members = [np.flatnonzero(groups == k) for k in range(n_groups)]

    def sample(size):
        left = by_rank[(rng.zipf(zipf_a, size) - 1) % n_items]
        same = rng.random(size) < 0.5
        right = by_rank[(rng.zipf(zipf_a, size) - 1) % n_items]
        for p in np.flatnonzero(same):  # a partner from the same group
            right[p] = rng.choice(members[groups[left[p]]])
        return left, right, (groups[left] == groups[right]).astype(np.float32)

    return groups, sample


def forward(table, left, right):
    return 1.0 / (1.0 + np.exp(-np.einsum("ij,ij->i", table[left], table[right])))


def sparse_gradient(table, left, right, label):
    """Gradient of the mean logistic loss as IndexedSlices over the rows of both items."""
    err = ((forward(table, left, right) - label) / len(label)).astype(np.float32)[:, None]
    values = np.concatenate([err * table[right], err * table[left]])
    indices = np.concatenate([left, right])
    return na.IndexedSlices(values, indices, dense_shape=table.shape)


def accuracy(table, pairs):
    left, right, label = pairs
    return float(((forward(table, left, right) > 0.5) == (label > 0.5)).mean())


def time_steps(table, grad, repeats):
    """Mean seconds of one ``Adamax.apply`` with ``grad``, on a copy of ``table``."""
    table = table.copy()
    opt = na.Adamax(learning_rate=0.01)
    opt.apply([grad], [table])  # build the slots and compile
    start = time.perf_counter()
    for _ in range(repeats):
        opt.apply([grad], [table])
    return (time.perf_counter() - start) / repeats


def main(steps=400, n_items=100_000, dim=32, n_groups=16, batch=1024, seed=0, timing_repeats=20,
         progress=True):
    rng = np.random.default_rng(seed)
    _, sample = make_data(rng, n_items, n_groups)
    table = (0.1 * rng.standard_normal((n_items, dim))).astype(np.float32)
    held_out = sample(4000)
    opt = na.Adamax(learning_rate=0.05)

    first = accuracy(table, held_out)
    print(f"held-out pair accuracy before training: {first:.3f}")
    every = max(1, steps // 8)
    bar = tqdm(total=steps, desc="training") if tqdm is not None and progress else None
    report = print if bar is None else bar.write
    for step in range(1, steps + 1):
        opt.apply([sparse_gradient(table, *sample(batch))], [table])
        if bar is not None:
            bar.update()
        if step % every == 0 or step == steps:
            report(f"step {step:5d}  held-out accuracy {accuracy(table, held_out):.3f}")
    if bar is not None:
        bar.close()
    final = accuracy(table, held_out)
    print(f"held-out pair accuracy after {steps} steps: {final:.3f}")

    grad = sparse_gradient(table, *sample(batch))
    dense = np.zeros_like(table)
    np.add.at(dense, grad.indices, grad.values)
    sparse_s = time_steps(table, grad, timing_repeats)
    dense_s = time_steps(table, dense, max(1, timing_repeats // 4))
    rows = np.unique(grad.indices).size
    print(f"one step on a {n_items} x {dim} table, {len(grad.indices)} indices "
          f"({rows} distinct rows): sparse {sparse_s * 1e6:.0f} us, dense {dense_s * 1e6:.0f} us "
          f"({dense_s / sparse_s:.1f}x)")
    return {"first_accuracy": first, "final_accuracy": final, "sparse_step_s": sparse_s,
            "dense_step_s": dense_s, "ok": final > first}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = main(steps=args.steps, n_items=args.items, seed=args.seed)
    if not result["ok"]:
        print("FAILED: the held-out accuracy did not improve")
        raise SystemExit(1)
