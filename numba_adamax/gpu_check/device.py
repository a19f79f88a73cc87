"""The device run of ``python -m numba_adamax.gpu_check``: on a CUDA GPU, from a checkout.

Within ``budget`` seconds of wall-clock time, in this order:

1. the machine: GPU, compute capability, memory, library versions;
2. the CUDA tests on the hardware: ``tests/test_cuda.py`` (CPU/GPU parity on every
   configuration of ``tests/configs.py`` with small and with full-size launches,
   float16, NaN propagation, sparse gradients, checkpoints) and the PyTorch tests
   marked ``cuda`` (``tests/test_torch_cuda.py``: the PyTorch optimizer on CUDA
   tensors against the CPU one; ``tests/test_torch_integration.py``;
   ``tests/test_torch_comm.py``: the sharded optimizer on an NCCL group), in one
   pytest process;
3. the GPU benchmark (``numba_adamax.benchmark.gpu``) and its targets.

Each step runs in its own Python process with a time limit, so one that hangs or
crashes is reported and the next still runs. ``report.json`` (everything, machine
readable) and ``report.md`` (the same for people) are written into ``out``; the
pytest log and the benchmark's own JSON beside them. Returns 0 when every test
passed and every benchmark target was met, else 1.
"""
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

#: Seconds kept for the benchmark when the tests run first.
BENCHMARK_SECONDS = 150
#: Test files run on the hardware, and the marker that selects their CUDA tests.
TEST_FILES = ("tests/test_cuda.py", "tests/test_torch_cuda.py",
              "tests/test_torch_integration.py", "tests/test_torch_comm.py")
#: The files of ``TEST_FILES`` that test the PyTorch optimizer.
TORCH_TEST_FILES = ("tests/test_torch_cuda.py", "tests/test_torch_integration.py",
                    "tests/test_torch_comm.py")
_OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def repository_root():
    """The checkout this package runs from (the folder with ``tests/test_cuda.py``), or
    None when it is an installed copy."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "tests" / "test_cuda.py").is_file() else None


def machine():
    """The GPU and the library versions, as a dict (imports ``numba.cuda``)."""
    import numba
    from numba import cuda
    device = cuda.get_current_device()
    free, total = cuda.current_context().get_memory_info()
    info = {"gpu": device.name.decode() if isinstance(device.name, bytes) else str(device.name),
            "compute_capability": ".".join(map(str, device.compute_capability)),
            "memory_GiB": round(total / 2**30, 1), "python": platform.python_version(),
            "numba": numba.__version__, "numba_cuda": _version("numba-cuda"),
            "numpy": _version("numpy"), "host": platform.node()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    return info


def _version(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _child_env():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repository_root()),
                                                      env.get("PYTHONPATH")]))
    return env


def _run(command, timeout, log):
    """Run ``command`` from the checkout, output to ``log``; ``(status, seconds)``, the
    status None when it ran past ``timeout`` and was killed."""
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            status = subprocess.run(command, cwd=repository_root(), env=_child_env(),
                                    stdout=f, stderr=subprocess.STDOUT,
                                    timeout=max(1.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            status = None
    return status, time.monotonic() - start


def run_tests(out, timeout):
    """The CUDA tests on the hardware (``TEST_FILES``, ``-m cuda``): a dict with the
    exit status, the outcome of each test, counts and the failures' names."""
    log = out / "pytest.log"
    status, seconds = _run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                            "-m", "cuda", *TEST_FILES], timeout, log)
    outcomes = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _OUTCOME.match(line)
        if match:
            outcomes[match.group(1)] = match.group(2).lower()
    counts = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"status": status, "timed_out": status is None, "seconds": round(seconds, 1),
            "counts": counts, "outcomes": outcomes, "log": log.name,
            "failures": sorted(t for t, o in outcomes.items() if o in ("failed", "error")),
            "torch_cuda_tests": sum(t.startswith(TORCH_TEST_FILES) for t in outcomes)}


def parity(tests):
    """Per configuration, the outcome of each CPU/GPU parity test of ``run_tests``."""
    table = {}
    for test, outcome in tests["outcomes"].items():
        match = re.match(r"tests/test_cuda\.py::(test_every_config_matches_the_cpu\w*)\[(.+)\]$",
                         test)
        if match:
            table.setdefault(match.group(2), {})[match.group(1)] = outcome
    return table


def run_benchmark(out, timeout):
    """``numba_adamax.benchmark.gpu`` in its own process: its rows and targets."""
    result_file = out / "benchmark.json"
    status, seconds = _run([sys.executable, "-m", "numba_adamax.benchmark.gpu",
                            "--json", str(result_file)], timeout, out / "benchmark.log")
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return {"status": status, "timed_out": status is None, "seconds": round(seconds, 1),
            "rows": result.get("rows", []), "targets": result.get("targets", []),
            "skipped": result.get("skipped"), "log": "benchmark.log"}


def run(out="gpu_check_report", budget=470.0):
    """The whole device run (see the module docstring); writes ``out``/report.json and
    ``out``/report.md and returns the exit status."""
    from ..benchmark.devices import gpu_unavailable_reason
    start = time.monotonic()
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"No device run: {reason}. Without a GPU, run "
              "`python -m numba_adamax.gpu_check --offline`.")
        return 1
    if repository_root() is None:
        print("No device run: the tests are not here; run from a checkout of the repository.")
        return 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "budget_s": budget}
    print(f"GPU: {report['machine']['gpu']} (sm_{report['machine']['compute_capability']})")
    left = budget - (time.monotonic() - start)
    report["tests"] = run_tests(out, left - BENCHMARK_SECONDS)
    report["parity"] = parity(report["tests"])
    print(f"tests: {report['tests']['counts']} in {report['tests']['seconds']} s")
    left = budget - (time.monotonic() - start)
    report["benchmark"] = run_benchmark(out, left)
    report["seconds"] = round(time.monotonic() - start, 1)
    tests, bench = report["tests"], report["benchmark"]
    report["ok"] = (tests["status"] == 0 and not tests["failures"]
                    and bench["status"] == 0 and bool(bench["targets"])
                    and all(t["met"] for t in bench["targets"]))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(f"{'OK' if report['ok'] else 'NOT OK'}: {out / 'report.md'} "
          f"({report['seconds']} s)")
    return 0 if report["ok"] else 1


def markdown(report):
    """``report`` (``run``'s) as a Markdown document."""
    m, tests, bench = report["machine"], report["tests"], report["benchmark"]
    lines = ["# numba_adamax device check", "",
             f"**{'OK' if report['ok'] else 'NOT OK'}** in {report['seconds']} s "
             f"(budget {report['budget_s']:.0f} s).", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in m.items()]
    lines += ["", "## Tests on the hardware", "",
              f"`pytest -m cuda {' '.join(TEST_FILES)}`: exit status {tests['status']}"
              f"{' (killed at the time limit)' if tests['timed_out'] else ''}, "
              f"{tests['seconds']} s, "
              + ", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items())) + ".", ""]
    if not tests["torch_cuda_tests"]:
        lines += [("No PyTorch test is marked `cuda` here: PyTorch is missing, or the tests "
                   "did not run."), ""]
    nan = {t: o for t, o in tests["outcomes"].items() if "nan" in t.lower()}
    lines += [f"- NaN propagation: {', '.join(f'`{t}` {o}' for t, o in nan.items()) or 'not run'}"]
    lines += [f"- FAILED: `{t}`" for t in tests["failures"]]
    lines += ["", "## CPU/GPU parity per configuration", ""]
    columns = sorted({c for row in report["parity"].values() for c in row})
    if columns:
        lines += ["| configuration | " + " | ".join(f"`{c}`" for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(row.get(c, "-") for c in columns) + " |"
                  for name, row in report["parity"].items()]
    else:
        lines += ["No parity test ran."]
    lines += ["", "## Benchmark (`python -m numba_adamax.benchmark.gpu`)", ""]
    if bench["rows"]:
        keys = list(bench["rows"][0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(f"{row.get(k, ''):.4g}" if isinstance(row.get(k), float)
                                    else str(row.get(k, "")) for k in keys) + " |"
                  for row in bench["rows"]]
        lines += ["", "| target | case | value | met |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['case']} | {t['value']} | "
                  f"{'yes' if t['met'] else '**no**'} |" for t in bench["targets"]]
    else:
        lines += [f"No result (exit status {bench['status']}"
                  f"{', killed at the time limit' if bench['timed_out'] else ''}; "
                  f"see {bench['log']})."]
    return "\n".join(lines) + "\n"
