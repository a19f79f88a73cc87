"""Time one Adamax step side by side: numba_adamax, a streaming roofline, NumPy,
PyTorch and optax, in one process, on the same data.

    python -m numba_adamax.benchmark                       # every size, all contenders
    python -m numba_adamax.benchmark --sizes 1e3 1e6 --json out.json --plot out.png

Contenders (each skipped, with the reason, when its library is missing):

* ``numba_adamax``: ``Adamax().apply(grads, params)`` with lists of arrays;
* ``flat``: the same with ``FlatBuffer`` parameters and gradients;
* ``bound``: the bound step of ``Adamax.bind`` over the same gradient arrays;
* ``roofline``: a bare streaming kernel over one buffer of all the elements, with the
  memory traffic of the step (reads g, w, m, u; writes w, m, u: 28 bytes per float32
  element) and the same serial/parallel threshold (see ``roofline``);
* ``numpy``: Adamax in NumPy ufuncs with preallocated ``out=`` buffers, per array;
* ``torch_foreach`` / ``torch_single``: ``torch.optim.Adamax(foreach=True/False)``;
* ``optax_jit``: ``optax.adamax`` and ``apply_updates`` under ``jax.jit`` with the
  parameters and state donated, waiting for each step's result.

Cases: one dense array per size; many small tensors (``--tensors`` mixed shapes of
about ``--tensors-total`` elements); and variants of numba_adamax (clipping by norm,
EMA, weight decay, gradient accumulation), each against a roofline making the same
passes (a timed accumulation step is a whole window: a micro-step and an update).

Method: everything is built and warmed up first (compilation, slots, XLA); then, in
each round, every contender runs a batch of steps (sized to last ``--batch-time``), the
order rotating from round to round; a contender's time is the median over rounds of
its time per step (``effective_gb_per_s`` in the JSON divides the 7 arrays' bytes a fused
step moves by it). Numba, PyTorch and XLA all get the same cores: the process is
pinned to ``--threads`` CPUs (default: all it may use), and numba and torch are told
that thread count.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import contenders as _contenders
from .contenders import Unavailable
from .problems import mixed_shapes, problem

__all__ = ["CONTENDERS", "PEERS", "VARIANT_NAMES", "configure_threads", "describe_machine",
           "format_report", "main", "measure", "plot", "run_cases"]

#: Contender keys, in table order, and their column titles.
CONTENDERS = {
    "numba_adamax": "numba_adamax",
    "flat": "FlatBuffer",
    "bound": "bound step",
    "roofline": "roofline",
    "numpy": "NumPy",
    "torch_foreach": "torch foreach",
    "torch_single": "torch single",
    "optax_jit": "optax jit",
}
PEERS = ("numpy", "torch_foreach", "torch_single", "optax_jit")
DEFAULT_SIZES = (1e3, 1e4, 1e5, 1e6, 1e7, 5e7)
VARIANT_NAMES = tuple(v for v in _contenders.VARIANTS if v != "plain")


def configure_threads(threads=None):
    """Pin this process to ``threads`` CPUs (default: all it may use) and give numba
    that many threads; returns ``{"cpus": n, "numba": n_numba}``. Call it before
    torch or jax is imported (XLA sizes its pool from the CPUs it may use)."""
    available = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else list(range(os.cpu_count() or 1)))
    n = threads or len(available)
    if not 1 <= n <= len(available):
        raise SystemExit(f"--threads must be between 1 and {len(available)}, got {n}.")
    if n < len(available):
        os.sched_setaffinity(0, available[:n])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return {"cpus": n, "numba": numba.get_num_threads()}


def _builders(names, threads):
    table = {
        "numba_adamax": _contenders.numba_adamax_list,
        "flat": _contenders.numba_adamax_flat,
        "bound": _contenders.numba_adamax_bound,
        "roofline": _contenders.roofline,
        "numpy": _contenders.numpy_adamax,
        "torch_foreach": lambda ws, gs: _contenders.torch_adamax(ws, gs, True, threads),
        "torch_single": lambda ws, gs: _contenders.torch_adamax(ws, gs, False, threads),
        "optax_jit": _contenders.optax_adamax,
    }
    return {name: table[name] for name in names}


def _finish(step):
    finish = getattr(step, "finish", None)
    if finish is not None:
        finish()


def _batch_seconds(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step()
    _finish(step)
    return time.perf_counter() - start


def measure(steps, rounds=15, batch_time=0.005, max_seconds=60.0):
    """Time the step callables ``steps`` (name -> callable) interleaved.

    Each is warmed up, then given a batch size so that a batch lasts about
    ``batch_time``; ``rounds`` rounds (fewer, but at least 3, when a round would make
    the whole exceed ``max_seconds``) each run one batch of every step, the order
    rotating by one per round. Returns name -> ``{"median", "min", "rounds",
    "steps_per_round"}`` in seconds per step. Mutates whatever the steps mutate.
    """
    single = {}
    for name, step in steps.items():
        _batch_seconds(step, 3)  # compile, allocate, fill caches
        single[name] = min(_batch_seconds(step, 1) for _ in range(3))
    batch = {name: int(min(10_000, max(1, batch_time / max(t, 1e-9))))
             for name, t in single.items()}
    round_seconds = sum(batch[name] * single[name] for name in steps)
    rounds = max(3, min(rounds, int(max_seconds / max(round_seconds, 1e-9))))
    samples = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_batch_seconds(steps[name], batch[name]) / batch[name])
    return {name: {"median": statistics.median(s), "min": min(s), "rounds": rounds,
                   "steps_per_round": batch[name]} for name, s in samples.items()}


def repeats_for(size):
    """How many steps to time one by one on ``size`` elements: enough for about 0.3 GB
    of a plain step's traffic (28 bytes per element), 7 to 2000."""
    return int(min(2000, max(7, 3e8 / (28 * size))))


def _build(builders, ws, gs, skipped):
    steps = {}
    for name, build in builders.items():
        if name in skipped:
            continue
        try:
            steps[name] = build(ws, gs)
        except Unavailable as exc:
            skipped[name] = str(exc)
            print(f"  skipping {CONTENDERS[name]}: {exc}", file=sys.stderr)
    return steps


def _ratio(a, b):
    return a / b if a is not None and b is not None else None


def _case_ratios(times, reference):
    t = {name: r["median"] for name, r in times.items()}
    ratios = {"numba_adamax/roofline": _ratio(t.get("numba_adamax"), t.get("roofline")),
              "flat/roofline": _ratio(t.get("flat"), t.get("roofline")),
              "bound/roofline": _ratio(t.get("bound"), t.get("roofline"))}
    for peer in PEERS:
        ratios[f"{peer}/{reference}"] = _ratio(t.get(peer), t.get(reference))
    return ratios


def run_cases(args, threads):
    """Every case of ``args``; returns ``(cases, variants, skipped)`` (see ``main``)."""
    builders = _builders(args.contenders, threads)
    skipped, cases, variants = {}, [], []
    itemsize = np.dtype(args.dtype).itemsize
    shape_sets = [("dense", [(int(size),)]) for size in args.sizes]
    if args.tensors:
        shapes = mixed_shapes(args.tensors, int(args.tensors_total))
        shape_sets.append(("tensors", shapes))
    for kind, shapes in shape_sets:
        ws, gs = problem(shapes, args.dtype)
        elements = sum(w.size for w in ws)
        print(f"- {kind}: {len(shapes)} array(s), {elements} elements", file=sys.stderr)
        steps = _build(builders, ws, gs, skipped)
        times = measure(steps, args.repeats, args.batch_time, args.max_seconds)
        del steps
        reference = "flat" if kind == "tensors" and "flat" in times else "numba_adamax"
        for r in times.values():  # at the traffic a fused step cannot go below
            r["effective_gb_per_s"] = 7 * itemsize * elements / r["median"] / 1e9
        cases.append({"case": kind, "elements": elements, "tensors": len(shapes),
                      "reference": reference, "times": times,
                      "ratios": _case_ratios(times, reference)})
    for variant in args.variants:
        options, calls, nbytes = _contenders.VARIANTS[variant]
        for size in args.variant_sizes:
            ws, gs = problem([(int(size),)], args.dtype)
            print(f"- variant {variant}: {int(size)} elements", file=sys.stderr)
            steps = {"numba_adamax": _contenders.numba_adamax_list(ws, gs, options, calls),
                     "roofline": _contenders.roofline(ws, gs, variant)}
            times = measure(steps, args.repeats, args.batch_time, args.max_seconds)
            variants.append({
                "variant": variant, "elements": int(size), "calls_per_step": calls,
                "bytes_per_element": nbytes * itemsize // 4, "options": options,
                "times": times,
                "ratio": times["numba_adamax"]["median"] / times["roofline"]["median"]})
    return cases, variants, skipped


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: report, do not fail
        return None


def describe_machine(threads):
    """CPU, thread counts and library versions, as a dict."""
    import numba

    import numba_adamax
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threading = {"cpus": threads["cpus"], "numba": threads["numba"]}
    try:
        threading["numba_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run
        threading["numba_layer"] = None
    if "torch" in sys.modules:
        threading["torch"] = sys.modules["torch"].get_num_threads()
    if "jax" in sys.modules:
        threading["xla"] = f"{threads['cpus']} (CPUs this process may use)"
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "threads": threading,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__, "numba_adamax": numba_adamax.__version__,
                     "torch": _version("torch"), "jax": _version("jax"),
                     "jaxlib": _version("jaxlib"), "optax": _version("optax")},
    }


def _fmt_time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def _fmt_bandwidth(times):
    return "—" if times is None else f"{times['effective_gb_per_s']:.1f}"


def _markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _case_label(case):
    if case["case"] == "dense":
        return f"{case['elements']:.0e}".replace("e+0", "e")
    return f"{case['tensors']} tensors, {case['elements'] / 1e6:.2g}e6"


def format_report(report):
    """The report as Markdown text: the machine, the times, the ratios and the variants."""
    m = report["machine"]
    t = m["threads"]
    out = [f"{report['dtype']}, one step; median of interleaved rounds.",
           f"CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, load average "
           f"{', '.join(f'{x:.2f}' for x in m['load_average'] or [])} at start.",
           "Threads: " + ", ".join(f"{k} {v}" for k, v in t.items()) + ".",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
           ""]
    if m["load_average"] and m["load_average"][0] > 0.5:
        out[-1:] = ["Note: other processes were using the CPUs at the start (load average "
                    f"{m['load_average'][0]:.2f}); a parallel step waits for its slowest "
                    "thread, so parallel timings may be inflated.", ""]
    names = [n for n in CONTENDERS if any(n in c["times"] for c in report["cases"])]
    out.append(_markdown(["elements"] + [CONTENDERS[n] for n in names], [
        [_case_label(c)] + [_fmt_time(c["times"][n]["median"]) if n in c["times"] else "—"
                            for n in names] for c in report["cases"]]))
    out += ["", "Ratios of median times; the reference is numba_adamax on a list of arrays "
            "for a dense array and the FlatBuffer path for the many tensors "
            "(a peer ratio > 1 means numba_adamax is faster):", ""]
    header = ["elements", "roofline GB/s", "numba_adamax / roofline", "FlatBuffer / roofline",
              "bound step / roofline"]
    header += [f"{CONTENDERS[p]} / ref" for p in PEERS]
    out.append(_markdown(header, [
        [_case_label(c), _fmt_bandwidth(c["times"].get("roofline")),
         _fmt_ratio(c["ratios"]["numba_adamax/roofline"]),
         _fmt_ratio(c["ratios"]["flat/roofline"]), _fmt_ratio(c["ratios"]["bound/roofline"])]
        + [_fmt_ratio(c["ratios"][f"{p}/{c['reference']}"]) for p in PEERS]
        for c in report["cases"]]))
    if report["variants"]:
        out += ["", "Variants of numba_adamax against a roofline with their own traffic:", ""]
        out.append(_markdown(
            ["variant", "elements", "bytes / element", "numba_adamax", "roofline", "ratio"],
            [[v["variant"], f"{v['elements']:.0e}".replace("e+0", "e"),
              str(v["bytes_per_element"]), _fmt_time(v["times"]["numba_adamax"]["median"]),
              _fmt_time(v["times"]["roofline"]["median"]), _fmt_ratio(v["ratio"])]
             for v in report["variants"]]))
    if report["skipped"]:
        out += [""] + [f"Skipped {CONTENDERS[k]}: {why}." for k, why in report["skipped"].items()]
    return "\n".join(out)


def plot(report, path):
    """Draw time per element against size for each contender into ``path`` (a PNG);
    returns False (and draws nothing) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    dense = [c for c in report["cases"] if c["case"] == "dense"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label in CONTENDERS.items():
        points = [(c["elements"], c["times"][name]["median"] / c["elements"] * 1e9)
                  for c in dense if name in c["times"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("ns per element per step")
    ax.set_title(f"Adamax step, {report['dtype']}, {report['machine']['threads']['cpus']} CPUs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _parser():
    p = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark",
                                description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=list(DEFAULT_SIZES),
                   help="dense array sizes (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None,
                   help="CPUs for every library (default: all this process may use)")
    p.add_argument("--tensors", type=int, default=300,
                   help="number of tensors of the many-tensors case; 0 skips it")
    p.add_argument("--tensors-total", type=float, default=5e6,
                   help="about how many elements the many tensors hold in all")
    p.add_argument("--variants", nargs="*", default=list(VARIANT_NAMES),
                   choices=VARIANT_NAMES, help="numba_adamax variants against their roofline")
    p.add_argument("--variant-sizes", nargs="+", type=float, default=None,
                   help="sizes for the variants (default: --sizes)")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                   choices=list(CONTENDERS))
    p.add_argument("--repeats", type=int, default=15, help="rounds (default %(default)s)")
    p.add_argument("--batch-time", type=float, default=0.005,
                   help="seconds a batch of steps lasts in a round")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="about how long one case may take (fewer rounds, at least 3)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw a PNG (needs matplotlib)")
    return p


def main(argv=None):
    """Run the benchmark; prints the report (Markdown) and writes --json / --plot."""
    args = _parser().parse_args(argv)
    if args.variant_sizes is None:
        args.variant_sizes = args.sizes
    threads = configure_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cases, variants, skipped = run_cases(args, threads["cpus"])
    report = {"format_version": 1, "dtype": args.dtype, "machine": describe_machine(threads),
              "cases": cases, "variants": variants, "skipped": skipped}
    report["machine"]["load_average"] = list(load) if load else None
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        if plot(report, args.plot):
            print(f"\nplot written to {args.plot}")
        else:
            print("\n--plot: matplotlib is not installed; no plot written", file=sys.stderr)
    return report
