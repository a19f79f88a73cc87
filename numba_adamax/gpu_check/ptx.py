"""Compile every CUDA kernel to PTX and assemble it, without a GPU.

For each launch ``signatures.signatures()`` lists, and each architecture in
``ARCHS``, the kernel's Python function is compiled with numba-cuda's
``compile_ptx`` (NVVM), and the PTX is assembled to a cubin by ``ptxas -v`` from
the ``nvidia-cuda-nvcc-cu12`` wheel; ``ptxas`` reports the registers, stack frame
and spill bytes of each kernel. A compilation or assembly error is a failure.

``compile_ptx`` compiles the kernels' device functions through their dispatchers,
which ask for the current device's compute capability; without a GPU,
``_compiling_for`` answers with the target architecture while the PTX is built.

The PTX is also read, for the update kernel, to see which slot buffers each element
loop reaches (``slot_loops``): a configured EMA or accumulator must be reached by
every element loop (no loop version without it, as a per-element None test would
leave after loop unswitching), and an unconfigured one is no kernel argument at all.

This module needs numba-cuda with the simulator off (``NUMBA_ENABLE_CUDASIM`` unset):
the kernels must import their hardware address intrinsic.
"""
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import types as pytypes
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numba

from . import signatures

ARCHS = ("sm_80", "sm_90")


def unavailable_reason():
    """Why the PTX check cannot run here, or None: the simulator on, numba-cuda or its
    NVVM missing, or no ``ptxas``."""
    if numba.config.ENABLE_CUDASIM:
        return "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); PTX needs the real compiler"
    try:
        from numba import cuda  # noqa: F401
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc})"
    if find_ptxas() is None:
        return "ptxas not found (pip install nvidia-cuda-nvcc-cu12)"
    return None


def find_ptxas():
    """The path of ``ptxas``: the one in the ``nvidia-cuda-nvcc-cu12`` wheel, else the
    first on ``PATH``; None when there is none."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    except ModuleNotFoundError:  # no ``nvidia`` namespace package at all
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "bin" / "ptxas"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("ptxas")


@contextmanager
def _compiling_for(cc):
    """Make numba-cuda's device-function compiles see a device of compute capability
    ``cc``: they look it up on the current device, and there is no GPU here."""
    from numba.cuda import dispatcher
    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def _cc(arch):
    digits = arch.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


def compile_ptx(module, kernel, argtypes, arch):
    """The PTX of ``numba_adamax.kernels.<module>.<kernel>`` for ``argtypes`` on
    ``arch`` (e.g. ``"sm_90"``)."""
    from numba import cuda
    dispatcher = getattr(importlib.import_module(f"numba_adamax.kernels.{module}"), kernel)
    cc = _cc(arch)
    with _compiling_for(cc):
        ptx, _ = cuda.compile_ptx(dispatcher.py_func, tuple(argtypes), cc=cc)
    return ptx


@dataclass
class Assembled:
    """One kernel signature on one architecture: ``ptxas -v``'s ``registers``,
    ``stack`` (bytes), ``spill_stores`` and ``spill_loads`` (bytes), or the
    ``error`` that stopped it; ``shapes`` are the configuration shapes that launch it."""

    module: str
    kernel: str
    argtypes: tuple
    shapes: tuple
    arch: str
    ptx_file: str = ""
    registers: int = -1
    stack: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    error: str = ""
    checks: dict = field(default_factory=dict)

    @property
    def ok(self):
        return not self.error


_USED = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _parse_ptxas(result, text):
    used, frame = _USED.search(text), _FRAME.search(text)
    if used is None or frame is None:
        result.error = f"ptxas -v printed no resource usage:\n{text}"
        return
    result.registers = int(used.group(1))
    result.stack, result.spill_stores, result.spill_loads = map(int, frame.groups())


def assemble_all(archs=ARCHS, launches=None, workdir=None, jobs=None, progress=None):
    """Compile and assemble every launch of ``launches`` (default: every signature of
    ``signatures.signatures()``) for every arch of ``archs``; returns the
    ``Assembled`` results. PTX and cubins are written under ``workdir`` (default: a
    temporary directory, removed afterwards). Up to ``jobs`` ``ptxas`` processes
    (default: the CPU count) run while the next kernels compile."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot compile PTX: {reason}")
    ptxas = find_ptxas()
    launches = signatures.signatures() if launches is None else launches
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="numba_adamax_ptx_") as scratch:
        root = Path(workdir or scratch)
        root.mkdir(parents=True, exist_ok=True)
        results, running = [], []
        for n, (module, kernel, argtypes, shapes) in enumerate(launches):
            for arch in archs:
                result = Assembled(module, kernel, argtypes, shapes, arch)
                results.append(result)
                try:
                    ptx = compile_ptx(module, kernel, argtypes, arch)
                except Exception as exc:  # every compiler error is reported, not raised
                    result.error = f"compile: {type(exc).__name__}: {exc}"
                    continue
                result.checks = structure(ptx)
                if kernel == "update_kernel" and module == "cuda":
                    result.checks["slot_loops"] = slot_loops(ptx, argtypes)
                base = str(root / f"{n:03d}_{module}.{kernel}.{arch}")
                result.ptx_file = base + ".ptx"
                Path(result.ptx_file).write_text(ptx)
                running.append((result, subprocess.Popen(
                    [ptxas, f"-arch={arch}", "-v", "-o", base + ".cubin",
                     result.ptx_file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)))
                while len(running) >= jobs:
                    _finish(*running.pop(0))
            if progress is not None:
                progress(n + 1, len(launches))
        for item in running:
            _finish(*item)
    return results


def _finish(result, process):
    output, _ = process.communicate()
    if process.returncode:
        result.error = f"ptxas exit status {process.returncode}:\n{output}"
    else:
        _parse_ptxas(result, output)


# ---------------------------------------------------------------- reading the PTX

_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
_REGISTER = re.compile(r"%rd\d+")
_PARAM = re.compile(r"_param_(\d+)\]")
_GLOBAL_ACCESS = re.compile(r"^(?:ld|st|atom|red)\.global\S*\s+(.*);")


def structure(ptx):
    """Counts that say how the kernel was built: ``entries`` (kernels), ``functions``
    (device functions left out of line), ``calls``, global ``loads``/``stores``,
    ``fma`` (fused multiply-adds) and ``fusable`` (``fusable_products``)."""
    lines = [line.strip() for line in ptx.splitlines()]
    return {"entries": sum(line.startswith(".visible .entry") for line in lines),
            "functions": sum(line.startswith((".func", ".visible .func")) for line in lines),
            "calls": sum(bool(re.match(r"(@%p\d+\s+)?call", line)) for line in lines),
            "loads": sum(line.startswith("ld.global") for line in lines),
            "stores": sum(line.startswith("st.global") for line in lines),
            "fma": sum(bool(re.match(r"fma\.", line)) for line in lines),
            "fusable": fusable_products(lines)}


_FLOAT_OP = re.compile(r"^(mul|add|sub|neg|mov)\.(f32|f64)\s+(%fd?\d+),\s*(.*);")


def fusable_products(lines):
    """How many additions or subtractions take a product that PTX lets ptxas fuse
    with them into an FMA: a ``mul.f32``/``mul.f64`` without a rounding modifier
    (``mul.rn`` is never fused), also through ``neg`` and ``mov``."""
    products, changed = set(), True
    while changed:  # flow-insensitive: loops reassign registers
        changed = False
        for line in lines:
            op = _FLOAT_OP.match(line)
            if op is None or op.group(3) in products:
                continue
            sources = re.findall(r"%fd?\d+", op.group(4))
            if op.group(1) == "mul" or (op.group(1) in ("neg", "mov")
                                        and products.intersection(sources)):
                products.add(op.group(3))
                changed = True
    return sum(1 for line in lines if (op := _FLOAT_OP.match(line))
               and op.group(1) in ("add", "sub")
               and products.intersection(re.findall(r"%fd?\d+", op.group(4))))


def _data_parameters(argtypes):
    """For each array argument, the index of its data-pointer kernel parameter
    (numba flattens every argument into parameters; an array's data is its fifth)."""
    from numba.cuda.descriptor import cuda_target
    context = cuda_target.target_context
    first, found = 0, {}
    for i, t in enumerate(argtypes):
        if isinstance(t, numba.types.Array):
            found[first + 4] = i
        first += len(context.get_arg_packer([t]).argument_types)
    return found


def _pointer_sources(lines, data_parameters):
    """For each 64-bit register, the arguments whose data pointer it is computed from
    (through parameter loads, address conversion and arithmetic; not through memory)."""
    sources = {}
    for line in lines:
        param = _PARAM.search(line)
        if line.startswith("ld.param") and param and int(param.group(1)) in data_parameters:
            sources.setdefault(_REGISTER.search(line).group(0), set()).add(
                data_parameters[int(param.group(1))])
    changed = True
    while changed:  # flow-insensitive: loops reassign registers
        changed = False
        for line in lines:
            if line.startswith(("ld.", "st.", "setp", "@", "bra", "atom", "red")):
                continue
            registers = _REGISTER.findall(line)
            if len(registers) < 2:
                continue
            reached = set().union(*(sources.get(r, ()) for r in registers[1:]))
            target = sources.setdefault(registers[0], set())
            if not reached <= target:
                target |= reached
                changed = True
    return sources


def _innermost_loops(lines):
    """``(first, last)`` line ranges of the loops with no loop inside them (a label
    and a later branch back to it)."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := _BRANCH.search(line)) and labels.get(m.group(1), i + 1) < i]
    return sorted((a, b) for a, b in loops
                  if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops))


def slot_loops(ptx, argtypes):
    """For the update kernel's PTX: per innermost loop that reaches global memory, the
    names of the slot arguments (``m``, ``u``, ``ema``, ``accumulator``) whose buffers
    its loads and stores address."""
    slots = {7: "m", 8: "u", 9: "ema", 10: "accumulator"}  # update_kernel's argument order
    lines = [line.strip() for line in ptx.splitlines()]
    sources = _pointer_sources(lines, _data_parameters(argtypes))
    out = []
    for first, last in _innermost_loops(lines):
        reached, touches_memory = set(), False
        for line in lines[first:last + 1]:
            access = _GLOBAL_ACCESS.match(re.sub(r"^@!?%p\d+\s+", "", line))
            if access is None:
                continue
            touches_memory = True
            address = re.search(r"\[(%rd\d+)", access.group(1))
            if address:
                reached |= sources.get(address.group(1), set())
        if touches_memory:
            out.append(sorted(slots[i] for i in reached if i in slots))
    return out


# ---------------------------------------------------------------- report

def summary(results, archs=ARCHS):
    """The closing line: ``ptx: N kernels assembled for sm_80, sm_90, F failed``, where
    N counts the kernel signatures assembled for every arch."""
    by_launch = {}
    for r in results:
        by_launch.setdefault((r.module, r.kernel, r.argtypes), []).append(r)
    assembled = sum(all(r.ok for r in rs) for rs in by_launch.values())
    failed = sum(not r.ok for r in results)
    return f"ptx: {assembled} kernels assembled for {', '.join(archs)}, {failed} failed"


def usage_table(results):
    """Per kernel and arch: signatures, register range and the largest spill, as text
    lines."""
    rows = {}
    for r in results:
        if r.ok:
            rows.setdefault((r.module, r.kernel, r.arch), []).append(r)
    lines = [f"{'kernel':<38} {'arch':<6} {'sigs':>4} {'registers':>10} {'stack':>6} "
             f"{'spill st/ld':>12}"]
    for (module, kernel, arch), rs in sorted(rows.items()):
        regs = sorted(r.registers for r in rs)
        lines.append(f"{module + '.' + kernel:<38} {arch:<6} {len(rs):>4} "
                     f"{f'{regs[0]}-{regs[-1]}':>10} {max(r.stack for r in rs):>6} "
                     f"{f'{max(r.spill_stores for r in rs)}/{max(r.spill_loads for r in rs)}':>12}")
    return lines
