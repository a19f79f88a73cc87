"""Timing benchmarks for sparse gradients (``IndexedSlices``) on an embedding table.

The table has 200000 rows of 64 float32 values. Each step gets a batch of 4096 row
indices drawn from a Zipf distribution (row ``r`` is drawn with probability
proportional to ``1 / (r + 1) ** zipf_a``), so many indices repeat, as the token
ids of a text batch do (``numba_adamax.benchmark.embedding_batch``). Benchmarks,
side by side:

* ``TimeEmbeddingSparse.time_sparse_step``: one lazy step with the batch as an
  ``IndexedSlices`` (deduplication, then the update of the touched rows);
* ``TimeEmbeddingSparse.time_deduplicate``: the deduplication alone (unique rows
  and their summed values), the floor a sparse step cannot go below
  (``numba_adamax.benchmark.contenders.deduplication``);
* ``TimeEmbeddingDense.time_dense_step``: one dense step over the whole table.

Each takes the ``device`` parameter of the other time benchmarks: on ``"cuda"`` the
table, the indices and the gradient values are ``numba.cuda`` device arrays, and the
CUDA half is skipped where there is no GPU. numba_adamax is imported inside ``setup``
(see bench_step.py), and the warm-up call there builds the slots and compiles the
kernels.
"""
from .common import DEVICES

ROWS, DIM, BATCH = 200_000, 64, 4096
ZIPF_EXPONENTS = [1.1, 1.5]


class TimeEmbeddingSparse:
    params = (ZIPF_EXPONENTS, DEVICES)
    param_names = ["zipf_a", "device"]

    def setup(self, zipf_a, device):
        import numba_adamax as na
        from numba_adamax.benchmark import embedding_batch, place, require, synchronizer
        from numba_adamax.benchmark.contenders import deduplication

        require(device)
        table, indices, values = embedding_batch(zipf_a, ROWS, DIM, BATCH)
        self.table, indices, values = place([table, indices, values], device)
        self.slices = na.IndexedSlices(values, indices, dense_shape=table.shape)
        self.opt = na.Adamax(learning_rate=0.001)
        self.sync = synchronizer(device)
        self.deduplicate = deduplication(self.slices, self.table)
        self.time_sparse_step(zipf_a, device)  # warm-up: build slots + JIT compile
        self.time_deduplicate(zipf_a, device)

    def time_sparse_step(self, zipf_a, device):
        self.opt.apply([self.slices], [self.table])
        self.sync()

    def time_deduplicate(self, zipf_a, device):
        self.deduplicate()
        self.sync()


class TimeEmbeddingDense:
    params = (DEVICES,)
    param_names = ["device"]

    def setup(self, device):
        import numba_adamax as na
        from numba_adamax.benchmark import place, random_arrays, require, synchronizer

        require(device)
        self.table, self.grad = place(random_arrays([(ROWS, DIM), (ROWS, DIM)], "float32"),
                                      device)
        self.opt = na.Adamax(learning_rate=0.001)
        self.sync = synchronizer(device)
        self.time_dense_step(device)  # warm-up: build slots + JIT compile

    def time_dense_step(self, device):
        self.opt.apply([self.grad], [self.table])
        self.sync()
