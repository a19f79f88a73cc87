"""The PyTorch adapter under torch's distributed tools, on a 2-process gloo group:
``ZeroRedundancyOptimizer(optimizer_class=Adamax)``, ``ZeroAdamax``, DDP and
``torch.distributed.checkpoint``. One launch of ``torch_dist_scenarios.py`` runs every
scenario; each test checks its records from both ranks against one process."""
import json
import socket
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed")

from conftest import REPO_ROOT, run_python, slow

pytestmark = slow

SCRIPT = Path(__file__).resolve().parent / "torch_dist_scenarios.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Per rank, the scenario records of one 2-process run."""
    out = tmp_path_factory.mktemp("torch_dist")
    try:
        done = run_python([SCRIPT, out, free_port()], env={"NUMBA_NUM_THREADS": "1"},
                          timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process scenarios did not finish within 240 s")
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def each(records, scenario):
    for rank, record in enumerate(records):
        assert "error" not in record[scenario], (rank, record[scenario])
        yield record[scenario]


def test_plain_zero_with_default_options_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "plain_defaults"))


def test_zero_adamax_clips_by_the_norm_of_the_whole_group(records):
    for r in each(records, "global_clipnorm"):
        assert r["zero"]["identical"] and r["zero"]["max_diff"] == 0.0
        # Plain ZeroRedundancyOptimizer clips each shard by its own norm (documented).
        assert r["plain"]["max_diff"] > 1e-4


def test_step_counters_never_diverge_when_a_shard_gets_no_gradient(records):
    plain_steps = []
    for r in each(records, "missing_gradient"):
        assert r["zero"]["steps"] == [r["reference_steps"]] == [5]
        assert r["zero"]["identical"]
        plain_steps.append(r["plain"]["steps"])
    assert plain_steps == [[4], [5]]  # plain ZeRO: rank 0 falls behind (documented)


@pytest.mark.parametrize("name", ["plain", "zero"])
def test_zero_load_state_dict_resumes_exactly(records, name):
    for r in each(records, "resume"):
        assert r[name]["restored_steps"] == [3]
        assert r[name]["identical"]


def test_parameters_as_bucket_view_rebinds_and_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "bucket_view"))


def test_flat_through_zero_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "flat"))


def test_nonfinite_skip_skips_on_every_rank(records):
    for r in each(records, "nonfinite_skip"):
        assert r["identical"] and r["steps"] == [r["reference_steps"]] == [4]
        assert r["skipped"] == [1]


def test_nonfinite_raise_raises_the_same_error_on_every_rank(records):
    messages = []
    for r in each(records, "nonfinite_raise"):
        assert r["unchanged"] and r["steps"] == [2]
        messages.append(r["message"])
    assert messages[0] == messages[1]
    assert "param_groups[0]['params'][3]" in messages[0] and "nonfinite='raise'" in messages[0]


def test_dcp_round_trip_with_ddp_resumes_exactly(records):
    for r in each(records, "dcp"):
        assert r["identical"]
        assert r["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_the_zero_ddp_example_runs(tmp_path):
    done = run_python([REPO_ROOT / "examples" / "torch_zero_ddp.py", tmp_path, free_port()],
                      env={"NUMBA_NUM_THREADS": "1"}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed == uninterrupted: True" in done.stdout
