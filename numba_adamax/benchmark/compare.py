"""``python -m numba_adamax.benchmark.compare TREE [TREE ...]``: start-up, fixed cost and
busy-machine latency of several source trees of numba_adamax, side by side, in one run.

Each measurement runs in a fresh Python process with ``PYTHONPATH=TREE``, so one run
can set a release against the working tree. The trees take turns within each of
``--rounds`` rounds, and a number is the median over the rounds:

* ``cold``: the first step with an empty Numba cache (a new ``NUMBA_CACHE_DIR``), per
  configuration: the compile a new user waits for;
* ``warm``: ``import numba_adamax`` plus the first step, with the kernels in the cache;
* ``warmup``: with an empty cache, ``warmup(optimizer)`` (where the tree has it; else
  its ``warmup()``), then the first step;
* ``fixed``: one call at 1e3 and 1e4 float32 elements of ``apply`` on a list, of
  ``apply`` on ``FlatBuffer`` parameters and gradients and of the bound step (where the
  tree has ``bind``), and a serial streaming loop with the same memory traffic (28 bytes
  per element), all in one process;
* ``busy``: single steps of 40 000 float32 elements, of a sparse embedding gradient and
  of the dense gradient of the same table, on their own and beside ``--workers``
  spinning processes: median and 90th percentile.

The child processes time themselves (interpreter start-up is not counted).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from .problems import embedding_batch

#: Configurations of the cold-compile rows: label -> ``Adamax`` arguments.
COLD = {
    "default settings": {},
    "clipnorm=1.0": {"clipnorm": 1.0},
    "use_ema=True": {"use_ema": True},
    "gradient_accumulation_steps=2, global_clipnorm=1.0": {
        "gradient_accumulation_steps": 2, "global_clipnorm": 1.0},
}
#: Configurations of the rows of the first step after ``warmup``.
WARMUP = {"default settings": {}, "clipnorm=1.0": {"clipnorm": 1.0}}

_CHILD = r'''
import json, statistics, sys, time
start = time.perf_counter()
import numpy as np
import numba_adamax as na
imported = time.perf_counter()
mode, options, extra = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}

def first_steps(options, warm_up):
    w, g = np.ones(1000, np.float32), np.ones(1000, np.float32)
    opt = na.Adamax(learning_rate=0.001, **options)
    steps = options.get("gradient_accumulation_steps") or 1
    if warm_up:
        opt.build([w])
        begin = time.perf_counter()
        try:
            na.warmup(opt)
        except TypeError:  # a warmup of the default configuration only
            na.warmup()
        out["warmup"] = time.perf_counter() - begin
    begin = time.perf_counter()
    for _ in range(steps):
        opt.apply([g], [w])
    out["first_step"] = time.perf_counter() - begin

if mode in ("cold", "warm", "warmup"):
    first_steps(options, mode == "warmup")
    out["import"] = imported - start

if mode == "fixed":
    from numba import njit

    @njit(error_model="numpy", nogil=True)
    def stream(w, g, m, u, lr, omb1, b2, eps):
        dt = w.dtype.type
        lr, omb1, b2, eps = dt(lr), dt(omb1), dt(b2), dt(eps)
        for i in range(w.size):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * omb1
            ui = max(b2 * u[i], abs(gi))
            m[i], u[i] = mi, ui
            w[i] = w[i] - lr * mi / (ui + eps)

    def per_call(f, calls):
        begin = time.perf_counter_ns()
        for _ in range(calls):
            f()
        return (time.perf_counter_ns() - begin) / calls * 1e-9

    rng = np.random.default_rng(0)
    for n in (1000, 10000):
        w = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
        steps = {}
        wl, gl = [w.copy()], [g.copy()]
        listed = na.Adamax(learning_rate=1e-3)
        steps["list"] = lambda: listed.apply(gl, wl)
        P, G = na.FlatBuffer.from_arrays([w.copy()]), na.FlatBuffer.from_arrays([g.copy()])
        flat = na.Adamax(learning_rate=1e-3)
        steps["flat"] = lambda: flat.apply(G, P)
        bound = na.Adamax(learning_rate=1e-3)
        if hasattr(bound, "bind"):
            steps["bound"] = bound.bind([g.copy()], [w.copy()])
        wr, mr, ur = w.copy(), np.zeros_like(w), np.zeros_like(w)
        steps["roofline"] = lambda: stream(wr, g, mr, ur, 1e-3, 0.1, 0.999, 1e-7)
        for f in steps.values():
            f(), f()
        calls = 4000 if n == 1000 else 1500
        times = {k: [] for k in steps}
        for _ in range(9):
            for k, f in steps.items():
                times[k].append(per_call(f, calls))
        out[str(n)] = {k: statistics.median(v) for k, v in times.items()}

if mode == "busy":
    import multiprocessing

    def spin(stop):
        while not stop.is_set():
            pass

    def latencies(step, count):
        step()
        times = []
        for _ in range(count):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
            time.sleep(0.0005)
        ordered = sorted(times)
        return {"median": statistics.median(ordered),
                "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}

    data = np.load(extra["data"])
    table, indices, values = data["table"], data["indices"], data["values"]
    w, g = np.zeros(40_000, np.float32), np.ones(40_000, np.float32)
    dense_opt, sparse_opt, table_opt = na.Adamax(), na.Adamax(), na.Adamax()
    sparse_table, dense_table = table.copy(), table.copy()
    grad = na.IndexedSlices(values, indices)
    dense_grad = np.zeros_like(table)
    np.add.at(dense_grad, indices, values)
    cases = {"dense 40000": lambda: dense_opt.apply([g], [w]),
             "sparse embedding": lambda: sparse_opt.apply([grad], [sparse_table]),
             "dense embedding": lambda: table_opt.apply([dense_grad], [dense_table])}
    out["quiet"] = {k: latencies(f, extra["steps"]) for k, f in cases.items()}
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=spin, args=(stop,), daemon=True)
               for _ in range(extra["workers"])]
    for p in workers:
        p.start()
    try:
        time.sleep(0.2)
        out["busy"] = {k: latencies(f, extra["steps"]) for k, f in cases.items()}
    finally:
        stop.set()
        for p in workers:
            p.join()

print(json.dumps(out))
'''


def run_child(tree, mode, options=None, extra=None, cache_dir=None):
    """Run one measurement of ``mode`` in a new process importing ``tree``'s package
    (with ``NUMBA_CACHE_DIR=cache_dir`` when given); returns its JSON result."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    result = subprocess.run([sys.executable, "-c", _CHILD, mode, json.dumps(options or {}),
                             json.dumps(extra or {})],
                            env=env, capture_output=True, text=True, check=False,
                            cwd=tempfile.gettempdir())
    if result.returncode:
        raise RuntimeError(f"{mode} in {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_round(tree, args, data):
    """Every measurement of one tree, once: ``{key: seconds}``."""
    out = {}
    for label, options in COLD.items():
        cache = tempfile.mkdtemp(prefix="numba-adamax-compare-")
        try:
            out[f"cold/{label}"] = run_child(tree, "cold", options, cache_dir=cache)["first_step"]
            if not options:
                warm = run_child(tree, "warm", options, cache_dir=cache)
                out["warm/import + first step"] = warm["import"] + warm["first_step"]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    for label, options in WARMUP.items():
        cache = tempfile.mkdtemp(prefix="numba-adamax-compare-")
        try:
            r = run_child(tree, "warmup", options, cache_dir=cache)
            out[f"warmup/{label}/warmup"], out[f"warmup/{label}/first step"] = (
                r["warmup"], r["first_step"])
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    fixed = run_child(tree, "fixed")
    for n, times in fixed.items():
        for name, seconds in times.items():
            out[f"fixed/{n}/{name}"] = seconds
    busy = run_child(tree, "busy", extra={"data": data, "steps": args.steps,
                                          "workers": args.workers})
    for phase, cases in busy.items():
        for name, summary in cases.items():
            for statistic, seconds in summary.items():
                out[f"busy/{phase}/{name}/{statistic}"] = seconds
    return out


def run(args):
    """``{tree: {key: median seconds}}`` over ``args.rounds`` rounds, trees in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "embedding.npz")
        table, indices, values = embedding_batch(1.1, args.rows, args.dim, args.batch)
        np.savez(data, table=table, indices=indices, values=values)
        rounds = {tree: [] for tree in args.trees}
        for r in range(args.rounds):
            order = args.trees[r % len(args.trees):] + args.trees[:r % len(args.trees)]
            for tree in order:
                rounds[tree].append(one_round(tree, args, data))
                print(f"round {r + 1}/{args.rounds}: {tree} done", file=sys.stderr)
    return {tree: {key: statistics.median(run[key] for run in runs)
                   for key in runs[0] if all(key in run for run in runs)}
            for tree, runs in rounds.items()}


def _time(seconds):
    if seconds is None:
        return "—"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} µs" if seconds < 1e-5 else f"{seconds * 1e6:.0f} µs"


def _size(n):
    """``"1e3"`` for ``"1000"``."""
    return f"1e{len(n) - 1}"


def _ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return "—"
    return f"{numerator / denominator:.1f}×"


def format_report(report, labels):
    """The side-by-side table as Markdown, one column per tree."""
    trees = list(report)
    rows = []

    def row(text, values):
        rows.append(f"| {text} | " + " | ".join(values) + " |")

    def get(tree, key):
        return report[tree].get(key)

    for label in COLD:
        row(f"cold first step (empty cache), {label}", [_time(get(t, f"cold/{label}"))
                                                       for t in trees])
    row("warm start: `import numba_adamax` + first step (cache filled)",
        [_time(get(t, "warm/import + first step")) for t in trees])
    for label in WARMUP:
        row(f"`warmup(opt)` (empty cache), then the first step: {label}",
            [f"{_time(get(t, f'warmup/{label}/warmup'))}, "
             f"{_time(get(t, f'warmup/{label}/first step'))}" for t in trees])
    for n in ("1000", "10000"):
        for name in ("list", "flat", "bound"):
            values = []
            for t in trees:
                seconds, roof = get(t, f"fixed/{n}/{name}"), get(t, f"fixed/{n}/roofline")
                values.append("—" if seconds is None or roof is None else
                              f"{_time(seconds)} = {seconds / roof:.2f}× "
                              f"(+{_time(seconds - roof)})")
            what = {"list": "`apply` (list)", "flat": "`apply` (`FlatBuffer`)",
                    "bound": "bound step"}[name]
            row(f"{_size(n)} float32, {what}: time = × roofline (+ fixed cost)", values)
        row(f"{_size(n)} float32, streaming roofline",
            [_time(get(t, f"fixed/{n}/roofline")) for t in trees])
    for phase, text in (("quiet", "on its own"), ("busy", "beside spinning processes")):
        for case in ("dense 40000", "sparse embedding", "dense embedding"):
            row(f"{case}, {text}: median / p90",
                [f"{_time(get(t, f'busy/{phase}/{case}/median'))} / "
                 f"{_time(get(t, f'busy/{phase}/{case}/p90'))}" for t in trees])
        row(f"dense / sparse embedding step, {text}",
            [_ratio(get(t, f"busy/{phase}/dense embedding/median"),
                    get(t, f"busy/{phase}/sparse embedding/median")) for t in trees])
    header = "| | " + " | ".join(labels) + " |"
    return "\n".join([header, "|---|" + "---:|" * len(trees)] + rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark.compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="source trees (directories holding "
                        "numba_adamax/) to compare")
    parser.add_argument("--labels", nargs="+", help="column titles (default: the paths)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="spinning processes in the busy pass (default: the CPUs)")
    parser.add_argument("--steps", type=int, default=300, help="steps per busy case")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--json", metavar="PATH", help="write the medians as JSON")
    args = parser.parse_args(argv)
    labels = args.labels or args.trees
    if len(labels) != len(args.trees):
        parser.error("give one label per tree")
    report = run(args)
    print(format_report(report, labels))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
