"""The sharded optimizer's checkpoints end to end, run by tests/test_distributed_resume.py as

    mpiexec -n 4 python -m mpi4py tests/mpi_resume_scenarios.py all OUTDIR

(``python -m mpi4py`` turns an exception on one rank into an abort of the whole job).
World sizes below 4 run on sub-communicators of the first ranks.

* ``save``: for every N in 1..4 and every configuration of :data:`CONFIGS` (zero_stage 1,
  and zero_stage 0 at N=2) a ``ShardedAdamax(deterministic=True)`` over N ranks takes
  :data:`SAVE_AT` steps and writes ``ckpt/<config>-z<stage>-n<N>``; it must equal the
  one-process reference then, and again after :data:`MORE` further steps.
* ``load``: for every M in 1..4, every one of those checkpoints is loaded by a fresh
  optimizer over M ranks (built on the reference variables at the save point) and
  continued for :data:`MORE` steps; also a ``na.save_state`` file of the reference, and
  a load into an unbuilt optimizer (applied by the build).
* ``refusals`` (4 ranks): a missing or corrupted shard, a missing, corrupted or foreign
  manifest, checkpoints of other configurations, and a save that fails between the
  shards and the manifest; every rank must raise ``CheckpointError`` (or the save's
  error) with params, slots and counters unchanged, and the previous checkpoint must
  stay loadable.
* ``device`` (one process, no MPI, under ``NUMBA_ENABLE_CUDASIM=1``): float16, float32
  and float64 device variables saved, loaded and consolidated (``device_resume``).

The gradient of call t is :func:`gradient` on rank 0 and zeros (an empty
``IndexedSlices`` for the sparse variable) on the others, with ``reduce="sum"``, so the
rank-order sum is that gradient exactly at every world size and the reference is one
``na.Adamax`` given it. Each rank writes ``OUTDIR/report-rank<r>.json``: a list of
records ``{"name", "ok", "detail"}`` (refusals add ``"error"``: type and message).
This module imports mpi4py only when run.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
from checkpoint_helpers import files_digest

import numba_adamax as na

SAVE_AT = 4
MORE = 3
WORLD_SIZES = (1, 2, 3, 4)
NAMES = ["matrix", "vector", "double", "bias"]
SPARSE_NAMES = NAMES + ["table"]
#: The configurations: keyword arguments of the optimizer. Every slot is exercised: the
#: EMA (with an overwrite at the third update), the accumulator with a window open at the
#: save point (4 calls, 3 per update), a sparse variable with rows touched in that open
#: window, clipping by norm.
CONFIGS = {
    "plain": {"learning_rate": 0.01},
    "ema": {"learning_rate": 0.01, "use_ema": True, "ema_overwrite_frequency": 3},
    "accumulate": {"learning_rate": 0.01, "gradient_accumulation_steps": 3},
    "sparse": {"learning_rate": 0.01, "gradient_accumulation_steps": 3, "use_ema": True},
    "clipnorm": {"learning_rate": 0.01, "clipnorm": 0.5, "weight_decay": 0.01},
}
TABLE_ROWS = 10


def names(config):
    return SPARSE_NAMES if config == "sparse" else NAMES


def variables(config):
    """The variables at the start: float32 and float64 (and a float32 table). float16
    variables exist on CUDA devices only, which the sharded optimizer does not pair with
    sparse variables; tests/test_mpi.py steps device variables."""
    out = [np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3),
           np.cos(np.arange(37, dtype=np.float32)),
           np.sin(np.arange(24, dtype=np.float64)).reshape(4, 6), np.arange(3.0) / 4]
    if config == "sparse":
        out.append(np.linspace(0, 1, 4 * TABLE_ROWS, dtype=np.float32).reshape(TABLE_ROWS, 4))
    return out


def gradient(config, t):
    """The whole gradient of call ``t``; the sparse variable's touches rows ``2t`` and
    ``2t+1`` (mod 10), so rows of an open window are not touched again soon after."""
    rng = np.random.default_rng([7, t])
    out = [rng.standard_normal((5, 3)).astype(np.float32),
           rng.standard_normal(37).astype(np.float32),
           rng.standard_normal((4, 6)), rng.standard_normal(3)]
    if config == "sparse":
        rows = np.array([(2 * t) % TABLE_ROWS, (2 * t + 1) % TABLE_ROWS, (2 * t) % TABLE_ROWS])
        out.append(na.IndexedSlices(rng.standard_normal((3, 4)).astype(np.float32), rows))
    return out


def rank_gradient(config, t, rank):
    """Rank ``rank``'s part of call ``t``: all of it on rank 0, zeros elsewhere."""
    whole = gradient(config, t)
    if rank == 0:
        return whole
    out = [np.zeros_like(g) for g in whole[:4]]
    if config == "sparse":
        out.append(na.IndexedSlices(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
    return out


def sharded(comm, config, stage=1):
    """A fresh (unbuilt) sharded optimizer for ``config``."""
    from numba_adamax import distributed as nad
    return nad.ShardedAdamax(comm, zero_stage=stage, reduce="sum", deterministic=True,
                             sparse_variables=["table"] if config == "sparse" else None,
                             **CONFIGS[config])


def single(config):
    return na.Adamax(**CONFIGS[config])


_REFERENCES = {}


def reference(config, steps):
    """``(params, optimizer)`` of one process after ``steps`` calls (cached: do not
    mutate)."""
    key = (config, steps)
    if key not in _REFERENCES:
        params = variables(config)
        opt = single(config)
        opt.build(params, names=names(config))
        for t in range(steps):
            opt.apply(gradient(config, t))
        _REFERENCES[key] = params, opt
    return _REFERENCES[key]


def copies(arrays):
    return [np.array(a, copy=True) for a in arrays]


def snapshot(opt, params, config, variable_names=None):
    """Params, every slot of every variable and the counters, as host arrays by key
    (collective for a sharded optimizer: ``gather_slot``)."""
    out = {f"param[{i}]": np.array(p, copy=True) for i, p in enumerate(params)}
    slot_names = opt.get_slot_names()
    for name in variable_names or names(config):
        for slot in slot_names:
            if hasattr(opt, "gather_slot"):
                out[f"{slot}[{name}]"] = opt.gather_slot(name, slot)
            else:
                out[f"{slot}[{name}]"] = np.array(opt.get_slot(name, slot), copy=True)
    state = opt.state if not hasattr(opt, "gather_slot") else opt._state
    for counter in ("raw_steps", "iterations", "skipped_steps"):
        out[counter] = np.array(getattr(state, counter))
    return out


def differences(want, got):
    """The keys where ``got`` is not bit-identical to ``want`` (dtype, shape, bytes)."""
    if want.keys() != got.keys():
        return [f"keys {sorted(want)} != {sorted(got)}"]
    return [k for k in want if want[k].dtype != got[k].dtype or want[k].shape != got[k].shape
            or want[k].tobytes() != got[k].tobytes()]


def digest(snap):
    h = hashlib.sha256()
    for key in sorted(snap):
        h.update(key.encode())
        h.update(snap[key].tobytes())
    return h.hexdigest()


def expected(config, steps):
    params, opt = reference(config, steps)
    return snapshot(opt, params, config)


def checkpoint_name(config, stage, n):
    return f"{config}-z{stage}-n{n}"


def saved_checkpoints():
    """``(config, stage, n)`` of every checkpoint the ``save`` phase writes."""
    return [(config, stage, n) for n in WORLD_SIZES for config in CONFIGS
            for stage in ((1, 0) if n == 2 else (1,))]


def continue_single(opt, config, start, count):
    """``count`` one-process calls of ``config`` from call number ``start``."""
    for t in range(start, start + count):
        opt.apply(gradient(config, t))


# --------------------------------------------------------------------------- under MPI

class Scenario:
    def __init__(self, outdir):
        from mpi4py import MPI

        from numba_adamax.distributed import MPIComm
        self.MPI, self.MPIComm = MPI, MPIComm
        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.outdir = outdir
        self.records = []

    def path(self, *parts):
        return os.path.join(self.outdir, *parts)

    def record(self, name, want, got, **extra):
        problems = differences(want, got)
        self.records.append({"name": name, "ok": not problems, "detail": problems[:8],
                             **extra})

    def sub(self, size):
        """An ``MPIComm`` over the first ``size`` ranks (None on the others)."""
        sub = self.world.Split(0 if self.rank < size else self.MPI.UNDEFINED, self.rank)
        return None if sub == self.MPI.COMM_NULL else self.MPIComm(sub)

    def steps(self, opt, comm, config, start, count):
        for t in range(start, start + count):
            opt.apply(rank_gradient(config, t, comm.rank))

    # ---------------------------------------------------------------- save at N

    def save(self):
        if self.rank == 0:
            os.makedirs(self.path("ckpt"), exist_ok=True)
        self.world.Barrier()
        for n in WORLD_SIZES:
            comm = self.sub(n)
            if comm is not None:
                for config, stage, m in saved_checkpoints():
                    if m == n:
                        self.save_one(comm, config, stage)
            self.world.Barrier()

    def save_one(self, comm, config, stage):
        name = checkpoint_name(config, stage, comm.size)
        params = variables(config)
        opt = sharded(comm, config, stage)
        opt.build(params, names=names(config))
        self.steps(opt, comm, config, 0, SAVE_AT)
        self.record(f"save/{name}/at_save", expected(config, SAVE_AT),
                    snapshot(opt, params, config))
        opt.save_state(self.path("ckpt", name))
        if config == "plain" and stage == 1 and comm.size == 3:  # another save, same state
            opt.save_state(self.path("ckpt", name + "-again"))
        self.steps(opt, comm, config, SAVE_AT, MORE)
        self.record(f"save/{name}/uninterrupted", expected(config, SAVE_AT + MORE),
                    snapshot(opt, params, config))

    # ---------------------------------------------------------------- load at M

    def load(self):
        if self.rank == 0:  # one-process checkpoints of the references at the save point
            for config in CONFIGS:
                reference(config, SAVE_AT)[1].save_state(self.path("ckpt", f"{config}.npz"))
        self.world.Barrier()
        for m in WORLD_SIZES:
            comm = self.sub(m)
            if comm is not None:
                for config, stage, n in saved_checkpoints():
                    for into in ((1, 0) if m == 2 else (1,)):
                        self.resume(comm, config, into, checkpoint_name(config, stage, n),
                                    f"load/{checkpoint_name(config, stage, n)}/m{m}z{into}")
                for config in CONFIGS:
                    self.resume(comm, config, 1, f"{config}.npz", f"single/{config}/m{m}")
                for config in ("sparse", "clipnorm"):
                    self.resume(comm, config, 1, checkpoint_name(config, 1, 3),
                                f"unbuilt/{config}/m{m}", unbuilt=True)
            self.world.Barrier()

    def resume(self, comm, config, stage, checkpoint, label, unbuilt=False):
        params = copies(reference(config, SAVE_AT)[0])
        opt = sharded(comm, config, stage)
        if unbuilt:
            opt.load_state(self.path("ckpt", checkpoint))
            opt.build(params, names=names(config))
        else:
            opt.build(params, names=names(config))
            opt.load_state(self.path("ckpt", checkpoint))
        self.record(label + "/loaded", expected(config, SAVE_AT), snapshot(opt, params, config))
        self.steps(opt, comm, config, SAVE_AT, MORE)
        self.record(label + "/continued", expected(config, SAVE_AT + MORE),
                    snapshot(opt, params, config))

    # ---------------------------------------------------------------- refusals

    def refusals(self):
        from numba_adamax.distributed import _checkpoint_files as files
        comm = self.MPIComm(self.world)
        good = checkpoint_name("plain", 1, 3)
        scratch = self.path("refusals")
        damaged = {
            "missing_shard": lambda d: os.remove(os.path.join(d, "shard-00001-of-00003.npz")),
            "flipped_byte_in_shard": lambda d: flip(os.path.join(d, "shard-00002-of-00003.npz")),
            "missing_manifest": lambda d: os.remove(os.path.join(d, files.MANIFEST)),
            "corrupt_manifest": lambda d: flip(os.path.join(d, files.MANIFEST)),
            "foreign_manifest": lambda d: shutil.copyfile(
                self.path("ckpt", good + "-again", files.MANIFEST),
                os.path.join(d, files.MANIFEST)),
        }
        if self.rank == 0:
            os.makedirs(scratch)
            for case, damage in damaged.items():
                shutil.copytree(self.path("ckpt", good), os.path.join(scratch, case))
                damage(os.path.join(scratch, case))
        self.world.Barrier()
        params = copies(reference("plain", SAVE_AT)[0])
        opt = sharded(comm, "plain")
        opt.build(params, names=NAMES)
        opt.load_state(self.path("ckpt", good))
        self.steps(opt, comm, "plain", SAVE_AT, 1)  # a state unlike every checkpoint's
        before = snapshot(opt, params, "plain")
        cases = [(case, os.path.join(scratch, case)) for case in damaged]
        cases += [("other_use_ema", self.path("ckpt", checkpoint_name("ema", 1, 4))),
                  ("other_accumulation", self.path("ckpt", checkpoint_name("accumulate", 1, 1))),
                  ("other_use_ema_single_file", self.path("ckpt", "ema.npz")),
                  ("no_checkpoint", self.path("ckpt", "absent"))]
        for case, path in cases:
            self.refuse(f"refuse/{case}", lambda p=path: opt.load_state(p), opt, params, before)
        self.refuse_other_variables(comm, self.path("ckpt", good))
        self.refuse_unbuilt(comm, os.path.join(scratch, "flipped_byte_in_shard"))
        self.crash(comm, files, opt, params, before)

    def refuse(self, name, call, opt, params, before, variable_names=None):
        try:
            call()
        except Exception as exc:  # the type is compared across ranks by the test
            error = [type(exc).__name__, str(exc)]
        else:
            error = None
        self.record(name, before, snapshot(opt, params, "plain", variable_names), error=error)

    def refuse_other_variables(self, comm, path):
        """The same configuration over other variables (the first three only)."""
        params = copies(reference("plain", SAVE_AT)[0])[:3]
        opt = sharded(comm, "plain")
        opt.build(params, names=NAMES[:3])
        opt.apply(rank_gradient("plain", 0, comm.rank)[:3])
        before = snapshot(opt, params, "plain", NAMES[:3])
        self.refuse("refuse/other_variables", lambda: opt.load_state(path), opt, params,
                    before, NAMES[:3])

    def refuse_unbuilt(self, comm, path):
        """A damaged checkpoint given to an unbuilt optimizer raises at once; the build
        then makes a fresh state."""
        opt = sharded(comm, "plain")
        params = copies(reference("plain", SAVE_AT)[0])
        try:
            opt.load_state(path)
        except Exception as exc:
            error = [type(exc).__name__, str(exc)]
        else:
            error = None
        opt.build(params, names=NAMES)
        fresh = sharded(comm, "plain")
        fresh_params = copies(params)
        fresh.build(fresh_params, names=NAMES)
        self.record("refuse/unbuilt_flipped_byte", snapshot(fresh, fresh_params, "plain"),
                    snapshot(opt, params, "plain"), error=error)

    def crash(self, comm, files, opt, params, before):
        """A save that fails after the shards, before the manifest: every rank raises, the
        previous checkpoint is untouched and loads as before, no temporary directory is
        left."""
        target = self.path("refusals", "crash")
        if self.rank == 0:
            shutil.copytree(self.path("ckpt", checkpoint_name("plain", 1, 3)), target)
        self.world.Barrier()
        digests = files_digest(target)
        real = files.write_manifest

        def fail(*args):
            raise OSError("the disk went away before the manifest")

        files.write_manifest = fail
        try:
            self.refuse("refuse/crash_before_manifest", lambda: opt.save_state(target), opt,
                        params, before)
        finally:
            files.write_manifest = real
        self.world.Barrier()
        leftovers = sorted(n for n in os.listdir(self.path("refusals")) if ".tmp-" in n)
        intact = files_digest(target) == digests
        self.records.append({"name": "refuse/crash_leaves_files", "ok": intact and not leftovers,
                             "detail": leftovers})
        loaded = sharded(comm, "plain")
        loaded_params = copies(reference("plain", SAVE_AT)[0])
        loaded.build(loaded_params, names=NAMES)
        loaded.load_state(target)
        self.record("refuse/crash_previous_loads", expected("plain", SAVE_AT),
                    snapshot(loaded, loaded_params, "plain"))

    def write(self):
        with open(self.path(f"report-rank{self.rank}.json"), "w") as f:
            json.dump(self.records, f)


def flip(path):
    """Flip the bits of one byte in the middle of the file ``path``."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


# --------------------------------------------------------------------------- devices

def device_resume(outdir):
    """Under the CUDA simulator (or a GPU), one process: float16, float32 and float64
    device variables with EMA, accumulation and clipping by norm. A ``SelfComm`` sharded
    optimizer saves after 3 calls; a fresh one loads and continues 2 calls, and the
    consolidated file continues in a one-process ``na.Adamax``. Both must equal the
    uninterrupted one-process run bit for bit. Returns the list of differences."""
    from numba import cuda

    from numba_adamax import distributed as nad

    def host(x):
        return x.copy_to_host() if hasattr(x, "copy_to_host") else np.array(x)

    def model():
        return [cuda.to_device(np.linspace(-1, 1, 12, dtype=np.float16).reshape(4, 3)),
                cuda.to_device(np.cos(np.arange(7, dtype=np.float32))),
                cuda.to_device(np.sin(np.arange(5, dtype=np.float64)))]

    def grads(k):
        rng = np.random.default_rng(k)
        return [cuda.to_device(rng.standard_normal((4, 3)).astype(np.float16)),
                cuda.to_device(rng.standard_normal(7).astype(np.float32)),
                cuda.to_device(rng.standard_normal(5))]

    settings = {"learning_rate": 0.01, "use_ema": True, "gradient_accumulation_steps": 2,
                "clipnorm": 0.5}
    labels = ["half", "single", "double"]
    uninterrupted = model()
    reference_opt = na.Adamax(**settings)
    reference_opt.build(uninterrupted, names=labels)
    for k in range(5):
        reference_opt.apply(grads(k))
    first = model()
    opt = nad.ShardedAdamax(nad.SelfComm(), deterministic=True, **settings)
    opt.build(first, names=labels)
    for k in range(3):
        opt.apply(grads(k))
    opt.save_state(os.path.join(outdir, "device"))
    nad.consolidate(os.path.join(outdir, "device"), os.path.join(outdir, "device.npz"))
    problems = []
    for kind in ("sharded", "consolidated"):
        params = [cuda.to_device(host(a)) for a in first]
        if kind == "sharded":
            resumed = nad.ShardedAdamax(nad.SelfComm(), deterministic=True, **settings)
        else:
            resumed = na.Adamax(**settings)
        resumed.build(params, names=labels)
        resumed.load_state(os.path.join(outdir, "device" if kind == "sharded" else
                                        "device.npz"))
        for k in range(3, 5):
            resumed.apply(grads(k))
        for i, name in enumerate(labels):
            if host(params[i]).tobytes() != host(uninterrupted[i]).tobytes():
                problems.append(f"{kind}: param {name}")
            for slot in ("m", "u", "ema", "accumulator"):
                got = (resumed.gather_slot(name, slot) if kind == "sharded"
                       else host(resumed.get_slot(name, slot)))
                if got.tobytes() != host(reference_opt.get_slot(name, slot)).tobytes():
                    problems.append(f"{kind}: {slot} of {name}")
        if resumed.iterations != reference_opt.iterations:
            problems.append(f"{kind}: iterations {resumed.iterations}")
    return problems


def main(argv):
    case, outdir = argv[1], argv[2]
    if case == "device":
        with open(os.path.join(outdir, "device.json"), "w") as f:
            json.dump(device_resume(outdir), f)
        return
    if case != "all":
        raise SystemExit(f"unknown case {case!r}")
    scenario = Scenario(outdir)
    scenario.save()
    scenario.load()
    scenario.refusals()
    scenario.write()


if __name__ == "__main__":
    main(sys.argv)
