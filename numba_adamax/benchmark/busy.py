"""``python -m numba_adamax.benchmark.busy``: step latency beside CPU-bound processes.

On a shared machine a step that enters a thread-pool region can wait for a worker
the operating system has descheduled. This command times single steps, one at a
time, first on its own and then beside ``--workers`` processes that spin on the
CPUs, and reports the median and the 90th percentile of each case:

* a dense step of 40 000 float32 elements (just above the parallel threshold);
* a sparse step on an embedding table (``--rows`` x ``--dim``, ``--batch`` Zipf row
  indices) and a dense step on the same table, with their ratio.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import time

import numpy as np

from .problems import embedding_batch


def _spin(stop):
    while not stop.is_set():
        pass


def _latencies(step, count):
    """``count`` timings (seconds) of single calls of ``step``, with a short pause
    between them (as between the steps of a training loop)."""
    step()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        time.sleep(0.0005)
    return times


def _cases(args):
    import numba_adamax as na
    w, g = np.zeros(40_000, np.float32), np.ones(40_000, np.float32)
    dense_opt = na.Adamax()
    table, indices, values = embedding_batch(1.1, args.rows, args.dim, args.batch)
    sparse_table, dense_table = table.copy(), table.copy()
    sparse_opt, table_opt = na.Adamax(), na.Adamax()
    grad = na.IndexedSlices(values, indices)
    dense_grad = np.zeros_like(table)
    np.add.at(dense_grad, indices, values)
    return {
        "dense 40000": lambda: dense_opt.apply([g], [w]),
        "sparse embedding": lambda: sparse_opt.apply([grad], [sparse_table]),
        "dense embedding": lambda: table_opt.apply([dense_grad], [dense_table]),
    }


def _summary(times):
    ordered = sorted(times)
    return {"median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def run(args):
    """Both passes (quiet, busy); returns ``{pass: {case: {median, p90}}}``."""
    cases = _cases(args)
    report = {"quiet": {name: _summary(_latencies(step, args.steps))
                        for name, step in cases.items()}}
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
               for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.2)
        report["busy"] = {name: _summary(_latencies(step, args.steps))
                          for name, step in cases.items()}
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    return report


def format_report(report, args):
    """The report as Markdown: one row per case and pass, and the sparse/dense ratios."""
    lines = [f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
             f"{args.workers} spinning process(es) in the busy pass, {args.steps} steps.", "",
             "| case | pass | median | p90 |", "|---|---|---:|---:|"]
    for name in report["quiet"]:
        for phase in ("quiet", "busy"):
            r = report[phase][name]
            lines.append(f"| {name} | {phase} | {r['median'] * 1e6:.0f} µs | "
                         f"{r['p90'] * 1e6:.0f} µs |")
    for phase in ("quiet", "busy"):
        ratio = (report[phase]["dense embedding"]["median"]
                 / report[phase]["sparse embedding"]["median"])
        lines.append(f"\nSparse step {ratio:.1f}x faster than the dense one ({phase}).")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark.busy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    report = run(args)
    print(format_report(report, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
