"""Timing benchmarks for sparse gradients (``IndexedSlices``) on an embedding table.

The table has 200000 rows of 64 float32 values. Each step gets a batch of 4096 row
indices drawn from a Zipf distribution (row ``r`` is drawn with probability
proportional to ``1 / (r + 1) ** zipf_a``), so many indices repeat, as the token
ids of a text batch do. Benchmarks, side by side:

* ``TimeEmbeddingSparse.time_sparse_step``: one lazy step with the batch as an
  ``IndexedSlices`` (deduplication, then the update of the touched rows);
* ``TimeEmbeddingSparse.time_deduplicate``: the deduplication alone (unique rows
  and their summed values), the floor a sparse step cannot go below;
* ``TimeEmbeddingDense.time_dense_step``: one dense step over the whole table.

numba_adamax is imported inside ``setup`` (see bench_step.py), and the warm-up call
there builds the slots and compiles the kernels.
"""
import numpy as np

ROWS, DIM, BATCH = 200_000, 64, 4096
ZIPF_EXPONENTS = [1.1, 1.5]


def zipf_indices(rng, zipf_a, n_rows, size):
    """``size`` row indices in ``[0, n_rows)`` with Zipf(``zipf_a``) frequencies."""
    return ((rng.zipf(zipf_a, size) - 1) % n_rows).astype(np.int64)


class TimeEmbeddingSparse:
    params = (ZIPF_EXPONENTS,)
    param_names = ["zipf_a"]

    def setup(self, zipf_a):
        import numba_adamax as na
        from numba_adamax import _cpu, _sparse

        rng = np.random.default_rng(0)
        self.table = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        indices = zipf_indices(rng, zipf_a, ROWS, BATCH)
        values = rng.standard_normal((BATCH, DIM)).astype(np.float32)
        self.slices = na.IndexedSlices(values, indices, dense_shape=self.table.shape)
        self.opt = na.Adamax(learning_rate=0.001)
        self.opt.apply([self.slices], [self.table])  # warm-up: build slots + JIT compile
        self.deduplicate = _sparse.deduplicate
        self.threshold = _cpu.PARALLEL_THRESHOLD
        self.deduplicate(self.slices, self.threshold)

    def time_sparse_step(self, zipf_a):
        self.opt.apply([self.slices], [self.table])

    def time_deduplicate(self, zipf_a):
        self.deduplicate(self.slices, self.threshold)


class TimeEmbeddingDense:
    def setup(self):
        import numba_adamax as na

        rng = np.random.default_rng(0)
        self.table = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        self.grad = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        self.opt = na.Adamax(learning_rate=0.001)
        self.opt.apply([self.grad], [self.table])  # warm-up: build slots + JIT compile

    def time_dense_step(self):
        self.opt.apply([self.grad], [self.table])
