"""The ``Adamax`` class: Keras 3's optimizer interface over the functional core."""
import numpy as np

from . import _core
from . import _state
from . import _validation as check
from ._hyperparameters import Hyperparameters, from_keywords


def _hyperparameter(field, doc):
    def fget(self):
        return getattr(self._hp, field)

    def fset(self, value):
        setattr(self._hp, field, value)

    return property(fget, fset, doc=doc)


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
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name="adamax",
                 **kwargs):
        learning_rate, decay = from_keywords(learning_rate, kwargs)
        self._reset(Hyperparameters(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, decay=decay, name=name))

    def _reset(self, hp):
        """Take ``hp`` as the settings, unbuilt and with no weight-decay exclusions."""
        self._hp = hp
        self._state = None
        self._exclusions = (None, None)  # (compiled var_names pattern, var_list)

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
    name = _hyperparameter("name", "The optimizer's name.")

    # ------------------------------------------------------------ state and counters

    @property
    def state(self):
        """The ``AdamaxState`` (None before build); the same record ``numba_adamax.step`` uses."""
        return self._state

    @property
    def built(self):
        """True once the slots exist."""
        return self._state is not None

    @property
    def iterations(self):
        """Completed updates (Keras' property): calls, or calls // gradient_accumulation_steps."""
        return 0 if self._state is None else self._state.iterations

    @property
    def learning_rate(self):
        """The learning rate the next call will use, as a float (schedule and decay applied)."""
        return self._hp.learning_rate_at(0 if self._state is None else self._state.raw_steps)

    @learning_rate.setter
    def learning_rate(self, value):
        self._hp.set_learning_rate(value)

    def build(self, variables, names=None):
        """Allocate the slots for ``variables`` (list/tuple of arrays or dict name -> array).

        Does nothing if already built. Mutates only this optimizer.
        """
        if self._state is None:
            self._adopt(_state.create(variables, names, self._hp))

    def _adopt(self, state):
        state.set_weight_decay_exclusions(*self._exclusions)
        self._hp.lock()
        self._state = state

    # ------------------------------------------------------------ stepping

    def apply(self, grads, variables=None):
        """Apply one optimizer call: update ``variables`` and the slots in place.

        ``grads`` is a list/tuple (matched to ``variables`` by position) or a dict
        (matched by name); ``None`` entries skip their variable with a warning, and
        an ``IndexedSlices`` entry updates only the rows it names (lazy, as in TF 1.x).
        Without ``variables`` the optimizer must be built and ``grads`` covers every
        built variable. The first call builds. Every input is validated before
        anything (the build included) changes.
        """
        names = None
        if isinstance(grads, dict):
            grads, variables, names = self._from_dicts(grads, variables)
        else:
            grads = check.sequence(grads, "`grads`")
        if not grads:
            return
        state = self._state
        if variables is None:
            if state is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built on a list of variables. Call "
                                 "`optimizer.build(variables)` first.")
            if len(grads) != len(state.params):
                raise ValueError(f"Got {len(grads)} gradients for {len(state.params)} "
                                 "built variables.")
            _core.apply_indexed(state, grads)
            return
        variables = check.sequence(variables, "`variables`")
        if len(variables) != len(grads):
            raise ValueError(f"Got {len(grads)} gradients for {len(variables)} variables.")
        fresh = state is None
        if fresh:
            state = _state.create(variables, names, self._hp)
        indices = [state.index_of(v) for v in variables]
        if len(set(indices)) != len(indices):
            raise ValueError("The same variable appears more than once in `variables`.")
        full = [None] * len(state.params)
        for j, i in enumerate(indices):
            full[i] = grads[j]
        lr = _core.prepare_call(state, full, indices)
        if fresh:
            self._adopt(state)  # only now: a failed first call builds nothing
        _core.run_step(state, full, lr)

    def _from_dicts(self, grads, variables):
        if variables is None:
            if self._state is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built.")
            unknown = [k for k in grads if str(k) not in self._state.name_index]
            if unknown:
                raise ValueError(f"Unknown variable name(s) in `grads`: {unknown}")
            return (list(grads.values()),
                    [self._state.params[self._state.name_index[str(k)]] for k in grads], None)
        if not isinstance(variables, dict) or set(variables) != set(grads):
            raise ValueError("When `grads` is a dict, `variables` must be a dict with the "
                             "same keys.")
        keys = list(variables)
        return [grads[k] for k in keys], [variables[k] for k in keys], [str(k) for k in keys]

    def apply_gradients(self, grads_and_vars):
        """``apply`` on a sequence of ``(gradient, variable)`` pairs; returns the call count."""
        pairs = check.sequence(list(grads_and_vars), "`grads_and_vars`")
        grads = [g for g, _ in pairs]
        variables = [v for _, v in pairs]
        self.apply(grads, variables)
        return 0 if self._state is None else self._state.raw_steps

    def scale_loss(self, loss):
        """``loss * loss_scale_factor`` when the factor is set, else ``loss``."""
        factor = self._hp.loss_scale_factor
        return loss if factor is None else loss * factor

    def finalize_variable_values(self, variables):
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
        for j, (v, avg) in enumerate(zip(variables, averages)):
            check.variable(v, f"variables[{j}]")
            check.gradient(v, avg, f"variables[{j}]")
        for v, avg in zip(variables, averages):
            np.copyto(v, avg)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude variables from weight decay: those in ``var_list`` (by identity) and those
        whose name contains a match of a regex in ``var_names`` (each must compile on its
        own). Replaces earlier calls; takes effect from the next step."""
        pattern = check.exclusion_pattern(var_names)
        listed = None if var_list is None else list(check.sequence(var_list, "`var_list`"))
        self._exclusions = (pattern, listed)
        if self._state is not None:
            self._state.set_weight_decay_exclusions(pattern, listed)

    # ------------------------------------------------------------ state surface

    @property
    def variables(self):
        """State arrays in Keras order: a 0-d int64 snapshot of the call counter, EMA
        averages, accumulators, then m0, u0, m1, u1, ... (live views of the slots)."""
        counter = np.array(0 if self._state is None else self._state.raw_steps, np.int64)
        return [counter] + ([] if self._state is None else self._state.state_arrays())

    def get_slot(self, variable, slot_name):
        """The slot ``slot_name`` (``"m"``, ``"u"``/``"v"``, ``"ema"``, ``"accumulator"``)
        of ``variable`` (the array or its name), as a live view."""
        state = self._require_built("get_slot")
        i = (state.name_index.get(variable) if isinstance(variable, str)
             else state.index_of(variable))
        if i is None:
            raise ValueError(f"Unknown variable name {variable!r}.")
        return state.slot(i, slot_name)

    def get_slot_names(self):
        """``["m", "u"]``, plus ``"ema"`` with ``use_ema`` and ``"accumulator"`` with
        gradient accumulation."""
        return _state.slot_names(self._hp.use_ema,
                                 self._hp.gradient_accumulation_steps is not None)

    def get_weights(self):
        """Copies of ``variables``."""
        return [np.array(v, copy=True) for v in self.variables]

    def set_weights(self, weights):
        """Load arrays in ``variables`` order (counter first). Everything is checked
        (count, shapes, dtypes, counter) before anything is written."""
        state = self._require_built("set_weights")
        weights = check.sequence(weights, "`weights`")
        targets = state.state_arrays()
        if len(weights) != len(targets) + 1:
            raise ValueError(f"`set_weights` expected {len(targets) + 1} arrays "
                             f"(counter first), got {len(weights)}.")
        counter = np.asarray(weights[0])
        if counter.shape != () or counter.dtype.kind not in "iu" or int(counter) < 0:
            raise ValueError(f"weights[0] must be a non-negative integer counter, got {weights[0]!r}.")
        arrays = [np.asarray(w) for w in weights[1:]]
        for j, (src, dst) in enumerate(zip(arrays, targets), start=1):
            if src.shape != dst.shape:
                raise ValueError(f"weights[{j}] has shape {src.shape}; expected {dst.shape}.")
            if src.dtype != dst.dtype:
                raise TypeError(f"weights[{j}] has dtype {src.dtype}; expected {dst.dtype}.")
        for src, dst in zip(arrays, targets):
            np.copyto(dst, src)
        state.raw_steps = int(counter)

    def _require_built(self, what):
        if self._state is None:
            raise ValueError(f"`{what}` needs a built optimizer; call `build(variables)` "
                             "or `apply` first.")
        return self._state

    # ------------------------------------------------------------ config

    def get_config(self):
        """Constructor arguments as a dict (Keras' 14 keys, plus ``decay`` when set).

        A float learning rate is exact; a schedule is serialised Keras-style; a
        callable is returned as is (it cannot survive JSON).
        """
        return self._hp.get_config()

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Build an optimizer from ``get_config()`` output (JSON round-trip safe)."""
        hp = Hyperparameters.from_config(config, custom_objects=custom_objects)
        optimizer = cls.__new__(cls)
        optimizer._reset(hp)
        return optimizer

    def __repr__(self):
        return (f"Adamax(name={self.name!r}, learning_rate={self._hp.learning_rate!r}, "
                f"built={self.built}, iterations={self.iterations})")
