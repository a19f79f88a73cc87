"""Timing of one step over many small tensors: 300 arrays of mixed shapes (a weight
matrix, a bias and a scale per layer), about 5e6 float32 elements in all.

``path="list"`` passes lists of separate arrays (the gradients' addresses are
gathered on each call); ``path="flat"`` passes ``FlatBuffer`` parameters and
gradients (checked in O(1)). ``FlatBuffer`` holds host arrays, so its CUDA half is
skipped, as is every CUDA half where there is no GPU.
"""
from .common import DEVICES

COUNT, TOTAL = 300, 5_000_000


class TimeManyTensors:
    params = (["list", "flat"], DEVICES)
    param_names = ["path", "device"]

    def setup(self, path, device):
        import numba_adamax as na
        from numba_adamax.benchmark import mixed_shapes, place, random_arrays, require, synchronizer

        require(device)
        if path == "flat" and device != "cpu":
            raise NotImplementedError("FlatBuffer holds host (NumPy) arrays")
        shapes = mixed_shapes(COUNT, TOTAL)
        ws = random_arrays(shapes, "float32", seed=0)
        gs = random_arrays(shapes, "float32", seed=1)
        if path == "flat":
            self.params_, self.grads = na.FlatBuffer.from_arrays(ws), na.FlatBuffer.from_arrays(gs)
        else:
            self.params_, self.grads = place(ws, device), place(gs, device)
        self.opt = na.Adamax(learning_rate=0.001)
        self.sync = synchronizer(device)
        self.time_step(path, device)  # warm-up: build slots + JIT compile

    def time_step(self, path, device):
        self.opt.apply(self.grads, self.params_)
        self.sync()
