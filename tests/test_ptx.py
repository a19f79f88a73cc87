"""Every CUDA kernel compiled to PTX for sm_80 and sm_90 and assembled by ``ptxas``, without
a GPU (``numba_adamax.gpu_check.ptx``), and what the PTX shows.

One compilation of every launch signature of ``gpu_check.signatures`` (each configuration
shape of the CPU tests, float16/32/64) per architecture, shared by the tests below:

* every kernel assembles, and the update kernels spill nothing;
* each kernel is one entry with its element bodies inlined and no call left (float16
  elements are widened, so no C++ half shim is needed);
* no fused multiply-add, and no product that ``ptxas`` could fuse with an addition: the
  device rounds every operation as the CPU does;
* in the update kernel, every element loop reaches each configured optional slot (EMA,
  accumulator), so none is tested per element, and an unconfigured slot is no argument;
* no device function is typed with an ``Optional`` argument.

Needs numba-cuda and ``nvidia-cuda-nvcc-cu12`` (the ``test`` extra) with the simulator
off; skipped otherwise, unless ``NUMBA_ADAMAX_REQUIRE_PTX=1`` (CI) makes that a failure.
tests/test_cuda.py checks, under the simulator, that every launch of its tests has one of
these signatures.
"""
import os

import numba
import pytest

from configs import CONFIGS
from conftest import slow
from numba_adamax.gpu_check import signatures
from numba_adamax.gpu_check.__main__ import offline


def test_option_sets_cover_the_cpu_test_configurations():
    shapes = {signatures.options_of(c.kwargs) for c in CONFIGS.values()}
    assert shapes <= set(signatures.OPTION_SETS)
    assert len(set(signatures.OPTION_SETS)) == len(signatures.OPTION_SETS)


def test_options_of_reads_the_features_that_change_types():
    assert signatures.options_of({"learning_rate": 0.1}) == signatures.Options()
    both = signatures.options_of({"global_clipnorm": 1.0, "gradient_accumulation_steps": 2,
                                  "use_ema": True, "weight_decay": 0.0,
                                  "loss_scale_factor": 8.0})
    assert both == signatures.Options(True, "norm", True, True, True)
    assert signatures.options_of({"clipvalue": 0.5}).clip == "value"


def _skip_or_fail(reason):
    if os.environ.get("NUMBA_ADAMAX_REQUIRE_PTX") == "1":
        pytest.fail(f"the PTX check cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def assembled():
    from numba_adamax.gpu_check import ptx
    reason = ptx.unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)
    return ptx.assemble_all()


@slow
def test_every_kernel_assembles_for_every_arch(assembled):
    from numba_adamax.gpu_check import ptx
    failed = [f"{r.module}.{r.kernel} {r.arch} {r.shapes}: {r.error}"
              for r in assembled if not r.ok]
    assert not failed, "\n".join(failed)
    launches = signatures.signatures()
    assert len(assembled) == len(launches) * len(ptx.ARCHS)
    assert ptx.summary(assembled) == (f"ptx: {len(launches)} kernels assembled for "
                                      "sm_80, sm_90, 0 failed")


@slow
def test_update_kernels_do_not_spill(assembled):
    updates = [r for r in assembled if r.kernel in ("update_kernel", "update_rows_kernel")]
    assert len(updates) > 2 * len(signatures.OPTION_SETS)
    spilling = [(r.kernel, r.arch, r.shapes, r.spill_stores, r.spill_loads, r.stack)
                for r in updates if r.spill_stores or r.spill_loads or r.stack]
    assert not spilling
    assert all(0 < r.registers <= 255 for r in updates)


@slow
def test_each_kernel_is_one_entry_without_calls(assembled):
    shapes = [(r.kernel, r.arch, r.shapes[0], r.checks) for r in assembled
              if (r.checks["entries"], r.checks["functions"], r.checks["calls"]) != (1, 0, 0)]
    assert not shapes


@slow
def test_no_multiply_add_is_fused(assembled):
    fused = [(r.kernel, r.arch, r.shapes[0], r.checks["fma"], r.checks["fusable"])
             for r in assembled if r.checks["fma"] or r.checks["fusable"]]
    assert not fused


@slow
def test_configured_slots_are_reached_by_every_element_loop(assembled):
    updates = [r for r in assembled if r.kernel == "update_kernel"]
    assert updates
    for r in updates:
        ema, accumulator = r.argtypes[9], r.argtypes[10]
        loops = r.checks["slot_loops"]
        assert loops, r.shapes
        for slot, argtype in (("ema", ema), ("accumulator", accumulator)):
            configured = isinstance(argtype, numba.types.Array)
            assert configured or argtype == numba.types.none
            reached = [slot in loop for loop in loops]
            assert all(reached) if configured else not any(reached), (r.arch, r.shapes, loops)
        assert any({"m", "u"} <= set(loop) for loop in loops)


@slow
def test_no_device_function_takes_an_optional(assembled):
    from numba_adamax.kernels import cuda, cuda_sparse
    functions = {**vars(cuda.elements), "_update_elements": cuda._update_elements,
                 "_update_row": cuda_sparse._update_row}
    compiled = {name: f.overloads for name, f in functions.items() if getattr(f, "overloads", None)}
    assert "update_at" in compiled and "without_gradient_at" in compiled
    optional = [(name, args) for name, overloads in compiled.items() for args in overloads
                if any(isinstance(t, numba.types.Optional) for t in args)]
    assert not optional


@slow
def test_the_offline_command_ends_with_the_summary(assembled):
    lines = []
    assert offline(results=assembled, out=lines.append) == 0
    assert lines[-1].startswith("ptx: ") and lines[-1].endswith(" 0 failed")
    assert any(line.startswith("cuda.update_kernel ") for line in lines)
