"""``ShardedAdamax`` (the ``Adamax`` interface over a process group) and the
functional ``init``/``step`` pair over a ``ShardedState``."""
import numpy as np

from .. import _validation as check
from .. import functional
from .._hyperparameters import Hyperparameters
from .._indexed_slices import IndexedSlices
from ..optimizer import Adamax
from ._collective import together
from ._comm import Comm
from . import _checkpoint_bridge
from ._buffers import host_copy, write_host
from ._sharded import ShardedState


def _options(comm, zero_stage, reduce, deterministic):
    check.communicator(comm, Comm)
    return (check.zero_stage(zero_stage), check.reduction(reduce),
            check.boolean("deterministic", deterministic))


def _agree_settings(comm, settings):
    """Raise ``ValueError`` on every rank when the ranks were given different settings
    (the options, and whether the communicator moves device memory)."""
    everyone = comm.allgather_object(settings)
    if any(s != settings for s in everyone):
        raise ValueError("The ranks were given different optimizer settings; every rank must "
                         f"pass the same arguments. Per rank: {everyone}")


class ShardedAdamax(Adamax):
    """``Adamax`` over the ranks of ``comm``: every rank passes its local gradients,
    they are summed (``reduce="sum"``) or averaged (``"mean"``) across the ranks, and
    the update of that reduced gradient is the single-process one.

    ``zero_stage=0`` keeps the whole optimizer state on every rank (data parallel);
    ``zero_stage=1`` splits m, u, the EMA and the accumulator into per-rank shards
    (about 1/N each) and all-gathers the updated variables. ``deterministic=True`` adds
    the ranks' gradients in rank order (``r0 + r1 + ...``, in the gradient dtype), so a
    step equals one process given that sum, bit for bit, at any N; otherwise the
    communicator's own reduction is used. ``sparse_variables`` (names or indices)
    declares the variables that receive ``IndexedSlices``: each is owned whole by one
    rank. Without it, a build by the first ``apply`` takes the variables given
    ``IndexedSlices`` there; an explicit ``build`` (or ``init``) declares none. Every
    other argument is ``Adamax``'s, validated the same way.

    ``build``, ``apply``, ``finalize_variable_values``, ``gather_slot``,
    ``save_state`` and ``load_state`` are collective: every rank calls them in the same
    order. Any bad argument raises the same exception on every rank before anything
    changes.
    """

    def __init__(self, comm, zero_stage=1, reduce="mean", deterministic=False, *,
                 sparse_variables=None, **kwargs):
        options = together(comm, _options, comm, zero_stage, reduce, deterministic) \
            if isinstance(comm, Comm) else _options(comm, zero_stage, reduce, deterministic)
        together(comm, super().__init__, **kwargs)
        self._comm = comm
        self._zero_stage, self._reduce, self._deterministic = options
        self._sparse_variables = sparse_variables
        self._pending_path = None
        _agree_settings(comm, (options, repr(sparse_variables), self._hp.changed_settings(),
                               comm.moves_device_memory))

    @property
    def comm(self) -> Comm:
        """The communicator."""
        return self._comm

    @property
    def zero_stage(self) -> int:
        """0 (data parallel) or 1 (sharded optimizer state)."""
        return self._zero_stage

    @property
    def reduce(self) -> str:
        """``"sum"`` or ``"mean"`` of the ranks' gradients."""
        return self._reduce

    @property
    def deterministic(self) -> bool:
        """Whether the gradients are added in rank order."""
        return self._deterministic

    # ------------------------------------------------------------ building

    def build(self, variables, names=None) -> None:
        """Allocate this rank's slots for ``variables`` (collective; the same structure on
        every rank). Does nothing if already built."""
        if self._state is None:
            self._adopt(self._new_state(variables, names))

    def _new_state(self, variables, names=None, sparse_variables=None):
        """The state for ``variables`` (collective), with ``sparse_variables`` or else
        the constructor's as the sparse ones; loads a pending checkpoint."""
        if sparse_variables is None:
            sparse_variables = self._sparse_variables
        state = together(self._comm, ShardedState, self._comm, variables, names, self._hp,
                         zero_stage=self._zero_stage, reduce=self._reduce,
                         deterministic=self._deterministic,
                         sparse_variables=sparse_variables)
        _agree_plan(state)
        state.set_weight_decay_exclusions(*self._exclusions)  # before a first call's step
        if self._pending_path is not None:
            _checkpoint_bridge.load(state, self._pending_path)
        return state

    def _adopt(self, state):
        super()._adopt(state)
        self._pending_path = None

    # ------------------------------------------------------------ stepping

    def apply(self, grads, variables=None) -> None:
        """One collective optimizer call: ``grads`` are this rank's gradients (a list,
        dict or ``FlatBuffer`` as for ``Adamax.apply``); the variables end up equal on
        every rank. The first call builds; without ``sparse_variables``, the variables
        whose gradients it is given as ``IndexedSlices`` become the sparse ones. Every
        rank must pass the same pattern of None and ``IndexedSlices`` gradients."""
        state = self._state
        fresh = state is None
        if fresh:
            together(self._comm, _require_variables, variables)
            sparse = self._sparse_variables
            if sparse is None:  # not declared: this call's IndexedSlices
                sparse = _sparse_positions(grads, variables)
            state = self._new_state(variables, sparse_variables=sparse)
        grads, kinds = state.prepare(grads, variables)
        state.run(grads, kinds)
        if fresh:
            self._adopt(state)

    def bind(self, grads, variables=None):
        """Not available: a sharded call is collective and reduces new gradients every
        time; raises ``TypeError``."""
        raise TypeError("ShardedAdamax has no `bind`; call `apply(grads, variables)` on every "
                        "rank.")

    def finalize_variable_values(self, variables) -> None:
        """With ``use_ema``, copy the (gathered) EMA averages into ``variables``
        (collective); does nothing without ``use_ema``."""
        if not self._hp.use_ema:
            return
        state = self._require_built("finalize_variable_values")
        targets = together(self._comm, _finalize_targets, state, variables)
        state.finalize(targets)

    # ------------------------------------------------------------ state surface

    @property
    def local_nbytes(self) -> int:
        """Bytes of optimizer state (slot buffers) this rank holds."""
        return 0 if self._state is None else self._state.local_nbytes

    def get_slot(self, variable, slot_name: str):
        """This rank's piece of the slot (a live view: shaped like the variable when the
        rank holds it whole, else 1-D), or None when it holds no part of it."""
        state = self._require_built("get_slot")
        return state.local_slot(state.variable_index(variable), slot_name)

    def gather_slot(self, variable, slot_name: str) -> np.ndarray:
        """The whole slot ``slot_name`` of ``variable`` (the array or its name) on every
        rank, as a new array (collective)."""
        state = together(self._comm, self._require_built, "gather_slot")
        i = together(self._comm, _slot_index, state, variable, slot_name)
        if slot_name == "v":
            slot_name = "u"
        return state.gather_slot(i, slot_name)

    def _single_process_only(self, *args, **kwargs):
        raise TypeError("A ShardedAdamax holds only this rank's part of the slots; use "
                        "`gather_slot(variable, slot)` for one slot, or `save_state(path)` / "
                        "`load_state(path)` for checkpoints.")

    state_dict = load_state_dict = get_weights = set_weights = _single_process_only
    save_own_variables = load_own_variables = _single_process_only

    @property
    def variables(self):
        """Not available: this rank holds only a part of the slots (TypeError)."""
        self._single_process_only()

    def save_state(self, path) -> None:
        """Write a checkpoint directory: one file per rank and a manifest (collective)."""
        state = together(self._comm, self._require_built, "save_state")
        _checkpoint_bridge.save(state, path)

    def load_state(self, path) -> None:
        """Load a checkpoint written by ``save_state`` at any world size, or a
        ``numba_adamax.save_state`` file (collective): this rank's slots and the counters
        are replaced; the variables are not part of a checkpoint.

        Everything is checked on every rank first: a missing, corrupted or foreign
        checkpoint, or one of another configuration or other variables, raises
        ``CheckpointError`` on every rank and nothing changes. On an unbuilt optimizer
        the checkpoint is checked as far as it can be without the variables (manifest,
        every shard's digest, the configuration) and loaded by the build (``build`` or
        the first ``apply``), which checks it again and builds nothing if it fails."""
        if self._state is None:
            _checkpoint_bridge.check(self._comm, self._hp, path)
            self._pending_path = path
            return
        _checkpoint_bridge.load(self._state, path)

    def __getstate__(self):
        raise TypeError("A ShardedAdamax cannot be pickled or copied: it belongs to a "
                        "process group. Save it with `save_state`.")


def _require_variables(variables):
    if variables is None:
        raise ValueError("When passing `grads` without `variables`, the optimizer must "
                         "already be built; call `optimizer.build(variables)` first.")


def _sparse_positions(grads, variables):
    """The variables a first call gives ``IndexedSlices`` for: their keys when both
    ``grads`` and ``variables`` are dicts, their positions when both are sequences;
    None when there are none (or the structures differ, which the call's checks
    report). Mutates nothing."""
    if isinstance(grads, dict) and isinstance(variables, dict):
        found = [key for key, g in grads.items() if type(g) is IndexedSlices]
    elif isinstance(grads, (list, tuple)) and isinstance(variables, (list, tuple)):
        found = [k for k, g in enumerate(grads) if type(g) is IndexedSlices]
    else:
        return None
    return found or None


def _slot_index(state, variable, slot_name):
    i = state.variable_index(variable)
    state._check_slot(slot_name)
    return i


def _finalize_targets(state, variables):
    from .._flat_buffer import FlatBuffer
    if isinstance(variables, FlatBuffer):
        variables = list(variables.arrays)
    if isinstance(variables, dict):
        variables = list(variables.values())
    variables = check.sequence(variables, "`variables`")
    if len(variables) != len(state.arrays):
        raise ValueError(f"The length of model variables ({len(variables)}) to override does "
                         f"not match the length of EMA averages ({len(state.arrays)}).")
    for j, v in enumerate(variables):
        check.variable(v, f"variables[{j}]")
        check.like_variable(v, state.arrays[j], f"variables[{j}]")
    return variables


def _agree_plan(state):
    keys = state.comm.allgather_object(state.plan.key())
    if any(k != keys[0] for k in keys):
        raise ValueError("The ranks' variables differ (shapes, dtypes or sparse variables); "
                         "build on the same structure everywhere. Per rank: "
                         f"{[(k[1], k[2]) for k in keys]}")


# ---------------------------------------------------------------- the functional pair


def init(params, comm, *, zero_stage=1, reduce="mean", deterministic=False,
         sparse_variables=None, names=None, exclude_from_weight_decay=None,
         **hyperparameters) -> ShardedState:
    """The sharded optimizer state for ``params`` over ``comm`` (collective): as
    ``numba_adamax.init``, with ``zero_stage``, ``reduce``, ``deterministic`` and
    ``sparse_variables`` as for ``ShardedAdamax``. Mutates nothing."""
    def make():
        options = _options(comm, zero_stage, reduce, deterministic)
        hp = Hyperparameters(**hyperparameters)
        pattern = check.exclusion_pattern(exclude_from_weight_decay)
        return options, hp, pattern

    if not isinstance(comm, Comm):
        make()
    options, hp, pattern = together(comm, make)
    _agree_settings(comm, (options, repr(sparse_variables), hp.changed_settings(),
                           comm.moves_device_memory))
    state = together(comm, ShardedState, comm, params, names, hp, zero_stage=options[0],
                     reduce=options[1], deterministic=options[2],
                     sparse_variables=sparse_variables)
    _agree_plan(state)
    functional.adopt(state, (pattern, None))
    return state


def step(params, grads, state: ShardedState) -> ShardedState:
    """One collective call of the sharded optimizer: ``params`` must be the structure
    given to ``init``; ``grads`` this rank's gradients. Returns ``state``."""
    if not isinstance(state, ShardedState):
        raise TypeError(f"`state` must be the ShardedState of numba_adamax.distributed.init, "
                        f"got {check.describe(state)}; for a single-process state use "
                        "numba_adamax.step.")
    grads, kinds = state.prepare(grads, params, argument="params", in_order=True)
    state.run(grads, kinds)
    return state


def broadcast_(params, comm, root=0) -> None:
    """Copy ``root``'s ``params`` (a ``FlatBuffer`` or a list/tuple/dict of arrays, the
    same structure on every rank; device arrays go through host copies unless the
    communicator moves device memory) into every rank's, in place (collective)."""
    def arrays():
        check.communicator(comm, Comm)
        from .._flat_buffer import FlatBuffer
        if isinstance(params, FlatBuffer):
            return [params.data]
        values = list(params.values()) if isinstance(params, dict) else list(
            check.sequence(params, "`params`"))
        for j, a in enumerate(values):
            check.variable(a, f"params[{j}]")
        return values

    if not isinstance(comm, Comm):
        arrays()
    values = together(comm, arrays)
    shapes = comm.allgather_object([(a.shape, a.dtype.str) for a in values])
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"`params` differ across the ranks (shapes, dtypes): {shapes}")
    for a in values:
        if isinstance(a, np.ndarray) or comm.moves_device_memory:
            comm.bcast_(a.reshape(-1), root)
        else:  # a device array, staged through a host copy
            host = host_copy(a).reshape(-1)
            comm.bcast_(host, root)
            write_host(a, host)
