"""Where a benchmark runs: ``"cpu"`` (NumPy arrays) or ``"cuda"`` (``numba.cuda`` device
arrays). ``numba.cuda`` is imported only when a CUDA device is asked for."""


def gpu_unavailable_reason():
    """Why no CUDA GPU can be timed here, or None when one can: ``numba.cuda`` missing,
    Numba's CUDA simulator on (it runs, but its timings mean nothing), or no GPU."""
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc})"
    from numba import config
    if config.ENABLE_CUDASIM:
        return "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); timings need a real GPU"
    if not cuda.is_available():
        return "no CUDA GPU is available (numba.cuda.is_available() is False)"
    return None


def require(device):
    """Raise ``NotImplementedError`` (asv's skip) saying why, when ``device`` cannot be
    timed here."""
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}")
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise NotImplementedError(reason)


def place(arrays, device):
    """``arrays`` (NumPy) as the arrays a step on ``device`` takes: themselves on the
    CPU, ``numba.cuda`` device copies on CUDA."""
    if device == "cpu":
        return list(arrays)
    from numba import cuda
    return [cuda.to_device(a) for a in arrays]


def synchronizer(device):
    """A callable that waits for the work queued on ``device`` (a no-op on the CPU)."""
    if device == "cpu":
        return lambda: None
    from numba import cuda
    return cuda.synchronize
