"""Checkpoints lose nothing and never half-load.

* Exact resume: K calls, save, load in a new process, K more calls equals 2K uninterrupted
  calls bit for bit (variables, every slot, counters), for every configuration of
  ``configs.CONFIGS`` plus the ``nonfinite="skip"`` cases, through the class and the
  functional API.
* ``state_dict`` / ``load_state_dict`` round trips in process (built and unbuilt targets), and
  Keras' ``save_own_variables`` / ``load_own_variables`` layout.
* Refusals: every malformed or mismatched dict, store or file raises a clear error naming the
  field, and the optimizer is bit-identical afterwards.
* Faults: a save that fails before the rename leaves the previous file intact and no
  temporary file; truncated, bit-flipped, unsigned or pickled files are refused.
"""
import copy
import hashlib
import io
import json
import re
import warnings
import zipfile

import numpy as np
import pytest

import numba_adamax as na
from numba_adamax import _checkpoint
from checkpoint_helpers import APIS, CALLS, HALF, RESUME_CONFIGS, Run, save_first_halves
from conftest import NAMES, REPO_ROOT, assert_unchanged, bit_identical, run_python, slow

CONFIG_NAMES = list(RESUME_CONFIGS)


def _uninterrupted(name, api):
    return Run(name, api).run(0, CALLS).snapshot()


# ============================================================================ exact resume

@slow
def test_exact_resume_in_a_new_process(tmp_path):
    """One child process resumes every (configuration, API) case from its file."""
    save_first_halves(str(tmp_path))
    proc = run_python([REPO_ROOT / "tests" / "checkpoint_helpers.py", tmp_path], timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "cases": len(CONFIG_NAMES) * len(APIS)}
    with np.load(tmp_path / "resumed.npz") as resumed:
        results = {k: resumed[k] for k in resumed.files}
    checked = 0
    for name in CONFIG_NAMES:
        for api in APIS:
            want = _uninterrupted(name, api)
            prefix = f"{name}|{api}|"
            got = {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}
            assert_unchanged(want, got, f"{name} ({api})")
            checked += 1
    assert checked == len(CONFIG_NAMES) * 2
    # the skip cases really skipped calls, before and after the checkpoint
    skipped = _uninterrupted("skip_nonfinite_accum", "class")["skipped_steps"]
    assert int(skipped) == 2


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("api", APIS)
def test_state_dict_round_trip_in_process(name, api):
    first = Run(name, api).run(0, HALF)
    d = (first.opt.state_dict() if api == "class" else first.state.state_dict())
    json.dumps({k: v for k, v in d.items() if k != "slots"})  # plain JSON values
    assert all(isinstance(a, np.ndarray) for a in d["slots"])
    second = Run(name, api, params=first.params)
    (second.opt if api == "class" else second.state).load_state_dict(d)
    second.run(HALF, CALLS)
    assert_unchanged(_uninterrupted(name, api), second.snapshot(), name)


def test_state_dict_is_a_snapshot():
    run = Run("kitchen_sink", "class").run(0, HALF)
    d = run.opt.state_dict()
    before = [a.copy() for a in d["slots"]]
    run.run(HALF, CALLS)
    assert all(bit_identical(a, b) for a, b in zip(d["slots"], before))
    assert d["raw_steps"] == HALF and d["iterations"] == HALF // 3


@pytest.mark.parametrize("name", ["kitchen_sink", "ema_overwrite_3", "sched_cosine_restarts",
                                  "grad_accum_3", "skip_nonfinite_accum"])
def test_load_state_dict_into_an_unbuilt_optimizer_applies_at_build(name):
    first = Run(name, "class").run(0, HALF)
    d = first.opt.state_dict()
    second = Run(name, "class", params=first.params)
    fresh = second.opt.__class__.from_config(second.opt.get_config())
    fresh.exclude_from_weight_decay(var_names=list(RESUME_CONFIGS[name].exclude_names) or None)
    fresh.load_state_dict(d)
    assert not fresh.built and fresh.iterations == 0
    for slot in d["slots"]:
        slot[...] = 7  # the pending load keeps its own copy
    fresh.build(second.params, names=list(NAMES))
    second.opt = fresh
    second.run(HALF, CALLS)
    assert_unchanged(_uninterrupted(name, "class"), second.snapshot(), name)


def test_pending_load_applies_on_the_first_apply_and_is_checked_again():
    first = Run("grad_accum_2", "class").run(0, HALF)
    d = first.opt.state_dict()
    opt = na.Adamax(learning_rate=0.05, gradient_accumulation_steps=2)
    opt.load_state_dict(d)
    wrong = [p.copy() for p in first.params[:2]]
    with pytest.raises(ValueError, match="names"):
        opt.apply([np.ones_like(p) for p in wrong], wrong)  # two variables, not five
    assert not opt.built
    opt.gradient_accumulation_steps = 3  # allowed before build; the pending load now mismatches
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        opt.build(first.params, names=list(NAMES))
    assert not opt.built
    opt.gradient_accumulation_steps = 2
    params = dict(zip(NAMES, (p.copy() for p in first.params)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a None gradient in the row
        opt.apply(dict(zip(NAMES, first.rows[HALF])), params)
    assert opt.built and opt.state.raw_steps == HALF + 1


def test_keras_store_round_trip():
    first = Run("kitchen_sink", "class").run(0, HALF)
    store = {}
    first.opt.save_own_variables(store)
    assert list(store) == [str(i) for i in range(len(first.opt.variables))]
    assert int(store["0"]) == HALF and store["0"].dtype == np.int64
    for i, v in enumerate(first.opt.variables[1:], start=1):
        assert bit_identical(store[str(i)], v) and not np.shares_memory(store[str(i)], v)
    for built in (True, False):
        second = Run("kitchen_sink", "class", params=first.params)
        if not built:
            fresh = na.Adamax.from_config(second.opt.get_config())
            fresh.exclude_from_weight_decay(var_names=["bias", "^big$"])
            fresh.load_own_variables(store)
            assert not fresh.built
            fresh.build(second.params, names=list(NAMES))
            second.opt = fresh
        else:
            second.opt.load_own_variables(store)
        second.run(HALF, CALLS)
        assert_unchanged(_uninterrupted("kitchen_sink", "class"), second.snapshot(), "keras store")


def test_keras_store_of_an_unbuilt_optimizer_is_the_counter():
    store = {}
    na.Adamax().save_own_variables(store)
    assert list(store) == ["0"] and int(store["0"]) == 0


# ============================================================================ refusals

def _built_env(api):
    run = Run("kitchen_sink", api).run(0, HALF)
    d = (run.opt if api == "class" else run.state).state_dict()
    return run, d


def _mutate(d, path, value):
    d = copy.deepcopy(d)
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return d


_DELETE = object()

# (id, path into the dict, new value or function of the old one, exception, message regex)
BAD_DICTS = [
    ("version-2", ("format_version",), 2, ValueError, r"'format_version' is 2"),
    ("version-str", ("format_version",), "1", ValueError, r"'format_version'"),
    ("missing-key", ("skipped_steps",), _DELETE, ValueError, r"missing \['skipped_steps'\]"),
    ("extra-key", ("extra",), 1, ValueError, r"unknown \['extra'\]"),
    ("raw-negative", ("raw_steps",), -1, ValueError, r"'raw_steps' must be an integer >= 0"),
    ("raw-float", ("raw_steps",), 5.0, ValueError, r"'raw_steps' must be an integer"),
    ("raw-bool", ("raw_steps",), True, ValueError, r"'raw_steps' must be an integer"),
    ("iterations-inconsistent", ("iterations",), 4, ValueError, r"'iterations' is 4, inconsistent"),
    ("skipped-negative", ("skipped_steps",), -2, ValueError, r"'skipped_steps'"),
    ("config-not-dict", ("config",), [], TypeError, r"'config' must be a dict"),
    ("config-ema-inconsistent", ("config", "use_ema"), False, ValueError,
     r"'slots' must be a list of 15 arrays \(3 per variable\); got 20"),
    ("config-ema-not-bool", ("config", "use_ema"), 1, ValueError, r"'config': use_ema must be a bool"),
    ("config-gas-inconsistent", ("config", "gradient_accumulation_steps"), 2, ValueError,
     r"'iterations' is 1, inconsistent with raw_steps=5 and gradient_accumulation_steps=2"),
    ("config-gas-invalid", ("config", "gradient_accumulation_steps"), 1, ValueError,
     r"gradient_accumulation_steps"),
    ("names-renamed", ("names", 1), "bias_x", ValueError, r"'names'"),
    ("names-duplicate", ("names", 1), "w_a", ValueError, r"distinct"),
    ("names-not-str", ("names", 0), 3, TypeError, r"`names` entries must be str"),
    ("names-empty", ("names",), [], ValueError, r"'names' must be a non-empty list"),
    ("shapes-count", ("shapes",), lambda s: s[:-1], ValueError, r"'shapes' must be a list of 5"),
    ("shape-wrong", ("shapes", 0), [8], ValueError, r"shape"),
    ("shape-negative", ("shapes", 0), [-7], ValueError, r"'shapes'\[0\]"),
    ("dtype-wrong", ("dtypes", 0), "float64", (TypeError, ValueError), r"dtype"),
    ("dtype-unsupported", ("dtypes", 0), "int32", ValueError, r"'dtypes'\[0\]"),
    ("slots-count", ("slots",), lambda s: s[:-1], ValueError, r"'slots' must be a list of 20 arrays \(4 per variable\); got 19"),
    ("slot-not-array", ("slots", 3), lambda a: a.tolist(), TypeError, r"'slots'\[3\]"),
    ("slot-shape", ("slots", 0), lambda a: a.reshape(-1, 1), ValueError, r"'slots'\[0\].*shape"),
    ("slot-dtype", ("slots", 0), lambda a: a.astype(np.float64), TypeError, r"'slots'\[0\].*dtype"),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", BAD_DICTS, ids=[c[0] for c in BAD_DICTS])
def test_bad_state_dict_is_refused_and_changes_nothing(case, api):
    _, path, value, exc, match = case
    run, d = _built_env(api)
    bad = _mutate(d, path, value)
    before = run.snapshot()
    target = run.opt if api == "class" else run.state
    with pytest.raises(exc, match=match):
        target.load_state_dict(bad)
    assert_unchanged(before, run.snapshot(), "after a refused load")
    run.run(HALF, CALLS)  # and the trajectory goes on as if nothing happened
    assert_unchanged(_uninterrupted("kitchen_sink", api), run.snapshot(), "trajectory")


@pytest.mark.parametrize("case", BAD_DICTS, ids=[c[0] for c in BAD_DICTS])
def test_bad_state_dict_on_an_unbuilt_optimizer_is_refused_now_or_at_build(case):
    _, path, value, exc, match = case
    _, d = _built_env("class")
    bad = _mutate(d, path, value)
    fresh = Run("kitchen_sink", "class")
    opt = na.Adamax.from_config(fresh.opt.get_config())
    try:
        opt.load_state_dict(bad)
    except exc as error:
        assert re.search(match, str(error)), str(error)
    else:
        with pytest.raises(exc, match=match):
            opt.build(fresh.params, names=list(NAMES))
    assert not opt.built and opt.state is None


@pytest.mark.parametrize("source, target, match", [
    ("ema_no_overwrite", "lr_0.05", r"'config': use_ema=True in the saved state but use_ema=False"),
    ("lr_0.05", "ema_no_overwrite", r"use_ema=False in the saved state but use_ema=True"),
    ("grad_accum_2", "grad_accum_3", r"gradient_accumulation_steps=2 in the saved state but "
                                     r"gradient_accumulation_steps=3"),
    ("lr_0.05", "grad_accum_2", r"gradient_accumulation_steps=None in the saved state"),
])
@pytest.mark.parametrize("api", APIS)
def test_state_of_another_slot_layout_is_refused(source, target, match, api):
    d = Run(source, api).run(0, HALF).optimizer_state.state_dict()
    run = Run(target, api).run(0, 2)
    before = run.snapshot()
    with pytest.raises(ValueError, match=match):
        (run.opt if api == "class" else run.state).load_state_dict(d)
    assert_unchanged(before, run.snapshot(), "after a refused load")
    if api == "class":  # an unbuilt optimizer refuses it at once
        opt = na.Adamax.from_config(run.opt.get_config())
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(d)


def test_other_hyperparameters_may_differ_and_stay_in_force():
    d = Run("lr_0.05", "class").run(0, HALF).opt.state_dict()
    run = Run("clipnorm", "class").run(0, 1)
    run.opt.load_state_dict(d)
    assert run.opt.clipnorm == 1.0 and run.opt.iterations == HALF


def test_not_a_dict_is_refused():
    run, _ = _built_env("class")
    with pytest.raises(TypeError, match="must be a dict"):
        run.opt.load_state_dict([1, 2])


def test_state_dict_needs_a_built_optimizer(tmp_path):
    with pytest.raises(ValueError, match="`state_dict` needs a built optimizer"):
        na.Adamax().state_dict()
    with pytest.raises(ValueError, match="needs a built optimizer"):
        na.Adamax().save_state(tmp_path / "never-written.npz")
    assert list(tmp_path.iterdir()) == []


def test_callable_learning_rate_is_saved_as_null_and_loads():
    params = [np.ones(3)]
    opt = na.Adamax(learning_rate=lambda: 0.01)
    opt.apply([np.ones(3)], params)
    d = opt.state_dict()
    assert d["config"]["learning_rate"] is None
    other = na.Adamax(learning_rate=0.5)
    other.build([np.ones(3)])
    other.load_state_dict(d)
    assert other.iterations == 1 and other.learning_rate == 0.5  # settings in force are kept


BAD_STORES = [
    ("too-few", lambda s: {k: v for k, v in s.items() if k != str(len(s) - 1)}, ValueError,
     r"expected 21 arrays \(counter first\), got 20"),
    ("extra-key", lambda s: {**s, "x": s["0"]}, ValueError, r"keys must be '0', '1'"),
    ("gap", lambda s: {**{k: v for k, v in s.items() if k != "3"}, "21": s["3"]}, ValueError,
     r"keys must be"),
    ("counter-negative", lambda s: {**s, "0": np.array(-1)}, ValueError, r"non-negative integer"),
    ("counter-float", lambda s: {**s, "0": np.array(5.0)}, ValueError, r"non-negative integer"),
    ("shape", lambda s: {**s, "2": s["2"].reshape(-1, 1)}, ValueError, r"weights\[2\] has shape"),
    ("dtype", lambda s: {**s, "1": s["1"].astype(np.float64)}, TypeError, r"weights\[1\] has dtype"),
]


@pytest.mark.parametrize("case", BAD_STORES, ids=[c[0] for c in BAD_STORES])
def test_bad_keras_store_is_refused_and_changes_nothing(case):
    _, change, exc, match = case
    run, _ = _built_env("class")
    store = {}
    run.opt.save_own_variables(store)
    before = run.snapshot()
    with pytest.raises(exc, match=match):
        run.opt.load_own_variables(change(store))
    assert_unchanged(before, run.snapshot(), "after a refused store")


def test_empty_keras_store_is_refused_on_an_unbuilt_optimizer():
    opt = na.Adamax()
    with pytest.raises(ValueError, match="store is empty"):
        opt.load_own_variables({})
    assert not opt.built


# ============================================================================ files

@pytest.fixture
def saved(tmp_path):
    run, _ = _built_env("class")
    path = tmp_path / "opt.npz"
    run.opt.save_state(path)
    return run, path


def _refused(run, path, exc=na.CheckpointError, match=None):
    before = run.snapshot()
    with pytest.raises(exc, match=match):
        run.opt.load_state(path)
    assert_unchanged(before, run.snapshot(), "after a refused file")


def test_file_is_a_plain_npz_loadable_without_pickle(saved):
    run, path = saved
    with np.load(path, allow_pickle=False) as f:
        assert f["metadata"].dtype == np.uint8
        meta = json.loads(f["metadata"].tobytes())
        assert meta["format_version"] == 1 and meta["names"] == list(NAMES)
        slots = [f[f"slot_{j:05d}"] for j in range(meta["slot_count"])]
    assert all(bit_identical(a, b) for a, b in zip(slots, run.opt.state.state_arrays()))
    assert [p.name for p in path.parent.iterdir()] == ["opt.npz"]


def test_functional_save_and_load(tmp_path):
    first = Run("kitchen_sink", "functional").run(0, HALF)
    na.save_state(first.state, tmp_path / "state.npz")
    second = Run("kitchen_sink", "functional", params=first.params)
    na.load_state(second.state, str(tmp_path / "state.npz"))
    second.run(HALF, CALLS)
    assert_unchanged(_uninterrupted("kitchen_sink", "functional"), second.snapshot(),
                     "functional file")


@pytest.mark.parametrize("target", ["adamax", "unbuilt adamax", "state dict"])
def test_the_functions_refuse_what_is_not_a_state_saying_what_to_pass(saved, target):
    """``save_state`` / ``load_state`` take an ``AdamaxState``; an ``Adamax`` (which has
    methods of the same names) or a state dict raises TypeError before any file is touched,
    and changes nothing."""
    run, path = saved
    obj = {"adamax": run.opt, "unbuilt adamax": na.Adamax(),
           "state dict": run.opt.state_dict()}[target]
    hint = {"adamax": r"To use this Adamax, call its own `{}\(path\)`, or pass its `\.state`\.$",
            "unbuilt adamax": r"call its own `{}\(path\)`, or pass its `\.state` once it is built",
            "state dict": r"got builtins\.dict\.$"}[target]
    before, data = run.snapshot(), path.read_bytes()
    fresh = path.parent / "fresh.npz"
    with pytest.raises(TypeError, match=r"^`save_state` expects an AdamaxState .*"
                                        + hint.format("save_state")):
        na.save_state(obj, fresh)
    with pytest.raises(TypeError, match=r"^`load_state` expects an AdamaxState .*"
                                        + hint.format("load_state")):
        na.load_state(obj, path)
    assert_unchanged(before, run.snapshot(), "after a refused call")
    assert not fresh.exists() and path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["opt.npz"]


def test_save_overwrites_atomically(saved):
    run, path = saved
    run.run(HALF, HALF + 1)
    run.opt.save_state(path)
    other = Run("kitchen_sink", "class", params=run.params)
    other.opt.load_state(path)
    assert other.opt.state.raw_steps == HALF + 1
    assert [p.name for p in path.parent.iterdir()] == ["opt.npz"]


@pytest.mark.parametrize("fail_at", ["replace", "write", "fsync"])
def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(saved, monkeypatch,
                                                                       fail_at):
    run, path = saved
    previous = path.read_bytes()
    run.run(HALF, HALF + 2)

    def boom(*args, **kwargs):
        raise OSError(f"simulated failure in {fail_at}")

    if fail_at == "replace":
        monkeypatch.setattr(_checkpoint.os, "replace", boom)
    elif fail_at == "write":
        monkeypatch.setattr(_checkpoint.np.lib.format, "write_array", boom)
    else:
        monkeypatch.setattr(_checkpoint.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated failure"):
        run.opt.save_state(path)
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert [p.name for p in path.parent.iterdir()] == ["opt.npz"]
    other = Run("kitchen_sink", "class", params=run.params)
    other.opt.load_state(path)
    assert other.opt.state.raw_steps == HALF


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -1, -64])
def test_truncated_file_is_refused(saved, keep):
    run, path = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep % len(data) if keep < 0 else keep)
    path.write_bytes(data[:n])
    _refused(run, path, match="truncated|corrupted|not a numba_adamax checkpoint")


def _payload_offset(data, array):
    offset = data.find(array.tobytes())
    assert offset > 0
    return offset + array.nbytes // 2


@pytest.mark.parametrize("where", ["middle", "payload", "metadata", "last", "first"])
def test_bit_flip_is_refused(saved, where):
    run, path = saved
    data = bytearray(path.read_bytes())
    state = run.opt.state
    offset = {"middle": len(data) // 2,
              "payload": _payload_offset(bytes(data), state.m[4]),  # 'big', 999 elements
              "metadata": bytes(data).find(b'"names"') + 3,
              "last": len(data) - 1,
              "first": 0}[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(run, path, match="SHA-256|not a numba_adamax checkpoint")


def test_every_single_byte_flip_is_refused(tmp_path):
    """Exhaustive over a small file: no byte of the container goes unchecked."""
    params = [np.arange(3, dtype=np.float32)]
    opt = na.Adamax()
    opt.apply([np.ones(3, np.float32)], params)
    path = tmp_path / "small.npz"
    opt.save_state(path)
    data = path.read_bytes()
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x80
        path.write_bytes(bytes(flipped))
        with pytest.raises(na.CheckpointError):
            na.Adamax().load_state(path)


def _sign(members):
    """A signed archive made by hand (to test what lies behind the signature)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, array, pickle_ok in members:
            with archive.open(name + ".npy", "w") as m:
                np.lib.format.write_array(m, array, allow_pickle=pickle_ok)
        archive.comment = _checkpoint.SIGNATURE + b"0" * 64
    data = buf.getvalue()
    return data[:-64] + hashlib.sha256(data[:-64]).hexdigest().encode()


def test_pickled_member_is_never_unpickled(saved):
    run, path = saved
    meta = json.dumps({"magic": _checkpoint.MAGIC, "slot_count": 1}).encode()
    path.write_bytes(_sign([("metadata", np.frombuffer(meta, np.uint8), False),
                            ("slot_00000", np.array([{"evil": 1}], dtype=object), True)]))
    _refused(run, path, match="pickle")


def test_a_plain_npz_is_not_a_checkpoint(saved):
    run, path = saved
    np.savez(path, a=np.zeros(3))
    _refused(run, path, match="not a numba_adamax checkpoint")


def test_signed_archive_without_our_metadata_is_refused(saved):
    run, path = saved
    path.write_bytes(_sign([("metadata", np.frombuffer(b'{"magic": "other"}', np.uint8), False)]))
    _refused(run, path, match="wrong magic")
    path.write_bytes(_sign([("slot_00000", np.zeros(3), False)]))
    _refused(run, path, match="no metadata")


@pytest.mark.parametrize("field, value, exc, match", [
    ("format_version", 2, ValueError, r"'format_version' is 2"),
    ("names", ["w_a", "bias_b", "w_c", "empty", "other"], ValueError, r"'names'"),
    ("shapes", [[7], [3, 5], [4, 2, 3], [0], [999]], ValueError, r"shape"),
    ("dtypes", ["float64"] * 5, (TypeError, ValueError), r"dtype"),
])
def test_well_signed_but_mismatched_file_is_refused(saved, field, value, exc, match):
    run, path = saved
    d = run.opt.state_dict()
    d[field] = value
    if field == "shapes":
        d["slots"] = [a.reshape(-1) if a.size == 999 else a for a in d["slots"]]
    if field == "dtypes":
        d["slots"] = [a.astype(np.float64) for a in d["slots"]]
    _checkpoint.write(d, path)
    _refused(run, path, exc=exc, match=match)


def test_missing_file_raises_file_not_found(tmp_path):
    run, _ = _built_env("class")
    with pytest.raises(FileNotFoundError):
        run.opt.load_state(tmp_path / "absent.npz")


def test_load_state_into_an_unbuilt_optimizer(saved):
    run, path = saved
    opt = na.Adamax.from_config(run.opt.get_config())
    opt.exclude_from_weight_decay(var_names=["bias", "^big$"])
    opt.load_state(path)
    assert not opt.built
    opt.build([p.copy() for p in run.params], names=list(NAMES))
    assert opt.iterations == run.opt.iterations
    assert all(bit_identical(a, b) for a, b in zip(opt.get_weights(), run.opt.get_weights()))


def _sparse_window_calls(steps):
    """Per call: a sparse gradient (duplicates included) for a 12 x 3 embedding and a
    dense one for a bias, seeded by the call number."""
    calls = []
    for s in range(steps):
        rng = np.random.default_rng(100 + s)
        rows = rng.integers(0, 12, size=5)
        calls.append([na.IndexedSlices(rng.standard_normal((5, 3)), rows),
                      rng.standard_normal(4)])
    return calls


@pytest.mark.parametrize("stop", [1, 2, 4])
def test_resume_inside_a_sparse_accumulation_window_is_exact(tmp_path, stop):
    def fresh():
        params = [np.linspace(-1, 1, 36).reshape(12, 3), np.ones(4)]
        return params, na.Adamax(learning_rate=0.05, gradient_accumulation_steps=3,
                                 weight_decay=0.01)

    calls = _sparse_window_calls(6)
    params, opt = fresh()
    for grads in calls:
        opt.apply(grads, params)

    first, opt_a = fresh()
    for grads in calls[:stop]:
        opt_a.apply(grads, first)
    path = tmp_path / "window.npz"
    opt_a.save_state(path)
    resumed, opt_b = fresh()
    opt_b.build(resumed)
    np.copyto(resumed[0], first[0])
    np.copyto(resumed[1], first[1])
    opt_b.load_state(path)
    assert [opt_b.state.touched(i).tolist() for i in range(2)] == \
        [opt_a.state.touched(i).tolist() for i in range(2)]
    for grads in calls[stop:]:
        opt_b.apply(grads, resumed)
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p, q)
    for a, b in zip(opt.variables, opt_b.variables):
        np.testing.assert_array_equal(a, b)


def test_touched_rows_out_of_range_are_refused():
    params = [np.zeros((4, 2)), np.zeros(3)]
    opt = na.Adamax(gradient_accumulation_steps=2)
    opt.apply([na.IndexedSlices(np.ones((1, 2)), np.array([1])), np.ones(3)], params)
    d = opt.state_dict()
    before = opt.state_dict()
    d["touched_rows"] = [[7], []]
    with pytest.raises(ValueError, match="touched_rows"):
        opt.load_state_dict(d)
    after = opt.state_dict()
    assert after["touched_rows"] == before["touched_rows"] == [[1], [0, 1, 2]]
