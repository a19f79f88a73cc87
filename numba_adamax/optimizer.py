"""The ``Adamax`` class: Keras 3's optimizer interface over the functional core."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, NoReturn

import numpy as np

from . import _apply
from . import _checkpoint
from . import _state
from . import _state_dict
from . import _validation as check
from . import functional
from ._apply import BoundStep
from ._hyperparameters import Hyperparameters, from_keywords
from ._state import AdamaxState
from ._typing import Array, Gradients, LearningRate, PathLike, Variables


def _hyperparameter(field, doc):
    def fget(self):
        return getattr(self._hp, field)

    def fset(self, value):
        setattr(self._hp, field, value)

    return property(fget, fset, doc=doc)


# Loads waiting for the build: ``(check, apply)`` pairs of module functions (so that an
# optimizer with a pending load can be pickled), ``check(state, payload)`` returning what
# ``apply(state, payload, checked)`` writes.

def _check_saved_dict(state, d):
    return _state_dict.check_state_dict(d, state)


def _apply_saved_dict(state, d, checked):
    _state_dict.apply_state_dict(d, checked, state)


def _check_saved_weights(state, weights):
    return _state_dict.check_weights(state, weights, "load_own_variables")


def _apply_saved_weights(state, weights, checked):
    _state_dict.apply_weights(state, checked)


#: Other optimizers' names for settings of this class, for the unknown-attribute message.
_OTHER_NAMES = {"lr": "`learning_rate`", "betas": "`beta_1` and `beta_2`",
                "eps": "`epsilon`", "beta1": "`beta_1`", "beta2": "`beta_2`"}


class Adamax:
    """Adamax (Kingma & Ba, 2015) with Keras 3 semantics and fused Numba kernels.

    Per call, in this order: loss-scale unscaling, gradient accumulation, clipping
    (``clipnorm`` > ``global_clipnorm`` > ``clipvalue``), decoupled weight decay
    ``w -= w * weight_decay * lr``, then::

        m = m + (g - m) * (1 - beta_1)
        u = max(beta_2 * u, |g|)                 # NaN-propagating
        w = w - (lr * m) / ((1 - beta_1**t) * (u + epsilon))

    then the EMA of the weights and its optional overwrite. ``t`` counts updates
    (not accumulation micro-steps). Variables are numpy arrays updated in place.

    Arguments are those of ``keras.optimizers.Adamax`` with the same defaults; the
    TF 1.x keywords ``lr`` (alias of ``learning_rate``) and ``decay`` (inverse-time
    decay) are accepted with a ``DeprecationWarning``. Every argument is validated
    (``ValueError`` naming it), also when set later as an attribute.

    ``nonfinite`` (not in Keras) says what a call does when a gradient holds NaN or
    inf: ``"propagate"`` (Keras' behaviour: the values flow into the state),
    ``"skip"`` (the call changes nothing but ``skipped_steps``) or ``"raise"``
    (``FloatingPointError`` before anything changes).

    Variables may also be CUDA device arrays (Numba device arrays, CuPy arrays,
    PyTorch CUDA tensors: anything with ``__cuda_array_interface__``), updated in
    place on the GPU with no copy; ``stream`` (not in Keras) is the ``numba.cuda``
    stream their steps run on (None: the default stream). See the GPU guide.

    Assigning an attribute the class does not define (``opt.lr = ...``, which the
    steps would ignore) raises ``AttributeError`` naming the setting meant; names
    starting with ``_`` are free for subclasses. ``copy.deepcopy`` and pickling copy
    the settings and the state (over copies of the variables: see ``AdamaxState``).
    """

    def __init__(self, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 use_ema: bool = False, ema_momentum: float = 0.99,
                 ema_overwrite_frequency: int | None = None,
                 loss_scale_factor: float | None = None,
                 gradient_accumulation_steps: int | None = None, name: str = "adamax",
                 nonfinite: str = "propagate", stream: Any = None, **kwargs: Any) -> None:
        learning_rate, decay = from_keywords(learning_rate, kwargs)
        self._reset(Hyperparameters(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, decay=decay,
            nonfinite=nonfinite, name=name))
        self.stream = stream

    def _reset(self, hp):
        """Take ``hp`` as the settings, unbuilt and with no weight-decay exclusions."""
        self._hp = hp
        self._state = None
        self._exclusions = (None, None)  # (compiled var_names pattern, var_list)
        self._pending = None  # a load waiting for the build: (check, apply, payload)
        self._stream = None

    beta_1 = _hyperparameter("beta_1", "Exponential decay rate of the first moment, in [0, 1).")
    beta_2 = _hyperparameter("beta_2", "Decay rate of the infinity norm, in [0, 1).")
    epsilon = _hyperparameter("epsilon", "Added to the infinity norm in the denominator, >= 0.")
    weight_decay = _hyperparameter("weight_decay", "Decoupled weight decay rate, or None.")
    clipnorm = _hyperparameter("clipnorm", "Per-variable gradient norm limit, or None.")
    clipvalue = _hyperparameter("clipvalue", "Elementwise gradient limit, or None.")
    global_clipnorm = _hyperparameter("global_clipnorm", "Global gradient norm limit, or None.")
    use_ema = _hyperparameter("use_ema", "Whether to keep an EMA of the variables.")
    ema_momentum = _hyperparameter("ema_momentum", "EMA momentum, in [0, 1].")
    ema_overwrite_frequency = _hyperparameter(
        "ema_overwrite_frequency", "Every how many iterations the EMA overwrites the variables.")
    loss_scale_factor = _hyperparameter(
        "loss_scale_factor", "Gradients are divided by this (see ``scale_loss``), or None.")
    gradient_accumulation_steps = _hyperparameter(
        "gradient_accumulation_steps", "Calls averaged into one update, or None.")
    decay = _hyperparameter("decay", "Deprecated TF 1.x inverse-time decay, or None.")
    nonfinite = _hyperparameter(
        "nonfinite", "What a NaN/inf gradient does: 'propagate', 'skip' or 'raise'.")
    name = _hyperparameter("name", "The optimizer's name.")

    # ------------------------------------------------------------ state and counters

    @property
    def stream(self) -> Any:
        """The ``numba.cuda`` stream CUDA steps run on, or None (the default stream).
        Setting it takes effect from the next call."""
        return self._stream

    @stream.setter
    def stream(self, value: Any) -> None:
        self._stream = check.stream(value)
        if self._state is not None:
            self._state.stream = self._stream

    @property
    def state(self) -> AdamaxState | None:
        """The ``AdamaxState`` (None before build); the same record ``numba_adamax.step`` uses."""
        return self._state

    @property
    def built(self) -> bool:
        """True once the slots exist."""
        return self._state is not None

    @property
    def iterations(self) -> int:
        """Completed updates (Keras' property): calls, or calls // gradient_accumulation_steps."""
        return 0 if self._state is None else self._state.iterations

    @property
    def skipped_steps(self) -> int:
        """Calls dropped by ``nonfinite="skip"`` (they are not counted in ``iterations``)."""
        return 0 if self._state is None else self._state.skipped_steps

    @property
    def learning_rate(self) -> float:
        """The learning rate the next call will use, as a float (schedule and decay applied)."""
        return self._hp.learning_rate_at(0 if self._state is None else self._state.raw_steps)

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        self._hp.set_learning_rate(value)

    def build(self, variables: Variables, names: Iterable[str] | None = None) -> None:
        """Allocate the slots for ``variables`` (list/tuple of arrays, dict name -> array,
        or a ``FlatBuffer``).

        Does nothing if already built. Mutates only this optimizer.
        """
        if self._state is None:
            self._adopt(self._new_state(variables, names))

    def _new_state(self, variables, names=None):
        """A fresh state for ``variables`` with any pending load applied (the load is
        checked again against it first). The optimizer itself is not changed."""
        state = _state.create(variables, names, self._hp)
        if self._pending is not None:
            check_pending, apply_pending, payload = self._pending
            apply_pending(state, payload, check_pending(state, payload))
        return state

    def _adopt(self, state):
        functional.adopt(state, self._exclusions, self._stream)
        self._state = state
        self._pending = None

    # ------------------------------------------------------------ stepping

    def apply(self, grads: Gradients, variables: Variables | None = None) -> None:
        """Apply one optimizer call: update ``variables`` and the slots in place.

        ``grads`` is a list/tuple (matched to ``variables`` by position) or a dict
        (matched by key); ``None`` entries skip their variable with a warning, and
        an ``IndexedSlices`` entry updates only the rows it names (lazy, as in TF 1.x).
        Without ``variables`` the optimizer must be built and ``grads`` covers every
        built variable (or, as a dict, names some of them). The first call builds.
        Every input is validated before anything (the build included) changes.

        With ``variables`` a ``FlatBuffer`` (or omitted after building on one) and
        ``grads`` a ``FlatBuffer`` of the same layout, the gradients are checked in
        O(1); other ``FlatBuffer`` arguments count as lists of their arrays.
        """
        if isinstance(grads, (list, tuple)) and not grads:
            return
        state = self._state
        fresh = state is None
        if fresh:
            if variables is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built on a list of variables. Call "
                                 "`optimizer.build(variables)` first.")
            state = self._new_state(variables)
        grads, passed = functional.match(state, grads, variables)
        if not fresh:
            _apply.run(state, grads, passed)
            return
        call = _apply.prepare(state, grads, passed)
        self._adopt(state)  # only now: a failed first call builds nothing
        _apply.commit(call)

    def bind(self, grads: Gradients, variables: Variables | None = None) -> BoundStep:
        """A ``BoundStep``: ``apply(grads, variables)`` with these very arrays, matched
        and checked once; each call of the result applies one step with the arrays'
        current contents (write the gradients into them in place), at a fraction of
        ``apply``'s fixed cost. The optimizer is built here if it is not yet
        (``variables`` are then required). ``grads`` are dense arrays or None, as a
        list, dict or ``FlatBuffer``. Nothing changes if a check fails.
        """
        state = self._state
        fresh = state is None
        if fresh:
            if variables is None:
                raise ValueError("`bind` needs `variables` until the optimizer is built.")
            state = self._new_state(variables)
        grads, _ = functional.match(state, grads, variables)
        bound = functional._bound(state, grads)
        if fresh:
            self._adopt(state)
        return bound

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Array]]) -> int:
        """``apply`` on a sequence of ``(gradient, variable)`` pairs; returns the call count."""
        pairs = check.sequence(list(grads_and_vars), "`grads_and_vars`")
        grads = [g for g, _ in pairs]
        variables = [v for _, v in pairs]
        self.apply(grads, variables)
        return 0 if self._state is None else self._state.raw_steps

    def scale_loss(self, loss: Any) -> Any:
        """``loss * loss_scale_factor`` when the factor is set, else ``loss``."""
        factor = self._hp.loss_scale_factor
        return loss if factor is None else loss * factor

    def finalize_variable_values(self, variables: Variables) -> None:
        """With ``use_ema``, copy the EMA averages into ``variables`` (positionally).

        Mutates ``variables``; does nothing without ``use_ema``.
        """
        if not self._hp.use_ema:
            return
        if isinstance(variables, dict):
            variables = list(variables.values())
        variables = check.sequence(variables, "`variables`")
        averages = () if self._state is None else self._state.ema
        if len(variables) != len(averages):
            raise ValueError(f"The length of model variables ({len(variables)}) to override "
                             f"does not match the length of EMA averages ({len(averages)}).")
        for j, v in enumerate(variables):
            check.variable(v, f"variables[{j}]")
            check.like_variable(v, self._state.arrays[j], f"variables[{j}]")
        state = self._state
        for v, average in zip(variables, averages):
            state.backend.assign(v, average, state.stream)

    def exclude_from_weight_decay(self, var_list: Iterable[Array] | None = None,
                                  var_names: Iterable[str] | None = None) -> None:
        """Exclude variables from weight decay: those in ``var_list`` (by identity) and those
        whose name contains a match of a regex in ``var_names`` (each must compile on its
        own). Replaces earlier calls; takes effect from the next step."""
        pattern = check.exclusion_pattern(var_names)
        listed = None if var_list is None else list(check.sequence(var_list, "`var_list`",
                                                                   "a list or a tuple"))
        self._exclusions = (pattern, listed)
        if self._state is not None:
            self._state.set_weight_decay_exclusions(pattern, listed)

    # ------------------------------------------------------------ state surface

    @property
    def variables(self) -> list[Any]:
        """State arrays in Keras order: a 0-d int64 snapshot of the call counter, EMA
        averages, accumulators, then m0, u0, m1, u1, ... (live views of the slots)."""
        counter = np.array(0 if self._state is None else self._state.raw_steps, np.int64)
        return [counter] + ([] if self._state is None else self._state.state_arrays())

    def get_slot(self, variable: Array | str, slot_name: str) -> Any:
        """The slot ``slot_name`` (``"m"``, ``"u"``/``"v"``, ``"ema"``, ``"accumulator"``)
        of ``variable`` (the array or its name), as a live view."""
        state = self._require_built("get_slot")
        i = (state.name_index.get(variable) if isinstance(variable, str)
             else state.index_of(variable))
        if i is None:
            raise ValueError(f"Unknown variable name {variable!r}.")
        return state.slot(i, slot_name)

    def get_slot_names(self) -> list[str]:
        """``["m", "u"]``, plus ``"ema"`` with ``use_ema`` and ``"accumulator"`` with
        gradient accumulation."""
        return _state.slot_names(self._hp.use_ema,
                                 self._hp.gradient_accumulation_steps is not None)

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of ``variables``."""
        return _state_dict.weights(self._state)

    def set_weights(self, weights: Iterable[Any]) -> None:
        """Load arrays in ``variables`` order (counter first). Everything is checked
        (count, shapes, dtypes, counter) before anything is written."""
        state = self._require_built("set_weights")
        _state_dict.apply_weights(state, _state_dict.check_weights(state, weights))

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The whole optimizer state as a plain dict (see ``AdamaxState.state_dict``):
        format version, JSON config, counters, names, shapes, dtypes and every slot as
        a NumPy copy. Needs a built optimizer."""
        return self._require_built("state_dict").state_dict()

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output: every slot, ``iterations`` and
        ``skipped_steps``; the hyperparameters in force are kept.

        Everything is checked before anything changes (``TypeError``/``ValueError``
        naming the field). On an unbuilt optimizer the dict is checked as far as it
        can be now, copied, and applied by the build (``build`` or the first
        ``apply``), which checks it again against the variables and fails, building
        nothing, if they do not match.
        """
        saved = _state_dict.check_state_dict(d, self._state)
        if self._state is not None:
            _state_dict.apply_state_dict(d, saved, self._state)
            return
        _state_dict.state_dict_config_matches(saved[0], self._hp)
        self._pending = (_check_saved_dict, _apply_saved_dict, _state_dict.detached(d))

    def save_state(self, path: PathLike) -> None:
        """Write ``state_dict()`` to ``path``: one ``.npz`` file, replaced atomically,
        with a SHA-256 checksum. Needs a built optimizer; mutates only the file."""
        _checkpoint.write(self.state_dict(), path)

    def load_state(self, path: PathLike) -> None:
        """``load_state_dict`` from a file written by ``save_state`` (or
        ``numba_adamax.save_state``). A truncated or corrupted file raises
        ``CheckpointError`` (a ``ValueError``) and changes nothing."""
        self.load_state_dict(_checkpoint.read(path))

    def save_own_variables(self, store: MutableMapping[str, Any]) -> None:
        """Keras' layout: ``store[str(i)] = `` a host copy of ``variables[i]`` (the call
        counter, EMA averages, accumulators, then m0, u0, ...). ``skipped_steps`` is not
        part of it."""
        for i, array in enumerate(_state_dict.weights(self._state)):
            store[str(i)] = array

    def load_own_variables(self, store: Mapping[str, Any]) -> None:
        """Load what ``save_own_variables`` wrote. ``store`` maps ``"0"``, ``"1"``, ... to
        arrays. Stricter than Keras, which warns and skips on a count mismatch: a wrong
        count, key, shape or dtype raises ``ValueError``/``TypeError`` and nothing changes.
        On an unbuilt optimizer the arrays are copied and applied by the build."""
        keys = sorted(store.keys(), key=str)
        expected = sorted((str(i) for i in range(len(keys))), key=str)
        if keys != expected:
            raise ValueError(f"The store's keys must be '0', '1', ..., got {keys}.")
        weights = [store[str(i)] for i in range(len(keys))]
        if self._state is not None:
            _state_dict.apply_weights(self._state, _state_dict.check_weights(
                self._state, weights, "load_own_variables"))
            return
        if not weights:
            raise ValueError("The store is empty; expected the counter under '0' first.")
        self._pending = (_check_saved_weights, _apply_saved_weights,
                         [np.array(w, copy=True) for w in weights])

    def _require_built(self, what):
        if self._state is None:
            raise ValueError(f"`{what}` needs a built optimizer; call `build(variables)` "
                             "or `apply` first.")
        return self._state

    # ------------------------------------------------------------ config

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a dict (Keras' 14 keys, plus ``decay`` when set).

        A float learning rate is exact; a schedule is serialised Keras-style; a
        callable is returned as is (it cannot survive JSON).
        """
        return self._hp.get_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    custom_objects: Mapping[str, Any] | None = None) -> Adamax:
        """Build an optimizer from ``get_config()`` output (JSON round-trip safe)."""
        hp = Hyperparameters.from_config(config, custom_objects=custom_objects)
        optimizer = cls.__new__(cls)
        optimizer._reset(hp)
        return optimizer

    # ------------------------------------------------------------ attributes, copies

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(self._unknown_attribute(name) + " An unknown attribute is "
                                 "refused rather than stored, since the steps would ignore it.")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> NoReturn:
        # only called when the normal lookup failed
        raise AttributeError(self._unknown_attribute(name))

    def _unknown_attribute(self, name):
        """The message for ``name``, which this class does not define: the setting
        meant, when another optimizer's name or a near miss says which."""
        public = [n for n in dir(type(self)) if not n.startswith("_")]
        meant = _OTHER_NAMES.get(name) or ", ".join(
            f"`{n}`" for n in difflib.get_close_matches(name, public, n=2))
        hint = f"; did you mean {meant}?" if meant else "."
        return f"{type(self).__name__!r} object has no attribute {name!r}{hint}"

    def __getstate__(self) -> dict[str, Any]:
        if self._stream is not None:
            raise TypeError("An Adamax with a CUDA stream cannot be pickled or copied; set "
                            "`stream = None` first.")
        return dict(self.__dict__)

    def __repr__(self) -> str:
        settings = ", ".join(f for f in self._hp.changed_settings() if not f.startswith("name="))
        size = "" if self._state is None else (
            f", variables={len(self._state.params)}, "
            f"elements={sum(a.size for a in self._state.arrays)}")
        return (f"Adamax(name={self.name!r}, {settings}, built={self.built}{size}, "
                f"iterations={self.iterations})")
