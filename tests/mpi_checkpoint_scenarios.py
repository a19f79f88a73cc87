"""Sharded-checkpoint scenarios that need several ranks, run by
``tests/test_distributed_checkpoint.py`` as

    mpiexec -n N python -m mpi4py tests/mpi_checkpoint_scenarios.py all OUTDIR

(``python -m mpi4py`` turns an exception on one rank into an abort of the whole job).

One launch of N ranks:

* ``layouts``: saves the synthetic checkpoint ``synth-N`` and the real-state checkpoint
  ``e2e-N`` (from ``OUTDIR/state.npz``, written by the test) with random uneven layouts;
  loads every ``synth-K`` already in OUTDIR (K <= N) at N ranks, and ``synth-N`` at every
  M < N ranks (a sub-communicator of the first M ranks), and ``state.npz`` sliced; every
  element must equal the reference bit for bit.
* ``errors``: missing shard, flipped byte in a shard, missing, corrupted and foreign
  manifests, a mismatch found by ``expect`` on one rank only: each must raise on every
  rank, with the caller's arrays and every file unchanged.
* ``crash``: a save whose manifest write fails leaves the previous checkpoint loadable
  and no temporary directory; a save over a checkpoint replaces it.
* ``arguments``: bad arguments on one rank (or a cover that is incomplete or
  overlapping across ranks) raise the same error on every rank and write nothing.

Each rank writes ``OUTDIR/report-N-rank<r>.json``: per case, the exception type and
message it saw (or ``"ok"``). The reference data and layouts are functions of their
seeds, shared with the test through this module.
"""
import itertools
import json
import os
import shutil
import sys

import numpy as np
from checkpoint_helpers import files_digest

from numba_adamax import _checkpoint as single_file
from numba_adamax.distributed import _checkpoint as sharded
from numba_adamax.distributed import _checkpoint_files as shard_files
from numba_adamax.distributed._checkpoint import Piece

# --------------------------------------------------------------------------- reference data

NAMES = ["table", "empty", "long", "half", "hollow", "short", "scalar"]
SHAPES = [[37, 5], [0], [1000], [3], [2, 0, 3], [11], []]
DTYPES = ["float32", "float64", "float64", "float16", "float32", "float32", "float64"]
SLOT_NAMES = ["m", "u", "ema", "accumulator"]
#: Variables with an open accumulation window, and the rows touched in it.
TOUCHED = {0: [1, 4, 20, 36], 5: list(range(11))}
CONFIG = {"beta_1": 0.9, "beta_2": 0.999, "clipnorm": None, "clipvalue": None,
          "ema_momentum": 0.99, "ema_overwrite_frequency": None, "epsilon": 1e-07,
          "global_clipnorm": None, "gradient_accumulation_steps": 3, "learning_rate": 0.001,
          "loss_scale_factor": None, "name": "adamax", "use_ema": True, "weight_decay": None}


def sizes(shapes=SHAPES):
    return [int(np.prod(s, dtype=np.int64)) for s in shapes]


def slot_dtype(dtype):
    return np.dtype(np.float32 if dtype == "float16" else dtype)


def synthetic_header(world_size, raw_steps=7):
    return {"config": CONFIG, "raw_steps": raw_steps, "iterations": raw_steps // 3,
            "skipped_steps": 1, "names": NAMES, "shapes": SHAPES, "dtypes": DTYPES,
            "slot_names": SLOT_NAMES, "world_size": world_size, "zero_stage": 1}


def reference_slots(seed=0):
    """Per slot name, per variable, the flattened slot values (special values included:
    NaN, infinities, -0.0, subnormals)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in SLOT_NAMES:
        arrays = []
        for size, dtype in zip(sizes(), DTYPES):
            a = rng.standard_normal(size).astype(slot_dtype(dtype))
            if size >= 4:
                a[:4] = [np.nan, np.inf, -0.0, np.finfo(a.dtype).smallest_subnormal]
            arrays.append(a)
        out[name] = arrays
    return out


def reference_whole():
    return {v: {"touched_rows": np.array(rows, np.int64)} for v, rows in TOUCHED.items()}


def save_layout(world, seed, sizes_=None):
    """Per rank, the pieces it saves: every variable cut at random points, the parts
    dealt to random ranks (the last rank holds nothing when there are 3 or more), the
    longest variable split across every holding rank, empty pieces for some zero-size
    variables, each rank's pieces in a random order."""
    sizes_ = sizes() if sizes_ is None else sizes_
    rng = np.random.default_rng(seed)
    holders = list(range(world - 1 if world >= 3 else world))
    ranks = [[] for _ in range(world)]
    longest = int(np.argmax(sizes_))
    for v, size in enumerate(sizes_):
        if size == 0:
            if rng.random() < 0.5:
                ranks[int(rng.choice(holders))].append(Piece(v, 0, 0))
            continue
        parts = len(holders) if v == longest else int(rng.integers(1, min(4, size) + 1))
        cuts = sorted(rng.choice(np.arange(1, size), parts - 1, replace=False).tolist()) \
            if parts > 1 else []
        bounds = [0, *cuts, size]
        owners = (rng.permutation(holders).tolist() if v == longest
                  else rng.choice(holders, parts).tolist())
        for (begin, end), rank in zip(itertools.pairwise(bounds), owners):
            ranks[rank].append(Piece(v, begin, end))
    for pieces in ranks:
        rng.shuffle(pieces)
    return ranks


def load_layout(world, seed, sizes_=None):
    """Per rank, random pieces to load: any ranges (overlapping between ranks, empty
    ones, whole variables); the last rank asks for nothing when there are 2 or more."""
    sizes_ = sizes() if sizes_ is None else sizes_
    rng = np.random.default_rng(seed)
    ranks = []
    for rank in range(world):
        pieces = []
        if world < 2 or rank < world - 1:
            for _ in range(int(rng.integers(1, 8))):
                v = int(rng.integers(len(sizes_)))
                begin, end = sorted(rng.integers(0, sizes_[v] + 1, 2).tolist())
                pieces.append(Piece(v, begin, end))
            pieces.append(Piece(int(np.argmax(sizes_)), 0, max(sizes_)))
        ranks.append(pieces)
    return ranks


def slices(full, pieces, names):
    """Per slot name, the arrays of ``pieces`` cut out of per-variable ``full`` arrays."""
    return {n: [full[n][p.variable].reshape(-1)[p.begin:p.end].copy() for p in pieces]
            for n in names}


def single_file_slots(d):
    """Per slot name, the per-variable arrays of a format-1 state dict."""
    count, j, out = len(d["names"]), 0, {}
    for name in ("ema", "accumulator"):
        present = (d["config"].get("use_ema") if name == "ema"
                   else d["config"].get("gradient_accumulation_steps") is not None)
        if present:
            out[name], j = d["slots"][j:j + count], j + count
    out["m"], out["u"] = d["slots"][j::2], d["slots"][j + 1::2]
    return out


def header_of(d, world_size):
    names = list(single_file_slots(d))
    header = {k: d[k] for k in ("config", "raw_steps", "iterations", "skipped_steps", "names",
                                "shapes", "dtypes")}
    return {**header, "slot_names": ["m", "u"] + [n for n in names if n not in ("m", "u")],
            "world_size": world_size, "zero_stage": 1}


def bit_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_loaded(result, pieces, full, whole_expected, header_expected):
    """``load``'s result holds exactly the reference elements of ``pieces``."""
    header, slots, whole = result
    assert header == json.loads(json.dumps(header_expected)), (header, header_expected)
    assert list(slots) == list(header["slot_names"])
    for name, arrays in slots.items():
        assert len(arrays) == len(pieces)
        for piece, got in zip(pieces, arrays):
            want = full[name][piece.variable].reshape(-1)[piece.begin:piece.end]
            assert bit_equal(got, want), (name, piece, got, want)
    touched = {p.variable for p in pieces}
    want = {v: arrays for v, arrays in whole_expected.items() if v in touched}
    assert sorted(whole) == sorted(want), (sorted(whole), sorted(want))
    for v, arrays in want.items():
        assert sorted(whole[v]) == sorted(arrays)
        for key, array in arrays.items():
            assert bit_equal(whole[v][key], array), (v, key)


# --------------------------------------------------------------------------- the cases

class Scenario:
    def __init__(self, outdir):
        from mpi4py import MPI

        from numba_adamax.distributed import MPIComm
        self.MPI, self.MPIComm = MPI, MPIComm
        self.world = MPI.COMM_WORLD
        self.comm = MPIComm(self.world)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.outdir = outdir
        self.report = {}

    def path(self, *parts):
        return os.path.join(self.outdir, *parts)

    def record(self, case, call):
        """Run ``call``; record what it raised (type and message) or "ok"."""
        try:
            call()
        except (TypeError, ValueError, OSError) as exc:  # compared across ranks by the test
            self.report[case] = [type(exc).__name__, str(exc)]
        else:
            self.report[case] = "ok"

    def save_synthetic(self, target, comm=None, seed=0, raw_steps=7):
        comm = comm or self.comm
        pieces = save_layout(comm.size, seed=100 + comm.size)[comm.rank]
        whole = {v: a for v, a in reference_whole().items() if v % comm.size == comm.rank}
        sharded.save(target, comm, header=synthetic_header(comm.size, raw_steps),
                     pieces=pieces, slots=slices(reference_slots(seed), pieces, SLOT_NAMES),
                     whole=whole)

    # ---------------------------------------------------------------- layouts

    def layouts(self):
        n = self.size
        self.save_synthetic(self.path(f"synth-{n}"))
        state = single_file.read(self.path("state.npz"))
        full = single_file_slots(state)
        state_sizes = sizes(state["shapes"])
        pieces = save_layout(n, seed=200 + n, sizes_=state_sizes)[self.rank]
        rows = {v: {"touched_rows": np.array(r, np.int64)}
                for v, r in enumerate(state["touched_rows"]) if r and v % n == self.rank}
        header = header_of(state, n)
        sharded.save(self.path(f"e2e-{n}"), self.comm, header=header, pieces=pieces,
                     slots=slices(full, pieces, header["slot_names"]), whole=rows)
        self.report["saved"] = [f"synth-{n}", f"e2e-{n}"]

        loaded = []
        for k in range(1, n + 1):
            if os.path.isdir(self.path(f"synth-{k}")):
                self.load_synthetic(k, self.comm)
                loaded.append([k, n])
        for m in range(1, n):
            sub = self.world.Split(0 if self.rank < m else self.MPI.UNDEFINED, self.rank)
            if sub != self.MPI.COMM_NULL:
                self.load_synthetic(n, self.MPIComm(sub))
                sub.Free()
            loaded.append([n, m])
            self.world.Barrier()
        self.report["loaded"] = loaded

        whole = {v: {"touched_rows": np.array(r, np.int64)}
                 for v, r in enumerate(state["touched_rows"]) if r}
        for source in ("state.npz", f"e2e-{n}"):
            pieces = load_layout(n, seed=300 + n, sizes_=state_sizes)[self.rank]
            want = header_of(state, 1 if source == "state.npz" else n)
            if source == "state.npz":
                want["zero_stage"] = 0
            result = sharded.load(self.path(source), self.comm, pieces=pieces,
                                  expect=lambda h: None)
            check_loaded(result, pieces, full, whole, want)
        self.report["layouts"] = "ok"

    def load_synthetic(self, saved_at, comm):
        pieces = load_layout(comm.size, seed=1000 * saved_at + comm.size)[comm.rank]
        seen = []
        result = sharded.load(self.path(f"synth-{saved_at}"), comm, pieces=pieces,
                              expect=seen.append)
        assert seen == [synthetic_header(saved_at)]
        check_loaded(result, pieces, reference_slots(), reference_whole(),
                     synthetic_header(saved_at))

    # ---------------------------------------------------------------- errors

    def errors(self):
        n = self.size
        source = self.path(f"synth-{n}")
        other = self.path(f"errors-{n}", "other")
        if self.rank == 0:
            os.mkdir(self.path(f"errors-{n}"))
        self.world.Barrier()
        self.save_synthetic(other)  # the same content, another save
        manifest = shard_files.MANIFEST
        shard = shard_files.shard_name(max(n - 2, 0), n)  # held by one loading rank only
        cases = {
            "missing shard": lambda d: os.unlink(os.path.join(d, shard)),
            "flipped shard": lambda d: _flip(os.path.join(d, shard), 0.5),
            "missing manifest": lambda d: os.unlink(os.path.join(d, manifest)),
            "corrupt manifest": lambda d: _flip(os.path.join(d, manifest), 0.3),
            "foreign manifest": lambda d: shutil.copyfile(os.path.join(other, manifest),
                                                          os.path.join(d, manifest)),
            "other tool's manifest": lambda d: _write(os.path.join(d, manifest),
                                                      b'{"version": 1}\n'),
            "expect refuses on the last rank": lambda d: None,
        }
        # every rank loads back what it saved: the damaged shard is read by one rank only
        pieces = save_layout(n, seed=100 + n)[self.rank]
        for case, damage in cases.items():
            target = self.path(f"errors-{n}", case.replace(" ", "_").replace("'", ""))
            if self.rank == 0:
                shutil.copytree(source, target)
                damage(target)
            self.world.Barrier()
            before = files_digest(self.path(f"errors-{n}"))
            live = {name: [np.full(p.end - p.begin, 7.0) for p in pieces] for name in SLOT_NAMES}
            snapshot = {name: [a.copy() for a in arrays] for name, arrays in live.items()}

            def expect(header, case=case):
                if case.startswith("expect") and self.rank == self.size - 1:
                    raise ValueError(f"the loading optimizer has zero_stage=2, the checkpoint "
                                     f"{header['zero_stage']}")

            def call(target=target, expect=expect, live=live):
                _, slots, _ = sharded.load(target, self.comm, pieces=pieces, expect=expect)
                for name in SLOT_NAMES:  # what a caller does once every check passed
                    for dst, src in zip(live[name], slots[name]):
                        dst[...] = src

            self.record(case, call)
            assert files_digest(self.path(f"errors-{n}")) == before, case
            assert all(bit_equal(a, b) for name in SLOT_NAMES
                       for a, b in zip(live[name], snapshot[name])), case
            self.world.Barrier()

    # ---------------------------------------------------------------- crash

    def crash(self):
        n = self.size
        target = self.path(f"crash-{n}")
        self.save_synthetic(target, seed=0, raw_steps=7)
        original = shard_files.write_manifest

        def dies(*args, **kwargs):
            raise OSError("simulated crash before the manifest")

        shard_files.write_manifest = dies
        try:
            self.record("manifest write fails",
                        lambda: self.save_synthetic(target, seed=5, raw_steps=10))
        finally:
            shard_files.write_manifest = original
        self.world.Barrier()
        leftovers = sorted(os.listdir(self.outdir))
        assert not [name for name in leftovers if ".tmp-" in name], leftovers
        self.load_synthetic_from(target, seed=0, raw_steps=7)
        self.save_synthetic(target, seed=5, raw_steps=10)  # over the old one
        self.load_synthetic_from(target, seed=5, raw_steps=10)
        self.report["crash"] = "ok"

    def load_synthetic_from(self, target, seed, raw_steps):
        pieces = load_layout(self.size, seed=77)[self.rank]
        result = sharded.load(target, self.comm, pieces=pieces, expect=lambda h: None)
        check_loaded(result, pieces, reference_slots(seed), reference_whole(),
                     synthetic_header(self.size, raw_steps))

    # ---------------------------------------------------------------- arguments

    def arguments(self):
        n = self.size
        pieces = save_layout(n, seed=100 + n)[self.rank]
        full = reference_slots()
        last = n - 1 if n < 3 else n - 2  # a rank that holds pieces

        def attempt(case, change):
            header, p = synthetic_header(n), list(pieces)
            slots = slices(full, p, SLOT_NAMES)
            whole = {}
            header, p, slots, whole = change(header, p, slots, whole)
            target = self.path(f"arguments-{n}")
            before = sorted(os.listdir(self.outdir))
            self.record(case, lambda: sharded.save(target, self.comm, header=header, pieces=p,
                                                   slots=slots, whole=whole))
            self.world.Barrier()
            assert sorted(os.listdir(self.outdir)) == before, case

        def on_last(function):
            def change(header, p, slots, whole):
                return function(header, p, slots, whole) if self.rank == last else (
                    header, p, slots, whole)
            return change

        def short_slot(header, p, slots, whole):
            i = first_full(p)
            slots["u"][i] = slots["u"][i][:-1]
            return header, p, slots, whole

        def drop_piece(header, p, slots, whole):
            i = first_full(p)
            return header, p[:i] + p[i + 1:], {k: v[:i] + v[i + 1:] for k, v in slots.items()}, \
                whole

        def duplicate_piece(header, p, slots, whole):
            held = save_layout(n, seed=100 + n)[0] if n > 1 else p
            other = held[first_full(held)]
            return header, [*p, other], {k: [*v, full[k][other.variable].reshape(-1)[
                other.begin:other.end].copy()] for k, v in slots.items()}, whole

        def other_header(header, p, slots, whole):
            return {**header, "raw_steps": 8}, p, slots, whole

        def wrong_world(header, p, slots, whole):
            return {**header, "world_size": n + 1}, p, slots, whole

        def tuple_piece(header, p, slots, whole):
            return header, [(p[0].variable, p[0].begin, p[0].end), *p[1:]], slots, whole

        def whole_twice(header, p, slots, whole):
            return header, p, slots, {0: {"touched_rows": np.array([1, 2])}}

        attempt("slot of the wrong length", on_last(short_slot))
        attempt("a piece missing", on_last(drop_piece))
        attempt("a piece held twice", on_last(duplicate_piece))
        attempt("wrong world size", wrong_world)
        attempt("not a Piece", on_last(tuple_piece))
        if n > 1:  # conflicts between ranks
            attempt("the header differs", on_last(other_header))
            attempt("whole array given twice", whole_twice)


def first_full(pieces):
    """The index of the first piece that holds elements."""
    return next(i for i, p in enumerate(pieces) if p.end > p.begin)


def _flip(path, where):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[int(len(data) * where)] ^= 0x01
        f.seek(0)
        f.write(data)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


CASES = ("layouts", "errors", "crash", "arguments")


def main(case, outdir):
    scenario = Scenario(outdir)
    for name in (CASES if case == "all" else (case,)):
        getattr(scenario, name)()
        scenario.world.Barrier()
    with open(os.path.join(outdir, f"report-{scenario.size}-rank{scenario.rank}.json"),
              "w") as f:
        json.dump(scenario.report, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
