"""A simulated CUDA build of torch, for Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``),
whose device memory is host memory.

``SimulatedCudaTensor`` is a CPU tensor that reports ``cuda:0`` and exposes
``__cuda_array_interface__`` as torch's CUDA tensors do. ``install`` puts stand-ins for what
the library calls of a CUDA build of torch in place, through a ``setattr``-like function
(``monkeypatch.setattr`` in tests, the builtin in a worker process)."""
import contextlib
import types

import torch


class SimulatedCudaTensor(torch.Tensor):
    """A CUDA tensor as the optimizer sees it, under Numba's CUDA simulator: a CPU tensor
    whose ``device`` is ``cuda:0`` and whose ``__cuda_array_interface__`` describes its
    memory as torch's does (version 2, refused while the tensor requires grad). Results of
    torch operations keep the type."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @property
    def __cuda_array_interface__(self):
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")
        plain = self.as_subclass(torch.Tensor)
        return {"shape": tuple(plain.shape), "typestr": plain.numpy().dtype.str,
                "data": (plain.data_ptr() if plain.numel() else 0, False),
                "strides": None if plain.is_contiguous() else
                tuple(n * plain.element_size() for n in plain.stride()), "version": 2}


def install(set_attribute):
    """Stand-ins for ``torch.cuda.device`` (one simulated device: nothing to switch),
    ``torch.cuda.current_stream`` (its handle is the returned namespace's ``handle``, 0
    unless set), ``torch.cuda.is_available`` (True), ``torch.as_tensor`` of a simulator
    device array (a ``SimulatedCudaTensor`` over its memory) and ``torch.zeros`` /
    ``torch.empty`` on ``cuda:0`` (a new ``SimulatedCudaTensor``);
    ``numba.cuda.external_stream`` makes a simulator stream and records it in the
    namespace's ``streams``. Returns the namespace."""
    from numba import cuda
    plain_as_tensor = torch.as_tensor
    fake = types.SimpleNamespace(handle=0, streams=[])

    def on_the_device(factory):
        def make(*args, device=None, **kwargs):
            if device is not None and torch.device(device) == torch.device("cuda", 0):
                return factory(*args, **kwargs).as_subclass(SimulatedCudaTensor)
            return factory(*args, device=device, **kwargs)
        return make

    def as_tensor(data, *args, **kwargs):
        if type(data).__name__ == "FakeCUDAArray":
            assert torch.device(kwargs.get("device")) == torch.device("cuda", 0)
            return torch.from_numpy(data._ary).as_subclass(SimulatedCudaTensor)
        return plain_as_tensor(data, *args, **kwargs)

    def external_stream(handle):
        fake.streams.append((handle, cuda.stream()))
        return fake.streams[-1][1]

    set_attribute(torch, "as_tensor", as_tensor)
    for name in ("zeros", "empty"):
        set_attribute(torch, name, on_the_device(getattr(torch, name)))
    set_attribute(torch.cuda, "device", lambda device: contextlib.nullcontext())
    set_attribute(torch.cuda, "is_available", lambda: True)
    set_attribute(torch.cuda, "current_stream",
                  lambda device=None: types.SimpleNamespace(cuda_stream=fake.handle))
    set_attribute(cuda, "external_stream", external_stream)
    return fake
