"""The sharded optimizer's checkpoints end to end: save at N ranks, load at M, continue.

* Under MPI (one ``mpiexec -n 4`` launch of ``mpi_resume_scenarios.py``; smaller groups
  are sub-communicators of its first ranks): for every N and M in 1..4 and every
  configuration (plain, EMA with overwrites, an open accumulation window, a sparse
  variable with rows touched in that window, clipping by norm; zero_stage 1, and 0 at
  two ranks), a run saved after 4 calls and continued for 3 after loading equals the
  uninterrupted one-process run bit for bit: params, every slot and the counters. A
  ``na.save_state`` file loads too, and a load into an unbuilt optimizer waits for the
  build. Damaged, foreign and mismatched checkpoints raise ``CheckpointError`` on every
  rank and change nothing; a save that fails between the shards and the manifest leaves
  the previous checkpoint loadable.
* In this process: ``nad.consolidate`` output of every checkpoint continues identically
  in a one-process ``na.Adamax``, and every checkpoint loads through ``SelfComm``.
* Under the CUDA simulator (a child process): float16, float32 and float64 device
  variables (float16 exists on devices only) resume bit for bit, sharded and consolidated.
* Without MPI: ``SelfComm`` save/load (built and unbuilt), refusals of an unbuilt load,
  a save killed between the shards and the manifest, ``NUMBA_ADAMAX_REQUIRE_MPI``.
"""
import json
import subprocess
import sys

import mpi_resume_scenarios as sc
import numpy as np
import pytest
from conftest import REPO_ROOT, mpi_environment, require_mpi, run_python

import numba_adamax as na
from numba_adamax import distributed as nad

SCENARIOS = REPO_ROOT / "tests" / "mpi_resume_scenarios.py"
LAUNCH_RANKS = 4


@pytest.fixture(scope="module")
def launch(warm_cache, tmp_path_factory):
    """OUTDIR of the launch and every rank's records."""
    mpiexec = require_mpi()
    outdir = tmp_path_factory.mktemp("resume")
    proc = subprocess.run([mpiexec, "-n", str(LAUNCH_RANKS), sys.executable, "-m", "mpi4py",
                           str(SCENARIOS), "all", str(outdir)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, env=mpi_environment(),
                          cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return outdir, [json.loads((outdir / f"report-rank{r}.json").read_text())
                    for r in range(LAUNCH_RANKS)]


def expected_names(rank):
    """The record names rank ``rank`` must write, in order of the phases."""
    names = []
    for config, stage, n in sc.saved_checkpoints():
        if rank < n:
            names += [f"save/{sc.checkpoint_name(config, stage, n)}/{what}"
                      for what in ("at_save", "uninterrupted")]
    for m in sc.WORLD_SIZES:
        if rank >= m:
            continue
        for config, stage, n in sc.saved_checkpoints():
            for into in ((1, 0) if m == 2 else (1,)):
                label = f"load/{sc.checkpoint_name(config, stage, n)}/m{m}z{into}"
                names += [label + "/loaded", label + "/continued"]
        for config in sc.CONFIGS:
            names += [f"single/{config}/m{m}/loaded", f"single/{config}/m{m}/continued"]
        for config in ("sparse", "clipnorm"):
            names += [f"unbuilt/{config}/m{m}/loaded", f"unbuilt/{config}/m{m}/continued"]
    names += [f"refuse/{case}" for case in REFUSALS]
    names += ["refuse/other_variables", "refuse/unbuilt_flipped_byte",
              "refuse/crash_before_manifest", "refuse/crash_leaves_files",
              "refuse/crash_previous_loads"]
    return names


#: The loads that must fail, and a word their message must hold.
REFUSALS = {"missing_shard": "missing", "flipped_byte_in_shard": "SHA-256",
            "missing_manifest": "manifest.json", "corrupt_manifest": "SHA-256",
            "foreign_manifest": "another save", "other_use_ema": "use_ema",
            "other_accumulation": "gradient_accumulation_steps",
            "other_use_ema_single_file": "use_ema",
            "no_checkpoint": "no checkpoint"}


def by_name(records):
    return {r["name"]: r for r in records}


@pytest.mark.slow
def test_every_rank_writes_every_record(launch):
    _, per_rank = launch
    for rank, records in enumerate(per_rank):
        assert [r["name"] for r in records] == expected_names(rank)
    loads = {r["name"].split("/")[1:3] and (r["name"].split("/")[1], r["name"].split("/")[2])
             for r in per_rank[0] if r["name"].startswith("load/")}
    pairs = {(int(c.rsplit("-n", 1)[1]), int(m[1])) for c, m in loads}
    assert pairs == {(n, m) for n in sc.WORLD_SIZES for m in sc.WORLD_SIZES}


@pytest.mark.slow
def test_save_at_n_load_at_m_continues_bit_for_bit(launch):
    """Every phase but the refusals: params, every slot and the counters are those of
    the uninterrupted one-process run, on every rank."""
    _, per_rank = launch
    for records in per_rank:
        failed = [(r["name"], r["detail"]) for r in records
                  if not r["name"].startswith("refuse/") and not r["ok"]]
        assert not failed


@pytest.mark.slow
def test_refusals_raise_checkpoint_error_on_every_rank_and_change_nothing(launch):
    _, per_rank = launch
    records = [by_name(r) for r in per_rank]
    for case, word in {**REFUSALS, "other_variables": "names",
                       "unbuilt_flipped_byte": "SHA-256"}.items():
        seen = [r[f"refuse/{case}"] for r in records]
        assert all(s["ok"] for s in seen), (case, [s["detail"] for s in seen])
        errors = [s["error"] for s in seen]
        assert all(e is not None and e[0] == "CheckpointError" for e in errors), (case, errors)
        assert len({e[1] for e in errors}) == 1, (case, errors)
        assert word in errors[0][1], (case, errors[0][1])


@pytest.mark.slow
def test_a_save_failing_before_the_manifest_keeps_the_previous_checkpoint(launch):
    _, per_rank = launch
    for records in map(by_name, per_rank):
        crash = records["refuse/crash_before_manifest"]
        assert crash["ok"] and crash["error"][0] == "OSError"
        assert records["refuse/crash_leaves_files"]["ok"], \
            records["refuse/crash_leaves_files"]["detail"]
        assert records["refuse/crash_previous_loads"]["ok"]


def _continue_and_compare(opt, params, config, label):
    assert not sc.differences(sc.expected(config, sc.SAVE_AT),
                              sc.snapshot(opt, params, config)), label
    sc.continue_single(opt, config, sc.SAVE_AT, sc.MORE)
    problems = sc.differences(sc.expected(config, sc.SAVE_AT + sc.MORE),
                              sc.snapshot(opt, params, config))
    assert not problems, (label, problems)


@pytest.mark.slow
@pytest.mark.parametrize("n", sc.WORLD_SIZES)
def test_consolidated_checkpoints_continue_in_one_process(launch, tmp_path, n):
    outdir, _ = launch
    for config, stage, saved_at in sc.saved_checkpoints():
        if saved_at != n:
            continue
        name = sc.checkpoint_name(config, stage, n)
        before = sc.files_digest(outdir / "ckpt" / name)
        out = tmp_path / f"{name}.npz"
        nad.consolidate(outdir / "ckpt" / name, out)
        assert sc.files_digest(outdir / "ckpt" / name) == before
        params = sc.copies(sc.reference(config, sc.SAVE_AT)[0])
        opt = sc.single(config)
        opt.build(params, names=sc.names(config))
        opt.load_state(out)
        _continue_and_compare(opt, params, config, name)
        # the functional loader reads the same file
        state = na.init(sc.copies(params), names=sc.names(config), **sc.CONFIGS[config])
        na.load_state(state, out)
        assert state.iterations == sc.reference(config, sc.SAVE_AT)[1].iterations


@pytest.mark.slow
@pytest.mark.parametrize("n", sc.WORLD_SIZES)
def test_sharded_checkpoints_load_through_self_comm(launch, n):
    outdir, _ = launch
    for config, stage, saved_at in sc.saved_checkpoints():
        if saved_at != n:
            continue
        params = sc.copies(sc.reference(config, sc.SAVE_AT)[0])
        opt = sc.sharded(nad.SelfComm(), config)
        opt.build(params, names=sc.names(config))
        opt.load_state(outdir / "ckpt" / sc.checkpoint_name(config, stage, n))
        _continue_and_compare(opt, params, config, (config, stage, n))


# ------------------------------------------------------------------ without MPI


@pytest.mark.parametrize("config", ["sparse", "clipnorm"])
def test_self_comm_save_load_continue(tmp_path, config):
    """One rank: save after 4 calls, load into a fresh optimizer (built, and unbuilt),
    continue: the uninterrupted run, bit for bit."""
    comm = nad.SelfComm()
    params = sc.variables(config)
    opt = sc.sharded(comm, config)
    opt.build(params, names=sc.names(config))
    sc.continue_single(opt, config, 0, sc.SAVE_AT)
    opt.save_state(tmp_path / "ckpt")
    for unbuilt in (False, True):
        resumed_params = sc.copies(sc.reference(config, sc.SAVE_AT)[0])
        resumed = sc.sharded(comm, config)
        if unbuilt:
            resumed.load_state(tmp_path / "ckpt")
            assert resumed.iterations == 0  # waits for the build
            resumed.build(resumed_params, names=sc.names(config))
        else:
            resumed.build(resumed_params, names=sc.names(config))
            resumed.load_state(tmp_path / "ckpt")
        _continue_and_compare(resumed, resumed_params, config, ("unbuilt", unbuilt))


def test_unbuilt_load_of_a_damaged_or_mismatched_checkpoint_raises_at_once(tmp_path):
    comm = nad.SelfComm()
    params = sc.variables("plain")
    opt = sc.sharded(comm, "plain")
    opt.build(params, names=sc.NAMES)
    opt.apply(sc.gradient("plain", 0))
    opt.save_state(tmp_path / "ckpt")
    sc.flip(tmp_path / "ckpt" / "shard-00000-of-00001.npz")
    fresh = sc.sharded(comm, "plain")
    with pytest.raises(na.CheckpointError, match="SHA-256"):
        fresh.load_state(tmp_path / "ckpt")
    with pytest.raises(na.CheckpointError, match="no checkpoint"):
        fresh.load_state(tmp_path / "absent")
    other = sc.single("ema")
    other.build(sc.variables("plain"), names=sc.NAMES)
    other.save_state(tmp_path / "ema.npz")
    with pytest.raises(na.CheckpointError, match="use_ema"):
        fresh.load_state(tmp_path / "ema.npz")
    fresh_params = sc.variables("plain")
    fresh.build(fresh_params, names=sc.NAMES)  # nothing pending: a fresh state
    assert fresh.iterations == 0
    assert not np.any(fresh.gather_slot("matrix", "m"))


def test_missing_mpi_skips_or_fails_as_numba_adamax_require_mpi_says(monkeypatch):
    import conftest
    monkeypatch.setattr(conftest, "MPIEXEC", None)
    monkeypatch.setenv("NUMBA_ADAMAX_REQUIRE_MPI", "1")
    with pytest.raises(pytest.fail.Exception, match="MPI tests cannot run"):
        conftest.require_mpi()
    monkeypatch.setenv("NUMBA_ADAMAX_REQUIRE_MPI", "0")
    with pytest.raises(pytest.skip.Exception, match="mpi4py"):
        conftest.require_mpi()


class _Killed(BaseException):
    """Stands for the process dying: nothing of the save's own clean-up runs."""


def test_a_save_killed_between_shards_and_manifest_leaves_the_previous_checkpoint(
        tmp_path, monkeypatch):
    from numba_adamax.distributed import _checkpoint_files as files
    comm = nad.SelfComm()
    params = sc.variables("accumulate")
    opt = sc.sharded(comm, "accumulate")
    opt.build(params, names=sc.NAMES)
    sc.continue_single(opt, "accumulate", 0, sc.SAVE_AT)
    opt.save_state(tmp_path / "ckpt")
    saved = sc.files_digest(tmp_path / "ckpt")
    sc.continue_single(opt, "accumulate", sc.SAVE_AT, 1)

    def killed(*args):
        raise _Killed

    monkeypatch.setattr(files, "write_manifest", killed)
    with pytest.raises(_Killed):
        opt.save_state(tmp_path / "ckpt")
    monkeypatch.undo()
    leftover = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftover) == 1 and [p.name for p in leftover[0].iterdir()] == [
        "shard-00000-of-00001.npz"]
    assert sc.files_digest(tmp_path / "ckpt") == saved
    resumed_params = sc.copies(sc.reference("accumulate", sc.SAVE_AT)[0])
    resumed = sc.sharded(comm, "accumulate")
    resumed.build(resumed_params, names=sc.NAMES)
    with pytest.raises(na.CheckpointError, match="manifest.json"):
        resumed.load_state(leftover[0])
    resumed.load_state(tmp_path / "ckpt")
    _continue_and_compare(resumed, resumed_params, "accumulate", "previous checkpoint")
    opt.save_state(tmp_path / "ckpt")  # the next save replaces it despite the leftover
    assert sc.files_digest(tmp_path / "ckpt") != saved


@pytest.mark.slow
def test_device_variables_of_every_dtype_resume_bit_for_bit(tmp_path):
    """float16 (device only), float32 and float64 CUDA variables under the simulator:
    the sharded checkpoint and its consolidated file both continue as the uninterrupted
    one-process run."""
    pytest.importorskip("numba.cuda", reason="needs numba-cuda")
    done = run_python([str(SCENARIOS), "device", str(tmp_path)],
                      env={"NUMBA_ENABLE_CUDASIM": "1", "NUMBA_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "device.json").read_text()) == []


def test_an_unbuilt_load_is_applied_by_the_first_apply(tmp_path):
    """Built by ``apply`` (default names) on both sides: the pending checkpoint is loaded
    before the first call's update, which then equals call SAVE_AT + 1 of one process."""
    comm = nad.SelfComm()
    params = sc.variables("accumulate")
    opt = sc.sharded(comm, "accumulate")
    for t in range(sc.SAVE_AT):
        opt.apply(sc.gradient("accumulate", t), params)
    opt.save_state(tmp_path / "ckpt")
    resumed_params = sc.copies(sc.reference("accumulate", sc.SAVE_AT)[0])
    resumed = sc.sharded(comm, "accumulate")
    resumed.load_state(tmp_path / "ckpt")
    for t in range(sc.SAVE_AT, sc.SAVE_AT + 2):  # completes the open window: an update
        resumed.apply(sc.gradient("accumulate", t), resumed_params)
    want_params, want = sc.reference("accumulate", sc.SAVE_AT + 2)
    assert resumed.iterations == want.iterations == 2
    for variable, expected_variable, name in zip(resumed_params, want_params, sc.NAMES):
        assert variable.tobytes() == expected_variable.tobytes(), name
        for slot in ("m", "u", "accumulator"):
            assert resumed.gather_slot(variable, slot).tobytes() == \
                want.get_slot(name, slot).tobytes(), (name, slot)
