"""The sharded optimizer under MPI: ``mpiexec -n N python -m mpi4py`` launches of
tests/mpi_scenarios.py (one per world size, many checks each), read back from the
JSON each rank writes. pytest itself never runs under mpiexec."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MPIEXEC, mpi_environment, require_mpi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = HERE / "mpi_scenarios.py"
TIMEOUT = 240


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _mpi():
    """Skip without mpi4py/mpiexec (fail under NUMBA_ADAMAX_REQUIRE_MPI=1)."""
    require_mpi()


def environment():
    return mpi_environment()


def launch(n, *args, timeout=TIMEOUT):
    """``mpiexec -n n python -m mpi4py args...``; the completed process."""
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", *args],
                          check=False, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=environment(), cwd=ROOT)


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda n: f"n{n}")
def results(request, warm_cache, tmp_path_factory):
    """Per rank, the list of check records of the ``all`` case at ``n`` ranks."""
    n = request.param
    out = tmp_path_factory.mktemp(f"mpi{n}")
    done = launch(n, str(SCENARIOS), "all", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return n, [json.loads((out / f"all-{r}.json").read_text()) for r in range(n)]


def test_every_rank_reports_the_same_checks(results):
    n, per_rank = results
    assert len(per_rank) == n
    names = [[c["name"] for c in checks] for checks in per_rank]
    assert all(x == names[0] for x in names)
    assert len(names[0]) > 70


def test_deterministic_steps_equal_one_process_bit_for_bit(results):
    """Every configuration of tests/configs.py, stage 0 and 1, sum and mean, FlatBuffer
    and mixed-dtype lists: params, every slot and the counters equal one process given
    the rank-order sum of the gradients."""
    _, per_rank = results
    for checks in per_rank:
        failed = [(c["name"], c["stage"], c["detail"]) for c in checks
                  if c.get("deterministic") and not c["exact"]]
        assert not failed
        assert sum(bool(c.get("deterministic")) for c in checks) >= 44


def test_the_libraries_reduction_is_close_and_equal_on_every_rank(results):
    _, per_rank = results
    library = [[c for c in checks if c.get("deterministic") is False] for checks in per_rank]
    assert library[0]
    for checks in library:
        assert all(c["close"] for c in checks), [c["name"] for c in checks if not c["close"]]
    for records in zip(*library):
        assert len({c["digest"] for c in records}) == 1


def test_all_ranks_hold_the_same_parameters(results):
    _, per_rank = results
    for records in zip(*per_rank):
        assert len({c["digest"] for c in records}) == 1, records[0]["name"]


def test_nonfinite_sparse_memory_and_agreed_errors(results):
    """NaN only in the last rank's gradient: every rank skips, or raises naming the
    same variable; IndexedSlices rows repeated across ranks; local_nbytes ~ total/N;
    every argument error raises the same exception on every rank, changing nothing."""
    _, per_rank = results
    wanted = ("nonfinite_skip_1", "nonfinite_raise_1", "sparse_2_1", "local_nbytes",
              "none_pattern_differs", "bad_argument_on_one_rank", "callable_rate_differs",
              "broadcast", "functional_equals_class", "get_slot_pieces")
    for checks in per_rank:
        by_name = {c["name"]: c for c in checks}
        for name in wanted:
            assert by_name[name]["exact"], (name, by_name[name]["detail"])
        failed = [(c["name"], c["detail"]) for c in checks
                  if not c["exact"] and c.get("deterministic") is not False]
        assert not failed


SETTINGS = ("learning_rate", "clipnorm", "weight_decay", "beta_1", "excluded_from_weight_decay")


def test_a_setting_changed_on_one_rank_is_refused_at_the_next_call(results):
    """After two steps rank 1 alone assigns another ``learning_rate``, ``clipnorm``,
    ``weight_decay``, the weight-decay exclusions (class) or ``beta_1`` (functional
    state): the next call raises the
    same ValueError on every rank, naming the setting and its value per rank, with
    params, slots and counters unchanged; set back, the call runs and equals one
    process."""
    n, per_rank = results
    records = [{c["name"]: c for c in checks} for checks in per_rank]
    for setting in SETTINGS:
        name = f"setting_changed_{setting}"
        mine = [r[name] for r in records]
        for c in mine:
            assert c["exact"], (name, c["detail"], c["mismatches"])
        assert len({c["detail"] for c in mine}) == 1  # the same message on every rank
        assert len({c["digest"] for c in mine}) == 1
        if n > 1:
            assert mine[0]["detail"].startswith("The optimizer settings differ")
            assert f"{setting} (per rank: [" in mine[0]["detail"]


def test_a_failing_rank_ends_the_job_well_inside_the_timeout(warm_cache, tmp_path):
    started = time.perf_counter()
    done = launch(3, str(SCENARIOS), "fail", str(tmp_path), timeout=60)
    assert done.returncode != 0
    assert "a bug on one rank" in done.stderr + done.stdout
    assert time.perf_counter() - started < 30
    assert not list(tmp_path.iterdir())


def test_the_distributed_example_runs_on_two_ranks(warm_cache):
    done = launch(2, str(ROOT / "examples" / "distributed_mpi.py"), timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.startswith("2 ranks, 300 steps")


def test_device_variables_are_staged_through_the_host(tmp_path):
    """CUDA device arrays under the simulator at two ranks: the gradients and parameters
    travel through host buffers, the update runs on the device, and the result equals
    one process stepping device variables on the rank-order sum, bit for bit."""
    pytest.importorskip("numba.cuda", reason="needs numba-cuda")
    env = dict(environment(), NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", str(SCENARIOS),
                           "device", str(tmp_path)], check=False, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"device-{r}.json").read_text()) for r in range(2)]
    assert len(per_rank[0]) == 3
    for checks in per_rank:
        assert all(c["exact"] for c in checks), [(c["name"], c["detail"]) for c in checks]
    assert [c["digest"] for c in per_rank[0]] == [c["digest"] for c in per_rank[1]]
