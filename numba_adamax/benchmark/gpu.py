"""One Adamax step on a GPU: effective bandwidth against the device's copy bandwidth,
and against torch.optim.Adamax(foreach=True) / torch.optim.Adam(fused=True).

    python -m numba_adamax.benchmark.gpu [--repeat 20] [--json PATH]

Sizes: one float32 variable of 1e6, 1e7 and 1e8 elements, and 300 tensors of mixed
sizes. A plain update moves 28 bytes per element (read w, g, m, u; write w, m, u).
The targets (``targets``): at least ``COPY_FRACTION_TARGET`` of the copy bandwidth at
1e8 elements, and faster than both PyTorch optimizers at every size. Without a usable
CUDA GPU (or numba-cuda) the command says so and exits with status 0.
"""
import argparse
import json
import time

import numpy as np

import numba_adamax as na
from .devices import gpu_unavailable_reason

BYTES_PER_ELEMENT = 28
#: The share of the device-to-device copy bandwidth a step should reach at 1e8.
COPY_FRACTION_TARGET = 0.85


def _timed(run, repeat, synchronize):
    run()  # compile / warm up
    synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    synchronize()
    return (time.perf_counter() - start) / repeat


def cases():
    """``(label, sizes)`` of the benchmarked problems."""
    rng = np.random.default_rng(0)
    mixed = [int(s) for s in rng.integers(1, 200_000, 300)]
    return [("1e6", [10**6]), ("1e7", [10**7]), ("1e8", [10**8]), ("300 mixed", mixed)]


def main(repeat=20):
    """Print the table; return its rows, or ``{"skipped": reason}`` without a GPU."""
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"Skipping the GPU benchmark: {reason}.")
        return {"skipped": reason}
    from numba import cuda
    try:
        import torch
        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    rows = []
    for label, sizes in cases():
        n = sum(sizes)
        src = cuda.to_device(np.ones(n, np.float32))
        dst = cuda.device_array_like(src)
        copy_s = _timed(lambda: dst.copy_to_device(src), repeat, cuda.synchronize)
        copy_bw = 2 * 4 * n / copy_s / 1e9
        params = [cuda.to_device(np.ones(s, np.float32)) for s in sizes]
        grads = [cuda.to_device(np.full(s, 1e-3, np.float32)) for s in sizes]
        opt = na.Adamax(1e-3)
        ours = _timed(lambda: opt.apply(grads, params), repeat, cuda.synchronize)
        row = {"case": label, "elements": n, "numba_adamax_ms": ours * 1e3,
               "GB/s": BYTES_PER_ELEMENT * n / ours / 1e9, "copy_GB/s": copy_bw}
        if has_torch:
            for name, make in (("torch_adamax_ms",
                                lambda p: torch.optim.Adamax(p, lr=1e-3, foreach=True)),
                               ("torch_adam_fused_ms",
                                lambda p: torch.optim.Adam(p, lr=1e-3, fused=True))):
                tensors = [torch.ones(s, device="cuda", requires_grad=True) for s in sizes]
                for t in tensors:
                    t.grad = torch.full_like(t, 1e-3)
                torch_opt = make(tensors)
                row[name] = _timed(torch_opt.step, repeat, torch.cuda.synchronize) * 1e3
        rows.append(row)
    keys = list(rows[0])
    print("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]:>20.4g}" if isinstance(row[k], float) else f"{row[k]:>20}"
                        for k in keys))
    checks = targets(rows)
    for check in checks:
        print(f"{'met' if check['met'] else 'MISSED':>6}  {check['target']}: {check['value']}")
    return {"rows": rows, "targets": checks}


def targets(rows):
    """The benchmark's targets checked on ``rows`` (``main``'s): one dict per target
    and case with ``target``, ``case``, ``value`` (text) and ``met``; a PyTorch
    comparison is absent when PyTorch with CUDA was not there."""
    checks = []
    for row in rows:
        if row["case"] == "1e8":
            fraction = row["GB/s"] / row["copy_GB/s"]
            checks.append({"target": f">= {COPY_FRACTION_TARGET:.0%} of the copy bandwidth",
                           "case": row["case"], "value": f"{fraction:.1%}",
                           "met": fraction >= COPY_FRACTION_TARGET})
        for key, name in (("torch_adamax_ms", "torch.optim.Adamax(foreach=True)"),
                          ("torch_adam_fused_ms", "torch.optim.Adam(fused=True)")):
            if key in row:
                checks.append({"target": f"faster than {name}", "case": row["case"],
                               "value": f"{row['numba_adamax_ms']:.4g} ms vs {row[key]:.4g} ms",
                               "met": row["numba_adamax_ms"] < row[key]})
    return checks


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark.gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = parser.parse_args()
    result = main(repeat=args.repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
