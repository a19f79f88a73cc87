"""The PyTorch adapter under torch's distributed tools.

On a 2-process gloo group (slow): ``ZeroRedundancyOptimizer(optimizer_class=Adamax)``,
``ZeroAdamax``, DDP and ``torch.distributed.checkpoint``; one launch of
``torch_dist_scenarios.py`` runs every scenario, and each test checks its records from
both ranks against one process. On a 1-process group in this process (quick):
``ZeroAdamax`` equals ``Adamax`` bit for bit, its refusals, and its state dicts."""
import json
import socket
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
dist = pytest.importorskip("torch.distributed")

from conftest import REPO_ROOT, run_python, slow

from numba_adamax.integrations.torch import Adamax, ZeroAdamax

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


@slow
def test_plain_zero_with_default_options_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "plain_defaults"))


@slow
def test_zero_adamax_clips_by_the_norm_of_the_whole_group(records):
    for r in each(records, "global_clipnorm"):
        assert r["zero"]["identical"] and r["zero"]["max_diff"] == 0.0
        # Plain ZeroRedundancyOptimizer clips each shard by its own norm (documented).
        assert r["plain"]["max_diff"] > 1e-4


@slow
def test_step_counters_never_diverge_when_a_shard_gets_no_gradient(records):
    plain_steps = []
    for r in each(records, "missing_gradient"):
        assert r["zero"]["steps"] == [r["reference_steps"]] == [5]
        assert r["zero"]["identical"]
        plain_steps.append(r["plain"]["steps"])
    assert plain_steps == [[4], [5]]  # plain ZeRO: rank 0 falls behind (documented)


@slow
@pytest.mark.parametrize("name", ["plain", "zero"])
def test_zero_load_state_dict_resumes_exactly(records, name):
    for r in each(records, "resume"):
        assert r[name]["restored_steps"] == [3]
        assert r[name]["identical"]


@slow
def test_parameters_as_bucket_view_rebinds_and_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "bucket_view"))


@slow
def test_flat_through_zero_equals_one_process(records):
    assert all(r["identical"] for r in each(records, "flat"))


@slow
def test_nonfinite_skip_skips_on_every_rank(records):
    for r in each(records, "nonfinite_skip"):
        assert r["identical"] and r["steps"] == [r["reference_steps"]] == [4]
        assert r["skipped"] == [1]


@slow
def test_nonfinite_raise_raises_the_same_error_on_every_rank(records):
    messages = []
    for r in each(records, "nonfinite_raise"):
        assert r["unchanged"] and r["steps"] == [2]
        messages.append(r["message"])
    assert messages[0] == messages[1]
    assert "param_groups[0]['params'][3]" in messages[0] and "nonfinite='raise'" in messages[0]


@slow
def test_a_failure_on_one_rank_raises_on_every_rank_and_changes_nothing(records):
    seen = []
    for r in each(records, "rank_failure"):
        assert r["unchanged"] and r["steps"] == [2]
        seen.append(r["error_seen"])
    assert seen[0].startswith("RuntimeError") and "another rank" in seen[0]
    assert seen[1].startswith("ValueError") and "not contiguous" in seen[1]


@slow
def test_dcp_round_trip_with_ddp_resumes_exactly(records):
    for r in each(records, "dcp"):
        assert r["identical"]
        assert r["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@slow
def test_the_zero_ddp_example_runs(tmp_path):
    done = run_python([REPO_ROOT / "examples" / "torch_zero_ddp.py", tmp_path, free_port()],
                      env={"NUMBA_NUM_THREADS": "1"}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed == uninterrupted: True" in done.stdout


# ----------------------------------------------------------------- one process, in process

@pytest.fixture(scope="module")
def group():
    """A 1-process gloo group in this process, destroyed afterwards."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g))
            for shape in ((6, 4), (4,), (3, 3))]


def _feed(params, step, missing=()):
    g = torch.Generator().manual_seed(50 + step)
    for k, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g) * 4
        p.grad = None if k in missing else grad


@pytest.mark.parametrize("options", [
    {"lr": 0.05, "global_clipnorm": 0.5},
    {"lr": 0.05, "global_clipnorm": 0.5, "use_ema": True, "gradient_accumulation_steps": 2},
    {"lr": 0.05, "nonfinite": "skip", "clipnorm": 1.0, "flat": True},
], ids=["global_clipnorm", "accumulation_ema", "skip_flat"])
def test_zero_adamax_on_one_process_equals_adamax(group, options):
    params, twins = _params(), _params()
    zero, plain = ZeroAdamax(params, **options), Adamax(twins, **options)
    for step in range(6):
        missing = (0,) if step == 2 else ()
        _feed(params, step, missing)
        _feed(twins, step, missing)
        zero.step()
        plain.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        for key, value in plain.state[q].items():
            assert torch.equal(zero.optim.state[p][key], value)


@pytest.mark.parametrize("key", ["optimizer_class", "overlap_with_ddp"])
def test_zero_adamax_refuses_another_local_optimizer(group, key):
    with pytest.raises(TypeError, match=key):
        ZeroAdamax(_params(), **{key: True})


def test_zero_adamax_errors_change_nothing(group):
    params = _params()
    zero = ZeroAdamax(params, lr=0.05, nonfinite="raise")
    _feed(params, 0)
    zero.step()
    before = [p.detach().clone() for p in params], {
        id(p): {k: v.clone() for k, v in zero.optim.state[p].items()} for p in params}
    _feed(params, 1)
    params[1].grad[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        zero.step()
    _feed(params, 1)
    params[0].grad = torch.randn(4, 6).t()
    with pytest.raises(ValueError, match="not contiguous"):
        zero.step()
    for p, q in zip(params, before[0]):
        assert torch.equal(p, q)
        for k, v in before[1][id(p)].items():
            assert torch.equal(zero.optim.state[p][k], v)


def test_zero_adamax_state_dict_on_every_rank_and_names_as_ids(group):
    params = _params()
    zero = ZeroAdamax(params, lr=0.05, use_ema=True)
    for step in range(3):
        _feed(params, step)
        zero.step()
    zero.consolidate_state_dict(to=None)
    saved = zero.state_dict()
    names = ["a", "b", "c"]
    by_name = {"state": {names[i]: entry for i, entry in saved["state"].items()},
               "param_groups": [{**saved["param_groups"][0], "params": names}]}
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = ZeroAdamax(twins, lr=0.05, use_ema=True)
    resumed.load_state_dict(by_name)
    assert list(by_name["state"]) == names  # the argument is not modified
    for step in range(3, 5):
        _feed(params, step)
        _feed(twins, step)
        zero.step()
        resumed.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
