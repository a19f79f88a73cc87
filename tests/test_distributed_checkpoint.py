"""Sharded checkpoints: save at N ranks, load at any M, consolidate to one file.

* Under MPI (one ``mpiexec -n N`` launch per N in 1..4, ``mpi_checkpoint_scenarios.py``):
  random uneven layouts saved at N load exactly at every M in 1..4; a missing or
  corrupted shard, a missing, corrupted or foreign manifest and a mismatch seen by
  ``expect`` on one rank raise on every rank with nothing changed; a save whose manifest
  write fails keeps the previous checkpoint; bad arguments on one rank raise on all.
* In this process (``SelfComm``): the checkpoints of those launches load at one rank,
  opening only the shard files that hold requested elements; ``consolidate`` output
  loads with ``na.load_state`` into a one-process state equal bit for bit to the one
  the shards were cut from; a ``na.save_state`` file loads sliced; every refusal names
  its argument and writes nothing.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import mpi_checkpoint_scenarios as sc
import numpy as np
import pytest
from conftest import REPO_ROOT, assert_unchanged, bit_identical, require_mpi, snapshot_state

import numba_adamax as na
from numba_adamax import _checkpoint as single_file
from numba_adamax.distributed import SelfComm, consolidate
from numba_adamax.distributed import _checkpoint as sharded
from numba_adamax.distributed import _checkpoint_files as shard_files
from numba_adamax.distributed._checkpoint import Piece

WORLD_SIZES = (1, 2, 3, 4)
SELF = SelfComm()


# ============================================================================ a real state

REAL_NAMES = ["table", "bias", "nothing", "dense"]


def real_variables():
    return [np.linspace(-1, 1, 36, dtype=np.float32).reshape(12, 3),
            np.arange(5, dtype=np.float64) / 7, np.zeros(0, np.float32),
            np.cos(np.arange(300, dtype=np.float64)).reshape(15, 20)]


def real_calls(count):
    calls = []
    for k in range(count):
        rng = np.random.default_rng(50 + k)
        rows = rng.integers(0, 12, size=4)
        calls.append([na.IndexedSlices(rng.standard_normal((4, 3)).astype(np.float32), rows),
                      rng.standard_normal(5), np.zeros(0, np.float32),
                      rng.standard_normal((15, 20))])
    return calls


def real_state(calls=4):
    """A one-process state after ``calls`` steps: EMA, accumulation over 3 calls (an open
    window with sparse rows touched), weight decay; and its variables."""
    params = real_variables()
    state = na.init(params, names=REAL_NAMES, learning_rate=0.01, use_ema=True,
                    gradient_accumulation_steps=3, weight_decay=0.01)
    for grads in real_calls(calls):
        na.step(params, grads, state)
    return params, state


def fresh_state(params):
    return na.init(params, names=REAL_NAMES, learning_rate=0.01, use_ema=True,
                   gradient_accumulation_steps=3, weight_decay=0.01)


# ============================================================================ the launches

#: The tests that read the launches' files (skipped without mpi4py/mpiexec, failed then
#: under NUMBA_ADAMAX_REQUIRE_MPI=1: ``launches`` calls ``require_mpi``).
needs_mpi = pytest.mark.usefixtures("launches")


@pytest.fixture(scope="module")
def state():
    return real_state()


@pytest.fixture(scope="module")
def launches(tmp_path_factory, state):
    """OUTDIR after the launches at 1, 2, 3 and 4 ranks, and every rank's report."""
    mpiexec = require_mpi()
    outdir = tmp_path_factory.mktemp("mpi")
    na.save_state(state[1], outdir / "state.npz")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    reports = {}
    for n in WORLD_SIZES:
        proc = subprocess.run(
            [mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py",
             str(REPO_ROOT / "tests" / "mpi_checkpoint_scenarios.py"), "all", str(outdir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, env=env,
            cwd=REPO_ROOT, check=False)
        assert proc.returncode == 0, f"{n} ranks:\n{proc.stdout}\n{proc.stderr}"
        reports[n] = [json.loads((outdir / f"report-{n}-rank{r}.json").read_text())
                      for r in range(n)]
    return outdir, reports


def _agreed(reports, case):
    """The one outcome every rank of a launch saw for ``case``."""
    outcomes = [report[case] for report in reports]
    assert all(o == outcomes[0] for o in outcomes), (case, outcomes)
    return outcomes[0]


@needs_mpi
def test_every_save_world_size_loads_exactly_at_every_load_world_size(launches):
    _, reports = launches
    pairs = set()
    for n, ranks in reports.items():
        for report in ranks:
            assert report["layouts"] == "ok" and report["crash"] == "ok"
            assert report["saved"] == [f"synth-{n}", f"e2e-{n}"]
        pairs |= {tuple(p) for p in ranks[0]["loaded"]}
    assert pairs == {(n, m) for n in WORLD_SIZES for m in WORLD_SIZES}


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_the_layouts_are_uneven_split_and_leave_a_rank_empty(n):
    layout = sc.save_layout(n, seed=100 + n)
    held = {(p.variable, p.begin, p.end) for pieces in layout for p in pieces if p.end > p.begin}
    split = [v for v in range(len(sc.NAMES))
             if len({r for r, ps in enumerate(layout) for p in ps
                     if p.variable == v and p.end > p.begin}) > 1]
    assert (split != []) == (n > 1)
    assert (n < 3) or layout[-1] == []
    assert len(held) > len(sc.NAMES)  # variables cut in several pieces


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_sharded_checkpoints_load_at_one_rank(launches, n):
    outdir, _ = launches
    everything = [Piece(v, 0, size) for v, size in enumerate(sc.sizes())]
    for pieces in (everything, sc.load_layout(1, seed=9)[0]):
        result = sharded.load(outdir / f"synth-{n}", SELF, pieces=pieces, expect=lambda h: None)
        sc.check_loaded(result, pieces, sc.reference_slots(), sc.reference_whole(),
                        sc.synthetic_header(n))


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_consolidated_checkpoint_loads_into_one_process_bit_for_bit(launches, state, tmp_path, n):
    outdir, _ = launches
    params, saved = state
    out = tmp_path / "one.npz"
    before = sc.files_digest(outdir / f"e2e-{n}")
    consolidate(outdir / f"e2e-{n}", out)
    assert sc.files_digest(outdir / f"e2e-{n}") == before
    resumed_params = [p.copy() for p in params]
    resumed = fresh_state(resumed_params)
    na.load_state(resumed, out)
    assert_unchanged(snapshot_state(saved, params), snapshot_state(resumed, resumed_params),
                     f"consolidated from {n} ranks")
    # the class loads it too
    opt = na.Adamax(learning_rate=0.01, use_ema=True, gradient_accumulation_steps=3,
                    weight_decay=0.01)
    opt.build([p.copy() for p in params], names=REAL_NAMES)
    opt.load_state(out)
    assert (opt.iterations, opt.state.raw_steps) == (saved.iterations, saved.raw_steps)
    assert all(bit_identical(a, b) for a, b in zip(opt.state.state_arrays(),
                                                   saved.state_arrays(), strict=True))
    assert [opt.state.touched(i).tolist() for i in range(4)] == \
        [saved.touched(i).tolist() for i in range(4)]
    # and the same file as a one-process save of that state would be, field by field
    want, got = saved.state_dict(), single_file.read(out)
    assert {k: v for k, v in got.items() if k != "slots"} == \
        {k: v for k, v in want.items() if k != "slots"}
    assert all(bit_identical(a, b) for a, b in zip(got["slots"], want["slots"], strict=True))
    # the resumed trajectory is the uninterrupted one
    uninterrupted_params, uninterrupted = real_state(calls=6)
    for grads in real_calls(6)[4:]:
        na.step(resumed_params, grads, resumed)
    assert_unchanged(snapshot_state(uninterrupted, uninterrupted_params),
                     snapshot_state(resumed, resumed_params), "resumed")


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_consolidated_synthetic_checkpoint_is_the_reference(launches, tmp_path, n):
    outdir, _ = launches
    consolidate(outdir / f"synth-{n}", tmp_path / "one.npz")
    d = single_file.read(tmp_path / "one.npz")
    header = sc.synthetic_header(n)
    for field in ("config", "raw_steps", "iterations", "skipped_steps", "names", "shapes",
                  "dtypes"):
        assert d[field] == header[field], field
    reference = sc.reference_slots()
    per_name = sc.single_file_slots(d)
    for name in sc.SLOT_NAMES:
        for v, shape in enumerate(sc.SHAPES):
            assert bit_identical(per_name[name][v], reference[name][v].reshape(shape))
    assert d["touched_rows"] == [sc.TOUCHED.get(v, []) for v in range(len(sc.NAMES))]


def _opened_shards(monkeypatch):
    opened = []
    read = single_file.read_signed_digest

    def spy(path):
        opened.append(os.path.basename(path))
        return read(path)

    monkeypatch.setattr(single_file, "read_signed_digest", spy)
    return opened


@needs_mpi
def test_only_the_overlapping_shard_files_are_opened(launches, tmp_path, monkeypatch):
    outdir, _ = launches
    copy = tmp_path / "synth-4"
    shutil.copytree(outdir / "synth-4", copy)
    manifest = shard_files.read_manifest(str(copy))
    long = sc.NAMES.index("long")
    fragment = next(f for f in manifest["fragments"] if f["variable"] == long)
    pieces = [Piece(long, fragment["begin"], fragment["end"])]
    files = {s["file"] for s in manifest["shards"]}
    assert len(files) == 4
    for name in files - {fragment["file"]}:
        (copy / name).unlink()
    opened = _opened_shards(monkeypatch)
    result = sharded.load(copy, SELF, pieces=pieces, expect=lambda h: None)
    sc.check_loaded(result, pieces, sc.reference_slots(), sc.reference_whole(),
                    sc.synthetic_header(4))
    assert opened == [fragment["file"]]
    # a piece that needs a deleted file is refused
    everything = [Piece(long, 0, sc.sizes()[long])]
    with pytest.raises(na.CheckpointError, match=r"Shard 'shard-0000\d-of-00004.npz' .* missing"):
        sharded.load(copy, SELF, pieces=everything, expect=lambda h: None)


# ============================================================================ failures under MPI

ERRORS = {
    "missing shard": (na.CheckpointError, (r"Shard 'shard-\d+-of-\d+\.npz' of the checkpoint .* "
                                          r"is missing")),
    "flipped shard": (na.CheckpointError, r"failed its SHA-256 check"),
    "missing manifest": (na.CheckpointError, r"has no manifest\.json"),
    "corrupt manifest": (na.CheckpointError, r"manifest\.json' failed its SHA-256 check"),
    "foreign manifest": (na.CheckpointError, r"does not match the manifest's SHA-256"),
    "other tool's manifest": (na.CheckpointError, r"failed its SHA-256 check"),
    "expect refuses on the last rank": (ValueError, r"zero_stage=2, the checkpoint 1"),
}


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_a_bad_checkpoint_raises_on_every_rank_and_changes_nothing(launches, n):
    _, reports = launches
    for case, (kind, match) in ERRORS.items():
        outcome = _agreed(reports[n], case)
        assert outcome != "ok", case
        assert outcome[0] == kind.__name__, (case, outcome)
        assert re.search(match, outcome[1]), (case, outcome)
        if n > 1:
            assert outcome[1].startswith("rank "), outcome  # which rank found it


ARGUMENTS = {
    "slot of the wrong length": ("ValueError", r"`slots`\['u'\]\[\d+\] .* has shape"),
    "a piece missing": ("ValueError", r"`pieces` of all ranks do not cover variable"),
    "a piece held twice": ("ValueError", r"`pieces` of all ranks overlap on variable"),
    "wrong world size": ("ValueError", r"`header`\['world_size'\] is \d, but the communicator"),
    "not a Piece": ("TypeError", r"`pieces`\[0\] must be a Piece"),
    "the header differs": ("ValueError", r"`header` differs between rank 0 and rank \d"),
    "whole array given twice": ("ValueError", r"`whole`\[0\] is given by ranks 0 and 1"),
}


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_bad_arguments_on_one_rank_raise_on_every_rank_and_write_nothing(launches, n):
    _, reports = launches
    cases = [c for c in ARGUMENTS if n > 1 or c not in ("the header differs",
                                                         "whole array given twice")]
    for case in cases:
        kind, match = ARGUMENTS[case]
        outcome = _agreed(reports[n], case)
        assert outcome != "ok" and outcome[0] == kind, (case, outcome)
        assert re.search(match, outcome[1]), (case, outcome)


@needs_mpi
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_a_failed_manifest_write_raises_on_every_rank(launches, n):
    _, reports = launches
    assert _agreed(reports[n], "manifest write fails")[0] == "OSError"
    assert "simulated crash before the manifest" in _agreed(reports[n], "manifest write fails")[1]


# ============================================================================ one process

def _synthetic(path, seed=0, raw_steps=7, pieces=None, whole=None, **changes):
    pieces = sc.save_layout(1, seed=100)[0] if pieces is None else pieces
    header = {**sc.synthetic_header(1, raw_steps), **changes}
    sharded.save(path, SELF, header=header, pieces=pieces,
                 slots=sc.slices(sc.reference_slots(seed), pieces, sc.SLOT_NAMES),
                 whole=sc.reference_whole() if whole is None else whole)


def _load_everything(path, seed=0, raw_steps=7, expect=None):
    pieces = [Piece(v, 0, size) for v, size in enumerate(sc.sizes())]
    result = sharded.load(path, SELF, pieces=pieces, expect=expect or (lambda h: None))
    sc.check_loaded(result, pieces, sc.reference_slots(seed), sc.reference_whole(),
                    sc.synthetic_header(1, raw_steps))
    return result


def test_round_trip_at_one_rank_is_exact_and_the_layout_is_documented(tmp_path):
    _synthetic(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["manifest.json", "shard-00000-of-00001.npz"]
    _load_everything(tmp_path / "ckpt")
    text = (tmp_path / "ckpt" / "manifest.json").read_bytes()
    body, trailer = text.rsplit(b"\nsha256=", 1)
    assert trailer == hashlib.sha256(body + b"\n").hexdigest().encode() + b"\n"
    manifest = json.loads(body)
    assert manifest["header"] == sc.synthetic_header(1)
    shard = tmp_path / "ckpt" / "shard-00000-of-00001.npz"
    assert manifest["shards"] == [{"file": shard.name, "rank": 0,
                                   "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}]
    with np.load(shard, allow_pickle=False) as archive:  # a plain .npz, no pickle
        metadata = json.loads(archive["metadata"].tobytes())
        for fragment in manifest["fragments"]:
            v, name = fragment["variable"], fragment["slot"]
            want = sc.reference_slots()[name][v][fragment["begin"]:fragment["end"]]
            assert bit_identical(archive[fragment["member"]], want)
    assert metadata["token"] == manifest["token"] and metadata["rank"] == 0
    assert {(f["slot"], f["variable"]) for f in manifest["fragments"]} == {
        (s, v) for s in sc.SLOT_NAMES for v, size in enumerate(sc.sizes()) if size}


def test_expect_sees_the_header_and_its_refusal_is_raised(tmp_path):
    _synthetic(tmp_path / "ckpt")
    seen = []
    _load_everything(tmp_path / "ckpt", expect=seen.append)
    assert seen == [sc.synthetic_header(1)]
    for kind in (TypeError, ValueError):
        def refuse(header, kind=kind):
            raise kind(f"names {header['names'][:2]} do not match")
        with pytest.raises(kind, match=r"names \['table', 'empty'\] do not match"):
            sharded.load(tmp_path / "ckpt", SELF, pieces=[], expect=refuse)


def test_a_single_file_checkpoint_loads_sliced(tmp_path, state):
    _, saved = state
    na.save_state(saved, tmp_path / "one.npz")
    d = saved.state_dict()
    full = sc.single_file_slots(d)
    whole = {v: {"touched_rows": np.array(r, np.int64)} for v, r in enumerate(d["touched_rows"])
             if r}
    assert sorted(whole) == [0, 1, 3]  # sparse rows of the table, dense bias and matrix
    seen = []
    for seed in range(3):
        pieces = sc.load_layout(1, seed=seed, sizes_=sc.sizes(d["shapes"]))[0]
        result = sharded.load(tmp_path / "one.npz", SELF, pieces=pieces, expect=seen.append)
        sc.check_loaded(result, pieces, full, whole, {**sc.header_of(d, 1), "zero_stage": 0})
    assert seen[0]["world_size"] == 1 and seen[0]["slot_names"] == ["m", "u", "ema",
                                                                    "accumulator"]


def test_returned_arrays_are_new(tmp_path):
    _synthetic(tmp_path / "ckpt")
    _, first, whole = _load_everything(tmp_path / "ckpt")
    for arrays in first.values():
        for a in arrays:
            a[...] = 0
    whole[0]["touched_rows"][...] = 0
    _load_everything(tmp_path / "ckpt")


# ---------------------------------------------------------------- refused checkpoints

def _resign_manifest(path, change):
    text = (path / "manifest.json").read_bytes()
    body = json.loads(text.rsplit(b"\nsha256=", 1)[0])
    change(body)
    data = json.dumps(body, indent=1).encode() + b"\n"
    (path / "manifest.json").write_bytes(data + b"sha256=" + hashlib.sha256(data).hexdigest()
                                         .encode() + b"\n")


def _flip_at(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _set(key, value):
    return lambda body: body.__setitem__(key, value)


SHARD = "shard-00000-of-00001.npz"
BAD_CHECKPOINTS = [
    ("no manifest", lambda p: (p / "manifest.json").unlink(), r"has no manifest\.json"),
    ("empty manifest", lambda p: (p / "manifest.json").write_bytes(b""), r"SHA-256"),
    ("truncated manifest", lambda p: (p / "manifest.json").write_bytes(
        (p / "manifest.json").read_bytes()[:-10]), r"SHA-256"),
    ("manifest byte", lambda p: _flip_at(p / "manifest.json", 200), r"SHA-256"),
    ("manifest digest", lambda p: _flip_at(p / "manifest.json", -3), r"SHA-256"),
    ("no shard", lambda p: (p / SHARD).unlink(), r"missing"),
    ("shard byte", lambda p: _flip_at(p / SHARD, 1000), r"failed its SHA-256 check"),
    ("shard truncated", lambda p: (p / SHARD).write_bytes((p / SHARD).read_bytes()[:-100]),
     r"truncated"),
    ("shard of another save", lambda p: shutil.copyfile(p.parent / "other" / SHARD, p / SHARD),
     r"does not match the manifest's SHA-256"),
    ("manifest of another save",
     lambda p: shutil.copyfile(p.parent / "other" / "manifest.json", p / "manifest.json"),
     r"does not match the manifest's SHA-256"),
    ("wrong magic", lambda p: _resign_manifest(p, _set("magic", "other.tool")), r"wrong magic"),
    ("format 2", lambda p: _resign_manifest(p, _set("format_version", 2)),
     r"format_version is 2; this version of numba_adamax reads 1"),
    ("bad header", lambda p: _resign_manifest(p, lambda b: b["header"].__setitem__(
        "iterations", 5)), r"header\['iterations'\] is 5, inconsistent"),
    ("a fragment fewer", lambda p: _resign_manifest(p, lambda b: b["fragments"].pop()),
     r"the fragments do not cover slot"),
    ("a shard fewer", lambda p: _resign_manifest(p, _set("shards", [])), r"shards must list"),
    ("other token", lambda p: _resign_manifest(p, _set("token", "0" * 16)),
     r"does not describe itself as the manifest describes it"),
    ("fragment of a missing file", lambda p: _resign_manifest(
        p, lambda b: b["fragments"][0].__setitem__("file", "shard-00003-of-00004.npz")),
     r"the file is not one of the shards"),
    ("member renamed", lambda p: _resign_manifest(
        p, lambda b: b["fragments"][0].__setitem__("member", "f999999")),
     r"does not describe itself"),
    ("an unsigned plain directory", lambda p: [f.unlink() for f in p.iterdir()],
     r"has no manifest\.json"),
]


@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_is_refused_and_nothing_changes(tmp_path, case):
    _, damage, match = case
    _synthetic(tmp_path / "ckpt")
    _synthetic(tmp_path / "other")  # the same content, another save
    damage(tmp_path / "ckpt")
    before = sc.files_digest(tmp_path)
    pieces = [Piece(v, 0, size) for v, size in enumerate(sc.sizes())]
    with pytest.raises(na.CheckpointError, match=match):
        sharded.load(tmp_path / "ckpt", SELF, pieces=pieces, expect=lambda h: None)
    with pytest.raises(na.CheckpointError, match=match):
        consolidate(tmp_path / "ckpt", tmp_path / "one.npz")
    assert sc.files_digest(tmp_path) == before


def test_every_manifest_byte_is_checked(tmp_path):
    _synthetic(tmp_path / "ckpt", pieces=[Piece(v, 0, s) for v, s in enumerate(sc.sizes())])
    path = tmp_path / "ckpt" / "manifest.json"
    data = path.read_bytes()
    for offset in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[offset] ^= 0x20
        path.write_bytes(bytes(flipped))
        with pytest.raises(na.CheckpointError):
            shard_files.read_manifest(str(tmp_path / "ckpt"))
    path.write_bytes(data)
    _load_everything(tmp_path / "ckpt")


def test_missing_path_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(na.CheckpointError, match="There is no checkpoint at"):
        sharded.load(tmp_path / "absent", SELF, pieces=[], expect=lambda h: None)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(na.CheckpointError, match="not a numba_adamax checkpoint"):
        sharded.load(tmp_path / "plain.npz", SELF, pieces=[], expect=lambda h: None)
    with pytest.raises(na.CheckpointError, match="There is no checkpoint at"):
        consolidate(tmp_path / "absent", tmp_path / "one.npz")
    assert sorted(os.listdir(tmp_path)) == ["plain.npz"]


# ---------------------------------------------------------------- crash, overwrite

def _dies(exc):
    def write_manifest(*args, **kwargs):
        raise exc
    return write_manifest


def test_a_failed_manifest_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _synthetic(tmp_path / "ckpt")
    before = sc.files_digest(tmp_path)
    monkeypatch.setattr(shard_files, "write_manifest", _dies(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    assert sc.files_digest(tmp_path) == before  # no temporary directory either
    _load_everything(tmp_path / "ckpt")


def test_a_crash_between_shards_and_manifest_keeps_the_previous_checkpoint(tmp_path,
                                                                          monkeypatch):
    """A process killed there cleans nothing up: its temporary directory, holding the
    shards without a manifest, stays next to the checkpoint, which still loads; the next
    save succeeds."""
    _synthetic(tmp_path / "ckpt")
    monkeypatch.setattr(shard_files, "write_manifest", _dies(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    monkeypatch.undo()
    leftover = [p for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert [p.name.startswith(".ckpt.tmp-") for p in leftover] == [True]
    assert sorted(os.listdir(leftover[0])) == [SHARD]
    _load_everything(tmp_path / "ckpt")
    with pytest.raises(na.CheckpointError, match="has no manifest"):
        _load_everything(leftover[0])
    _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    _load_everything(tmp_path / "ckpt", seed=5, raw_steps=10)


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic exchange", "two renames"])
def test_saving_over_a_checkpoint_replaces_it(tmp_path, monkeypatch, exchange):
    _synthetic(tmp_path / "ckpt")
    if not exchange:
        monkeypatch.setattr(shard_files, "exchange", lambda a, b: False)
    _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    _load_everything(tmp_path / "ckpt", seed=5, raw_steps=10)


def test_the_commit_is_one_atomic_exchange_on_linux(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").touch()
    if not shard_files.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this system or file system cannot exchange two directories atomically")
    assert os.listdir(tmp_path / "b") == ["x"] and os.listdir(tmp_path / "a") == []
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    _synthetic(tmp_path / "ckpt")
    renames = []
    monkeypatch.setattr(shard_files.os, "rename", lambda *a: renames.append(a))
    _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    assert renames == []  # neither moved aside nor missing at any moment
    _load_everything(tmp_path / "ckpt", seed=5, raw_steps=10)


# ---------------------------------------------------------------- bad arguments

def _save_call(path="ckpt", comm=SELF, header=None, pieces=None, slots=None, whole=None,
               seed=0):
    """save's arguments for the synthetic checkpoint with one-rank pieces, changed."""
    pieces = sc.save_layout(1, seed=100)[0] if pieces is None else pieces
    return {"path": path, "comm": comm, "header": header or sc.synthetic_header(1),
            "pieces": pieces, "whole": whole,
            "slots": slots or sc.slices(sc.reference_slots(seed), pieces, sc.SLOT_NAMES)}


def _slots_with(name, change):
    pieces = sc.save_layout(1, seed=100)[0]
    slots = sc.slices(sc.reference_slots(), pieces, sc.SLOT_NAMES)
    i = sc.first_full(pieces)
    slots[name][i] = change(slots[name][i])
    return slots


def _header(**changes):
    return {**sc.synthetic_header(1), **changes}


def _without(key):
    return {k: v for k, v in sc.synthetic_header(1).items() if k != key}


BAD_SAVES = [
    ("path int", {"path": 3}, TypeError, r"`path` must be a str or an os\.PathLike"),
    ("path bytes", {"path": b"ckpt"}, TypeError, r"`path` must be a str"),
    ("path a file", {"path": "afile"}, ValueError, r"`path` .* exists and is not a directory"),
    ("path a foreign dir", {"path": "foreign"}, ValueError,
     r"`path` .* is a directory that is not a numba_adamax checkpoint \(it holds \['notes.txt'\]"),
    ("parent missing", {"path": "absent/ckpt"}, ValueError,
     r"`path`: the directory .*absent' that should hold the checkpoint does not exist"),
    ("comm", {"comm": "world"}, TypeError, (r"`comm` must be a numba_adamax.distributed "
                                            r"communicator")),
    ("header list", {"header": [1]}, TypeError, r"`header` must be a dict of JSON values"),
    ("header missing", {"header": _without("zero_stage")}, ValueError,
     r"`header` lacks the fields \['zero_stage'\]"),
    ("header not JSON", {"header": _header(extra=np.zeros(2))}, TypeError,
     r"`header` must hold JSON values only"),
    ("header NaN", {"header": _header(extra=float("nan"))}, ValueError, r"JSON values only"),
    ("header iterations", {"header": _header(iterations=3)}, ValueError,
     r"`header`\['iterations'\] is 3, inconsistent with raw_steps=7"),
    ("header raw steps", {"header": _header(raw_steps=-1)}, ValueError,
     r"`header`\['raw_steps'\] must be an integer >= 0"),
    ("header slot names", {"header": _header(slot_names=["m", "u", "ema"])}, ValueError,
     (r"`header`\['slot_names'\] is \['m', 'u', 'ema'\]; this configuration has the slots "
     r"\['m', 'u', 'ema', 'accumulator'\]")),
    ("header shapes", {"header": _header(shapes=sc.SHAPES[:-1])}, ValueError,
     r"`header`\['shapes'\] must be a list of 7 shapes"),
    ("header dtype", {"header": _header(dtypes=["int32"] + sc.DTYPES[1:])}, ValueError,
     r"`header`\['dtypes'\]\[0\] must be 'float16', 'float32' or 'float64'"),
    ("header names", {"header": _header(names=["a"] * 7)}, ValueError,
     r"`header`\['names'\]: `names` must be distinct"),
    ("header config", {"header": _header(config={**sc.CONFIG,
                                                   "gradient_accumulation_steps": 1})},
     ValueError, r"`header`\['config'\]: `gradient_accumulation_steps` must be an integer >= 2"),
    ("header world size", {"header": _header(world_size=2)}, ValueError,
     r"`header`\['world_size'\] is 2, but the communicator has 1 ranks"),
    ("header zero stage", {"header": _header(zero_stage=-1)}, ValueError,
     r"`header`\['zero_stage'\] must be an int >= 0"),
    ("pieces dict", {"pieces": {0: Piece(0, 0, 1)}}, TypeError,
     r"`pieces` must be a list or a tuple of Piece"),
    ("piece tuple", {"pieces": [(0, 0, 185)]}, TypeError, r"`pieces`\[0\] must be a Piece"),
    ("piece variable", {"pieces": [Piece(7, 0, 1)]}, ValueError,
     r"`pieces`\[0\] is Piece\(variable=7, begin=0, end=1\), but there are 7 variables"),
    ("piece end", {"pieces": [Piece(0, 0, 186)]}, ValueError,
     r"variable 0 \('table'\) has 185 elements"),
    ("slots list", {"slots": [1]}, TypeError, r"`slots` must be a dict"),
    ("slots missing", {"slots": {"m": [], "u": [], "ema": [], "velocity": []}}, ValueError,
     r"`slots` must have exactly the keys .* missing \['accumulator'\], unknown \['velocity'\]"),
    ("slot count", {"slots": _slots_with("ema", lambda a: a) | {"m": []}}, ValueError,
     r"`slots`\['m'\] has 0 arrays for \d+ pieces"),
    ("slot length", {"slots": _slots_with("u", lambda a: a[1:])}, ValueError,
     r"`slots`\['u'\]\[\d+\] \(for Piece\(.*\)\) has shape \(\d+,\); expected"),
    ("slot 2-D", {"slots": _slots_with("u", lambda a: a.reshape(1, -1))}, ValueError,
     r"has shape \(1, \d+\)"),
    ("slot dtype", {"slots": _slots_with("m", lambda a: a.astype(np.float16))}, TypeError,
     r"`slots`\['m'\]\[\d+\] .* has dtype float16; the slots of variable \d+ \(float\d+\) are"),
    ("slot list", {"slots": _slots_with("m", lambda a: a.tolist())}, TypeError,
     r"must be a 1-D numpy.ndarray \(copy device arrays to the host first\)"),
    ("whole list", {"whole": [1]}, TypeError, r"`whole` must be None or a dict"),
    ("whole key", {"whole": {"table": {}}}, TypeError, r"`whole` keys must be variable indices"),
    ("whole index", {"whole": {9: {}}}, ValueError, r"`whole` key 9 is not a variable index"),
    ("whole array", {"whole": {0: {"touched_rows": [1, 2]}}}, TypeError,
     r"`whole`\[0\]\['touched_rows'\] must be a numpy.ndarray"),
    ("touched rows order", {"whole": {0: {"touched_rows": np.array([3, 1])}}}, ValueError,
     r"`whole`\[0\]\['touched_rows'\] must hold ascending distinct row numbers in \[0, 37\)"),
    ("touched rows range", {"whole": {5: {"touched_rows": np.array([11])}}}, ValueError,
     r"in \[0, 11\)"),
    ("touched rows float", {"whole": {5: {"touched_rows": np.array([1.0])}}}, TypeError,
     r"must be a 1-D integer array"),
    ("cover gap", {"pieces": [Piece(v, 0, s) for v, s in enumerate(sc.sizes())][1:]}, None,
     r"`pieces` of all ranks do not cover variable 0 \('table'\): elements \[0, 185\)"),
    ("cover overlap", {"pieces": [Piece(0, 0, 100), Piece(0, 90, 185)]
                           + [Piece(v, 0, s) for v, s in enumerate(sc.sizes())][1:]},
     None, (r"`pieces` of all ranks overlap on variable 0 \('table'\): elements \[90, 100\) "
           r"are in both rank 0 and rank 0")),
]


@pytest.mark.parametrize("case", BAD_SAVES, ids=[c[0] for c in BAD_SAVES])
def test_bad_save_arguments_are_refused_and_nothing_is_written(tmp_path, monkeypatch, case):
    _, changes, kind, match = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    arguments = _save_call()
    if "pieces" in changes and "slots" not in changes:  # slots that fit the pieces
        pieces = changes["pieces"]
        if isinstance(pieces, list) and all(
                isinstance(p, Piece) and p.variable < 7 and p.end <= sc.sizes()[p.variable]
                for p in pieces):
            arguments["slots"] = sc.slices(sc.reference_slots(), pieces, sc.SLOT_NAMES)
    arguments.update(changes)
    before = sc.files_digest(tmp_path), sorted(os.listdir(tmp_path))
    with pytest.raises(kind or ValueError, match=match):
        sharded.save(arguments.pop("path"), arguments.pop("comm"), **arguments)
    assert (sc.files_digest(tmp_path), sorted(os.listdir(tmp_path))) == before


@pytest.mark.parametrize("fields, kind, match", [
    ((0.5, 0, 1), TypeError, r"Piece.variable must be an int, got 0.5"),
    ((0, True, 1), TypeError, r"Piece.begin must be an int"),
    ((-1, 0, 1), ValueError, r"Piece.variable must be >= 0"),
    ((0, 3, 2), ValueError, r"A Piece needs 0 <= begin <= end, got begin=3, end=2"),
    ((0, -1, 2), ValueError, r"A Piece needs 0 <= begin <= end"),
])
def test_bad_pieces_are_refused(fields, kind, match):
    with pytest.raises(kind, match=match):
        Piece(*fields)
    assert Piece(np.int64(1), np.int32(2), 3) == Piece(1, 2, 3)


def test_bad_load_arguments_are_refused(tmp_path):
    _synthetic(tmp_path / "ckpt")
    path = tmp_path / "ckpt"
    for kwargs, kind, match in [
        ({"pieces": [(0, 0, 1)]}, TypeError, r"`pieces`\[0\] must be a Piece"),
        ({"pieces": Piece(0, 0, 1)}, TypeError, r"`pieces` must be a list or a tuple"),
        ({"pieces": [Piece(8, 0, 1)]}, ValueError, r"there are 7 variables"),
        ({"pieces": [Piece(5, 0, 12)]}, ValueError, r"variable 5 \('short'\) has 11 elements"),
        ({"pieces": [], "expect": None}, TypeError, r"`expect` must be a callable"),
    ]:
        with pytest.raises(kind, match=match):
            sharded.load(path, SELF, **{"expect": lambda h: None, **kwargs})
    with pytest.raises(TypeError, match=r"`path` must be a str or an os\.PathLike"):
        sharded.load(None, SELF, pieces=[], expect=lambda h: None)
    with pytest.raises(TypeError, match=r"`comm` must be"):
        sharded.load(path, None, pieces=[], expect=lambda h: None)


def test_bad_consolidate_arguments_are_refused(tmp_path):
    _synthetic(tmp_path / "ckpt")
    na.save_state(real_state(1)[1], tmp_path / "one.npz")
    before = sc.files_digest(tmp_path)
    for path, out, kind, match in [
        (3, "x.npz", TypeError, r"`path` must be a str or an os\.PathLike"),
        (tmp_path / "ckpt", None, TypeError, r"`out` must be a str or an os\.PathLike"),
        (tmp_path / "one.npz", tmp_path / "x.npz", ValueError,
         r"`path` .* is a file; consolidate reads a checkpoint directory"),
        (tmp_path / "ckpt", tmp_path, ValueError, r"`out` .* is a directory"),
        (tmp_path / "ckpt", tmp_path / "ckpt" / "x.npz", ValueError,
         r"`out` .* is inside the checkpoint directory"),
        (tmp_path / "ckpt", tmp_path / "absent" / "x.npz", ValueError,
         r"`out`: the directory .* does not exist"),
    ]:
        with pytest.raises(kind, match=match):
            consolidate(path, out)
    assert sc.files_digest(tmp_path) == before


def test_consolidate_is_exported():
    import numba_adamax.distributed as dist
    assert dist.consolidate is consolidate and "consolidate" in dist.__all__


def test_a_failed_second_rename_puts_the_previous_checkpoint_back(tmp_path, monkeypatch):
    _synthetic(tmp_path / "ckpt")
    before = sc.files_digest(tmp_path)
    monkeypatch.setattr(shard_files, "exchange", lambda a, b: False)
    rename, calls = os.rename, []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("simulated failure of the second rename")
        rename(a, b)

    monkeypatch.setattr(shard_files.os, "rename", second_fails)
    with pytest.raises(OSError, match="second rename"):
        _synthetic(tmp_path / "ckpt", seed=5, raw_steps=10)
    monkeypatch.undo()
    assert len(calls) == 3 and sc.files_digest(tmp_path) == before
    _load_everything(tmp_path / "ckpt")


def _rewrite_shard(path, change):
    """Rewrite the one shard of ``path`` with ``change(members)`` applied, signed, and the
    manifest re-signed with its new digest: damage that only the content checks find."""
    shard = path / SHARD
    with np.load(shard, allow_pickle=False) as archive:
        members = {k: archive[k] for k in archive.files}
    change(members)
    digest = single_file.write_signed(str(shard), members)
    _resign_manifest(path, lambda b: b["shards"][0].__setitem__("sha256", digest))


def _metadata(members):
    return json.loads(members["metadata"].tobytes())


def _set_member(name_of, value):
    def change(members):
        members[name_of(_metadata(members))] = value(members[name_of(_metadata(members))])
    return change


def _first_fragment(metadata):
    return metadata["fragments"][0]["member"]


def _touched_member(metadata):
    return next(w["member"] for w in metadata["whole"] if w["name"] == "touched_rows")


@pytest.mark.parametrize("change, match", [
    (_set_member(_first_fragment, lambda a: a.astype(np.float16)),
     r"member 'f000000' has dtype float16 and shape \(\d+,\); the manifest expects"),
    (_set_member(_first_fragment, lambda a: a[:-1]), r"the manifest expects"),
    (lambda members: members.__setitem__("extra", np.zeros(2)),
     r"holds other members than its metadata lists"),
    (_set_member(_touched_member, lambda a: a[::-1].copy()),
     r"touched_rows must hold ascending distinct row numbers"),
    (lambda members: members.__setitem__("metadata", np.frombuffer(b"{", np.uint8)),
     r"is not readable: JSONDecodeError"),
], ids=["member dtype", "member length", "extra member", "touched rows", "metadata"])
def test_a_resigned_shard_with_other_content_is_refused(tmp_path, change, match):
    _synthetic(tmp_path / "ckpt")
    _rewrite_shard(tmp_path / "ckpt", change)
    before = sc.files_digest(tmp_path)
    with pytest.raises(na.CheckpointError, match=match):
        _load_everything(tmp_path / "ckpt")
    with pytest.raises(na.CheckpointError, match=match):
        consolidate(tmp_path / "ckpt", tmp_path / "one.npz")
    assert sc.files_digest(tmp_path) == before
