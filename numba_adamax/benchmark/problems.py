"""The data the benchmarks step on: seeded random arrays, the many-tensors shapes and
an embedding table with a batch of sparse gradients. Every builder is deterministic
for a given seed and returns NumPy arrays."""
import numpy as np


def random_arrays(shapes, dtype, seed=0):
    """Seeded standard-normal arrays of ``shapes``, drawn in ``dtype`` (no float64
    temporaries)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.dtype(dtype)) for shape in shapes]


def problem(shapes, dtype, seed=0):
    """Variables and gradients of ``shapes``: ``(ws, gs)``, two lists of seeded
    standard-normal arrays (all of ``ws`` drawn first, then ``gs``)."""
    arrays = random_arrays(list(shapes) * 2, dtype, seed)
    return arrays[:len(arrays) // 2], arrays[len(arrays) // 2:]


def mixed_shapes(count=300, total=5_000_000, seed=0):
    """``count`` shapes of about ``total`` elements in all, like the layers of a model:
    in each group of three, a weight matrix, a bias and a scale vector of its width."""
    rng = np.random.default_rng(seed)
    dims = rng.integers(64, 1024, size=(count, 2)).astype(float)
    is_matrix = np.arange(count) % 3 == 0
    vector_total = dims[~is_matrix, 1].sum()
    scale = np.sqrt(max(total - vector_total, 0) / (dims[is_matrix, 0] * dims[is_matrix, 1]).sum())
    shapes = []
    for k in range(count):
        if is_matrix[k]:
            shapes.append((max(1, round(dims[k, 0] * scale)), max(1, round(dims[k, 1] * scale))))
        else:
            shapes.append((int(dims[k, 1]),))
    return shapes


def zipf_indices(rng, zipf_a, n_rows, size):
    """``size`` int64 row indices in ``[0, n_rows)`` from the generator ``rng``, row ``r``
    drawn with probability proportional to ``1 / (r + 1) ** zipf_a`` (folded into range),
    so that indices repeat as the token ids of a text batch do."""
    return ((rng.zipf(zipf_a, size) - 1) % n_rows).astype(np.int64)


def embedding_batch(zipf_a, rows, dim, batch, dtype="float32", seed=0):
    """An embedding table and one sparse gradient for it: returns ``(table, indices,
    values)``, a ``(rows, dim)`` table, ``batch`` Zipf(``zipf_a``) row indices and their
    ``(batch, dim)`` gradient rows (wrap them in ``numba_adamax.IndexedSlices``)."""
    rng = np.random.default_rng(seed)
    # Drawn in float64 and cast, so that the indices match those of recorded runs.
    table = rng.standard_normal((rows, dim)).astype(dtype)
    indices = zipf_indices(rng, zipf_a, rows, batch)
    values = rng.standard_normal((batch, dim)).astype(dtype)
    return table, indices, values
