"""PyTorch integration: ``Adamax``, a ``torch.optim.Optimizer`` that runs numba_adamax's
kernels on CPU and CUDA tensors, with Keras 3 semantics.

Importing this module imports torch; importing ``numba_adamax`` or
``numba_adamax.integrations`` does not.
"""
try:
    import torch
except ImportError as exc:
    raise ImportError(
        "numba_adamax.integrations.torch needs PyTorch, which is not installed. Install it "
        "with `pip install \"numba_adamax[torch]\"`, or the CPU-only build with "
        "`pip install torch --index-url https://download.pytorch.org/whl/cpu`.") from exc

import warnings

from .. import _apply, _state_dict, _validation, functional
from .._flat_buffer import aligned_offsets
from .._host import to_host
from .._hyperparameters import STRUCTURAL
from . import _torch_arrays as tensor_arrays
from . import _torch_checks as checks
from . import _torch_options as options
from ._torch_state import LiveState

__all__ = ["Adamax", "ZeroAdamax"]  # noqa: F822 (ZeroAdamax: module __getattr__)

SLOT_KEYS = options.SLOT_KEYS


class _Binding:
    """The numba_adamax side of one parameter group.

    ``params``: the group's tensors, in order. ``state``: the ``AdamaxState`` over
    zero-copy views of them, NumPy arrays or Numba device arrays for CUDA tensors
    (None for a group without parameters).
    ``pointers``: each tensor's ``data_ptr()`` when bound, to detect a parameter
    whose memory was replaced; ``layouts``: each tensor's ``(shape, dtype, device)``
    then, which a re-pointed tensor must keep. ``key``: ``_torch_options.key`` of the settings
    ``state`` runs with. ``step``: 0-d int64 tensor, the group's call counter,
    shared by every ``optimizer.state[p]["step"]`` of the group. ``flat_buffers``:
    dtype -> the contiguous tensor the parameters are views of (flat mode only).
    """

    __slots__ = ("flat_buffers", "key", "layouts", "params", "pointers", "state", "step")


class _Plan:
    """One group's checked part of a ``step()``: ``binding``, ``index``, the ``state``
    it runs on (a re-bound one, see ``Adamax._rebound``), ``hyperparameters`` and
    their ``key``, and ``grads`` (matched to the state; None: no gradient)."""

    __slots__ = ("binding", "grads", "hyperparameters", "index", "key", "state")


class Adamax(torch.optim.Optimizer):
    """Adamax with the semantics of ``keras.optimizers.Adamax``, as a PyTorch optimizer.

    Each parameter group is one ``numba_adamax`` state (see ``numba_adamax.init``)
    over zero-copy views of the group's tensors (NumPy arrays for CPU tensors, Numba
    device arrays for CUDA tensors, whose steps run on torch's current stream of
    their device and whose slots live there too); ``step()`` runs the same
    fused kernels as ``numba_adamax.Adamax``, so the results are bit for bit those
    of the NumPy API on equal arrays. Per update, for every parameter with a
    gradient (``t`` counts updates, from 1)::

        g = clip(g / loss_scale_factor)              # and the accumulation mean
        w = w - w * weight_decay * lr                # decoupled, when weight_decay is set
        m = m + (g - m) * (1 - beta_1)
        u = max(beta_2 * u, |g|)                     # NaN-propagating
        w = w - (lr * m) / ((1 - beta_1**t) * (u + eps))

    then the EMA of the weights. Compared with ``torch.optim.Adamax``:

    - ``eps`` is added outside the maximum, to ``u``; torch computes
      ``max(beta_2 * u, |g| + eps)``.
    - ``weight_decay`` is decoupled (``w -= w * weight_decay * lr``, AdamW-style);
      torch adds ``weight_decay * w`` to the gradient (L2). ``None`` (the default)
      turns it off; ``0`` leaves the weights unchanged.
    - The defaults are Keras': ``lr=0.001`` and ``eps=1e-7`` (torch: 0.002, 1e-8).
    - Clipping, loss-scale unscaling, gradient accumulation and the EMA happen
      inside ``step()``, per group: ``global_clipnorm`` uses the norm over the
      group's gradients.
    - The step counter is per group: a call counts for a group when at least one
      of its parameters has a gradient. Parameters without a gradient are skipped
      silently (the EMA still covers them).
    - With ``gradient_accumulation_steps=n`` each ``step()`` is a micro-step and
      every ``n``-th applies the mean; call ``zero_grad()`` between micro-steps, as
      the optimizer keeps the sum itself.
    - There is no ``maximize``, ``foreach``, ``capturable`` or ``differentiable``.

    Args:
        params: an iterable of tensors, of ``(name, tensor)`` pairs, or of dicts
            (parameter groups, each with ``"params"`` and any of the options below).
            Tensors must be leaf, dense, contiguous float32/float64 tensors, on the
            CPU or a CUDA device; the tensors of one group share one device.
        lr, betas, eps: PyTorch's names; ``learning_rate``, ``beta_1``, ``beta_2``
            and ``epsilon`` (Keras' names) are accepted instead, here and in group
            dicts, and are stored under the PyTorch names (so that
            ``torch.optim.lr_scheduler`` works). ``None`` means the default
            (0.001, (0.9, 0.999), 1e-7). ``lr`` may also be a
            ``numba_adamax.schedules`` schedule, called with the group's count of
            earlier calls.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, \
                ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps:
            as in ``numba_adamax.Adamax`` and Keras, validated the same way. Group
            values may be changed between steps (validated at the next step), except
            ``use_ema`` and ``gradient_accumulation_steps``.
        nonfinite: what a step does with a NaN/inf gradient, per group:
            ``"propagate"`` (Keras), ``"skip"`` (the group's call is dropped) or
            ``"raise"`` (``FloatingPointError`` naming the parameter, nothing changed),
            as in the NumPy API.
        flat: if True, the parameters of each group are moved (values preserved)
            into one contiguous tensor per dtype, and each ``param.data`` becomes a
            view of it; see ``flat_buffers``. A group dict may repeat the
            constructor's value (``ZeroRedundancyOptimizer`` copies it into groups).

    ``state_dict()`` uses PyTorch's layout: ``"state"`` maps a parameter's index to
    ``{"step", "exp_avg", "exp_inf"}`` (plus ``"ema"`` and ``"accumulator"`` when
    configured), where ``step`` is a 0-d int64 tensor (the group's call count,
    exact); ``"param_groups"`` lists each group's options with its ``"params"``
    ids (and ``"param_names"`` when built from names). ``load_state_dict`` matches
    parameters by position, keeps non-parameter entries, loads ``torch.optim.Adamax``
    state dicts, and checks everything before changing anything.
    ``optimizer.state[p]`` holds live views of the same slots; assigning an entry (or
    one key of it) checks it and copies it into the slots and the group's counter.
    A parameter whose ``.data`` moved to other memory of the same shape, dtype and
    device is re-bound at the next step (slots and counters kept).
    ``copy.deepcopy`` and ``pickle`` give an independent optimizer over copies of
    the parameters whose next step equals this one's.
    """

    def __init__(self, params, lr=None, betas=None, eps=None, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, *, learning_rate=None, beta_1=None,
                 beta_2=None, epsilon=None, nonfinite="propagate", flat=False):
        named = {"lr": lr, "betas": betas, "eps": eps, "learning_rate": learning_rate,
                 "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
        settings = {key: value for key, value in named.items() if value is not None}
        settings.update(
            weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, nonfinite=nonfinite)
        defaults = options.canonical(settings, options.DEFAULTS, "Adamax")
        options.hyperparameters(defaults, "Adamax", options.spelling(settings))
        self._flat = _validation.boolean("flat", flat)
        self._bindings = []
        self._targets = {}  # id(param) -> (binding, position), for ``optimizer.state``
        self.defaults = defaults
        # Check every group before the base class adds (and, flat, moves) any of them.
        checked = []
        for i, group in enumerate(_as_groups(params)):
            checked.append(self._checked_group(group, i, checked)[0])
        super().__init__(checked, defaults)

    # ------------------------------------------------------------ groups

    def _checked_group(self, param_group, index, existing):
        """Validate ``param_group`` against the groups ``existing``; mutates nothing.

        Returns ``(group, hyperparameters)``: a new dict with the parameters as a
        list (names split off into ``"param_names"``), PyTorch option names and
        defaults filled in, and the group's validated, unlocked ``Hyperparameters``.
        """
        label = f"param_groups[{index}]"
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}.")
        if "params" not in param_group:
            raise ValueError(f"{label} has no 'params' key.")
        group = {key: value for key, value in param_group.items() if key != "params"}
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{label}['params'] is a set; give an ordered collection such as "
                            "a list, so that the order is the same in every run.")
        else:
            params = list(params)
        if params and all(isinstance(p, tuple) for p in params):
            if not all(len(p) == 2 for p in params):
                raise ValueError(f"{label}['params'] must hold tensors or (name, tensor) pairs.")
            group["param_names"] = [name for name, _ in params]
            params = [p for _, p in params]
        elif any(isinstance(p, tuple) for p in params):
            raise ValueError(f"{label}: all parameters must be given with names or all "
                             "without names.")
        if "param_names" in group:
            names = list(group["param_names"])
            if len(names) != len(params):
                raise ValueError(f"{label} has {len(names)} param_names for "
                                 f"{len(params)} parameters.")
            if len({str(name) for name in names}) != len(names):
                raise ValueError(f"{label} has repeated param_names: {names}.")
        for k, p in enumerate(params):
            checks.parameter(p, _label(group, index, k))
        checks.one_device(params, [_label(group, index, k) for k in range(len(params))])
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{label} holds the same parameter more than once.")
        taken = {id(p) for other in existing for p in other["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError("some parameters appear in more than one parameter group.")
        if existing and ("param_names" in existing[0]) != ("param_names" in group):
            raise ValueError("all parameter groups must be given with names or all without.")
        spelled = options.spelling(group)
        group = options.canonical(group, self.defaults, label, wide={"flat": self._flat})
        hyperparameters = options.hyperparameters(group, label, spelled)
        ordered = {"params": params, **{key: group[key] for key in options.DEFAULTS}}
        ordered.update((key, value) for key, value in group.items() if key not in ordered)
        return ordered, hyperparameters

    def add_param_group(self, param_group):
        """Add a parameter group (a dict with ``"params"`` and options; missing options
        take the constructor's values). Everything is validated before the group is
        added; in flat mode its parameters then move into the group's buffers.
        ``param_group`` itself is not modified."""
        index = len(self.param_groups)
        group, hyperparameters = self._checked_group(param_group, index, self.param_groups)
        if not isinstance(self.state, LiveState):  # torch's __init__ made a plain dict
            self.state = LiveState(self)
        params = group["params"]
        binding = _Binding()
        binding.params = list(params)
        binding.flat_buffers, views = _flat_views(params) if self._flat else ({}, params)
        names = [_label(group, index, k) for k in range(len(params))]
        arrays = [tensor_arrays.as_array(v, name) for v, name in zip(views, names)]
        binding.state = (tensor_arrays.new_state(params, arrays, names, hyperparameters)
                         if arrays else None)
        binding.key = options.key(group)
        binding.step = torch.zeros((), dtype=torch.int64)
        # Nothing above changed the parameters; from here on the group is committed.
        if self._flat:
            for p, view in zip(params, views):
                p.data = view
        if binding.state is None:
            hyperparameters.lock()
        else:
            functional.adopt(binding.state)
        binding.pointers = [p.data_ptr() for p in params]
        binding.layouts = [_layout(p) for p in params]
        self._targets.update((id(p), (binding, k)) for k, p in enumerate(params))
        self.param_groups.append(group)
        self._bindings.append(binding)
        if binding.state is not None:
            self._publish(binding)

    def _publish(self, binding):
        """Point ``self.state[p]`` at live tensor views of ``binding``'s slots."""
        state = binding.state
        for k, p in enumerate(binding.params):
            entry = {"step": binding.step}
            for key, slot in SLOT_KEYS.items():
                if slot in state.slot_names():
                    entry[key] = tensor_arrays.slot_tensor(state.slot(k, slot), p)
            self.state.publish(p, entry)
        self._adopted(binding)

    def _adopted(self, binding):
        """Called whenever ``binding`` got a new state (built, loaded or re-bound)."""

    def _state_target(self, key):
        """``(binding, k)`` when ``key`` is parameter ``k`` of a bound group, else None."""
        target = self._targets.get(id(key)) if isinstance(key, torch.Tensor) else None
        if target is None or target[0].state is None or target[0].params[target[1]] is not key:
            return None
        return target

    def _write_state(self, binding, k, entry):
        """Check ``entry`` (a whole ``optimizer.state[p]`` value) against parameter ``k``
        of ``binding``, then copy it into the live slots and the group's step counter.
        Raises ``TypeError`` / ``ValueError`` before anything changes."""
        index = self._bindings.index(binding)
        where = f"optimizer.state[{_label(self.param_groups[index], index, k)}]"
        state = binding.state
        wanted = {"step"} | {key for key, slot in SLOT_KEYS.items()
                             if slot in state.slot_names()}
        steps = checks.state_entry(entry, binding.params[k], wanted, where)
        for key, slot in SLOT_KEYS.items():
            if key in entry:
                tensor_arrays.load_slot(state.slot(k, slot), entry[key], binding.params[k])
        state.raw_steps = steps
        binding.step.fill_(steps)

    def warmup(self, sparse=False):
        """Compile (or load from the disk cache) the kernels every parameter group's
        steps will run (see ``numba_adamax.warmup``), so the first ``step()`` compiles
        nothing; ``sparse=True`` also compiles those of sparse gradients (e.g. from
        ``nn.Embedding(sparse=True)``). Changes no parameter, slot or counter."""
        from .._warmup import warmup
        for binding in self._bindings:
            if binding.state is not None:
                with tensor_arrays.device_context(binding.params):
                    warmup(binding.state, sparse=sparse)

    @property
    def flat_buffers(self):
        """Per group, a dict dtype -> the contiguous tensor that holds the group's
        parameters of that dtype (empty dicts unless ``flat=True``)."""
        return [dict(binding.flat_buffers) for binding in self._bindings]

    # ------------------------------------------------------------ stepping

    def step(self, closure=None):
        """Apply one optimizer call to every group that has at least one gradient.

        ``closure``, if given, is called first under ``torch.enable_grad()`` and its
        result is returned. Parameters, gradients and group options are all
        checked before the first parameter or slot changes. Mutates the parameters
        (in place), the slots and the step counters.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self._plans()
        calls = [(plan, self._prepare(plan))
                 for plan in plans if plan is not None and plan.grads is not None]
        # Everything is checked; from here on the call is committed.
        for plan in plans:
            if plan is not None:
                self._install(plan)
        for plan, call in calls:
            self._commit(plan, call)
        return loss

    def _prepare(self, plan):
        """``_apply.prepare`` of ``plan``'s group on its device and torch's current stream
        there (``_torch_arrays.stream_for``). Raises for bad gradients or options; sets
        only the state's stream."""
        with tensor_arrays.device_context(plan.binding.params):
            plan.state.stream = tensor_arrays.stream_for(plan.binding.params)
            return _apply.prepare(plan.state, plan.grads, passed=(),
                                  hyperparameters=plan.hyperparameters)

    def _plans(self):
        """Per group, a checked ``_Plan`` of its part of the next call (None for a group
        without parameters; ``grads`` None when none of its parameters has a gradient).
        Raises for a bad parameter, gradient or option; mutates nothing."""
        if len(self.param_groups) != len(self._bindings):
            raise ValueError("param_groups changed outside add_param_group; add groups "
                             "with optimizer.add_param_group(...).")
        plans = []
        for index, (group, binding) in enumerate(zip(self.param_groups, self._bindings)):
            if _params_changed(group, binding):
                raise ValueError(f"param_groups[{index}]['params'] changed after the group "
                                 "was added; build a new optimizer instead.")
            if binding.state is None:
                plans.append(None)
                continue
            plan = _Plan()
            plan.binding, plan.index = binding, index
            plan.hyperparameters, plan.key = self._hyperparameters(index, group, binding)
            plan.state = self._rebound(index, group, binding)
            grads = [checks.gradient(p, _label(group, index, k))
                     for k, p in enumerate(binding.params)]
            plan.grads = None
            if any(g is not None for g in grads):
                plan.grads, _ = functional.match(plan.state, grads, None)
            plans.append(plan)
        return plans

    def _rebound(self, index, group, binding):
        """``binding``'s state, or, when some parameter's ``.data`` now lives in other
        memory of the same shape, dtype and device (``param.data = ...``, as
        ``ZeroRedundancyOptimizer(parameters_as_bucket_view=True)`` does), a new state
        over the parameters' current memory holding copies of the slots and counters.
        Raises ``ValueError`` for a changed shape, dtype or device. Mutates nothing."""
        moved = [k for k, p in enumerate(binding.params) if p.data_ptr() != binding.pointers[k]]
        if not moved:
            return binding.state
        for k in moved:
            checks.rebound(binding.params[k], binding.layouts[k], _label(group, index, k))
        old = binding.state
        arrays = [tensor_arrays.as_array(p.detach(), _label(group, index, k))
                  for k, p in enumerate(binding.params)]
        state = tensor_arrays.new_state(binding.params, arrays, list(old.names),
                                        old.hyperparameters)
        functional.adopt(state)
        state.set_weight_decay_mask(old.weight_decay_mask)
        _state_dict.write(state, old.state_arrays(), old.raw_steps, old.skipped_steps,
                          _state_dict.touched_rows(old))
        return state

    def _install(self, plan):
        """Make ``plan.state`` the group's state when ``_rebound`` replaced it."""
        binding = plan.binding
        if plan.state is binding.state:
            return
        binding.state = plan.state
        binding.pointers = [p.data_ptr() for p in binding.params]
        binding.flat_buffers = {}  # the parameters left the group's buffers
        self._publish(binding)

    def _commit(self, plan, call):
        """Run a prepared call of ``plan``'s group: installs new settings, mutates the
        parameters, the slots and the counters."""
        binding = plan.binding
        if call.hyperparameters is not binding.state.hyperparameters:
            call.hyperparameters.lock()
            binding.state.hyperparameters = call.hyperparameters
            binding.key = plan.key
        with tensor_arrays.device_context(binding.params):
            _apply.commit(call)
        binding.step.fill_(binding.state.raw_steps)
        # The kernels write behind autograd's back; tell it the parameters changed.
        for p in binding.params:
            torch.autograd.graph.increment_version(p)

    def _hyperparameters(self, index, group, binding):
        """The settings a group's next step runs with, and their ``key``: the state's
        own when the group's options did not change, else newly validated ones.
        Raises if they are invalid or would change which slots exist."""
        key = options.key(group)
        current = binding.state.hyperparameters
        if key is not None and _same(key, binding.key):
            return current, key
        label = f"param_groups[{index}]"
        hyperparameters = options.hyperparameters(group, label)
        for field in STRUCTURAL:
            if getattr(hyperparameters, field) != getattr(current, field):
                raise ValueError(f"{label}: `{field}` cannot change after the group was "
                                 "added: it decides which slots exist.")
        return hyperparameters, key

    # ------------------------------------------------------------ state dict

    def state_dict(self):
        """The optimizer state in PyTorch's layout (see the class docstring).

        Tensors are copies, so the result does not change with later steps. Entries
        of ``self.state`` that are not parameters (a pre-hook may add some) are kept
        under their own keys, as in PyTorch. Hooks registered with
        ``register_state_dict_pre_hook`` / ``_post_hook`` run as in PyTorch.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state, groups, start = {}, [], 0
        for group, binding in zip(self.param_groups, self._bindings):
            packed = {key: value for key, value in group.items() if key != "params"}
            if "param_names" in packed:
                packed["param_names"] = list(packed["param_names"])
            packed["params"] = list(range(start, start + len(binding.params)))
            for k in range(len(binding.params)):
                entry = {"step": binding.step.clone()}
                for key, slot in SLOT_KEYS.items():
                    if slot in binding.state.slot_names():
                        entry[key] = tensor_arrays.slot_copy(binding.state.slot(k, slot),
                                                             binding.params[k])
                state[start + k] = entry
            groups.append(packed)
            start += len(binding.params)
        for key, value in self.state.items():
            if self._state_target(key) is None:
                state[key] = value
        result = {"state": state, "param_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            returned = hook(self, result)
            result = result if returned is None else returned
        return result

    def load_state_dict(self, state_dict):
        """Load ``state_dict()`` output: group options, step counters and every slot.

        Parameters are matched by position, as in PyTorch, whatever the saved ids are
        (ints, or the names ``torch.distributed.checkpoint`` uses). Entries no group
        lists become non-parameter entries of ``self.state``. Saved ``param_names``
        replace the current ones; without them the current ones stay. A
        ``torch.optim.Adamax`` state dict loads too: ``exp_avg`` and ``exp_inf`` are
        this optimizer's ``m`` and ``u``, options it lacks take the Keras defaults,
        torch-only options are dropped, and a ``UserWarning`` says that ``eps`` (and a
        ``weight_decay``) act differently here. A ``torch.optim.Adam`` state dict is
        refused (``ValueError``): its ``exp_avg_sq`` is not Adamax's ``exp_inf``.

        Counts, option values, keys, shapes, dtypes and step counters are all checked
        (``TypeError`` / ``ValueError`` naming the entry) before anything changes.
        Slot tensors may be on any device; they are copied. Hooks registered with
        ``register_load_state_dict_pre_hook`` / ``_post_hook`` run as in PyTorch.
        """
        if isinstance(state_dict, dict):
            state_dict = dict(state_dict)  # hooks get a shallow copy, as in PyTorch
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            returned = hook(self, state_dict)
            state_dict = state_dict if returned is None else returned
        loaded, extra, from_torch = checks.state_dict(state_dict, self.param_groups,
                                                      self._bindings, options.DEFAULTS)
        states = []
        for (_group, hyperparameters, entries, steps), binding in zip(loaded, self._bindings):
            state = None
            if binding.params:
                state = tensor_arrays.new_state(binding.params, list(binding.state.params),
                                                list(binding.state.names), hyperparameters)
                functional.adopt(state)
                for k, entry in enumerate(entries):
                    for key, slot in SLOT_KEYS.items():
                        if entry is not None and key in entry:
                            tensor_arrays.load_slot(state.slot(k, slot), entry[key],
                                                    binding.params[k])
                state.raw_steps = steps
            states.append(state)
        if from_torch:
            warnings.warn(
                "Loading a torch.optim state dict: this Adamax adds eps to the infinity "
                "norm (u + eps) where torch.optim.Adamax takes max(beta_2 * u, |g| + eps), "
                "and its weight_decay is decoupled (w -= lr * weight_decay * w) where "
                "torch's is L2, so the next steps differ slightly from torch's.",
                UserWarning, stacklevel=2)
        # Everything is checked and built; commit.
        for index, ((group, hyperparameters, _, steps), state) in enumerate(zip(loaded, states)):
            binding = self._bindings[index]
            hyperparameters.lock()  # groups without parameters have no state to adopt it
            binding.state = state
            binding.key = options.key(group)
            binding.step.fill_(steps)
            self.param_groups[index] = group
            if state is not None:
                self._publish(binding)
        for key in [key for key in self.state if self._state_target(key) is None]:
            del self.state[key]
        for key, value in extra.items():
            self.state[key] = value
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    # ------------------------------------------------------------ copies

    def __getstate__(self):
        """What ``copy.deepcopy`` and ``pickle`` keep: the options, the parameter groups
        (their tensors included) and, per group, the slots, counters, weight-decay mask
        and settings in force, plus the non-parameter entries of ``self.state``. Hooks
        are not kept, as in PyTorch."""
        saved = []
        for binding in self._bindings:
            state = binding.state
            saved.append(None if state is None else {
                "slots": [to_host(a).copy() for a in state.state_arrays()],
                "raw_steps": state.raw_steps, "skipped_steps": state.skipped_steps,
                "touched": _state_dict.touched_rows(state),
                "mask": list(state.weight_decay_mask),
                "hyperparameters": state.hyperparameters, "key": binding.key})
        extra = {key: value for key, value in self.state.items()
                 if self._state_target(key) is None}
        return {"defaults": self.defaults, "flat": self._flat,
                "param_groups": self.param_groups, "saved": saved, "extra": extra}

    def __setstate__(self, saved):
        """Rebuild an optimizer from ``__getstate__`` output over the (copied)
        parameters, then write its slots and counters; mutates ``self`` only."""
        self.defaults, self._flat, self._bindings = saved["defaults"], saved["flat"], []
        self._targets = {}
        groups = [dict(group) for group in saved["param_groups"]]
        torch.optim.Optimizer.__init__(self, groups, self.defaults)
        for binding, record in zip(self._bindings, saved["saved"]):
            if record is None:
                continue
            state = binding.state
            state.hyperparameters = record["hyperparameters"]
            state.set_weight_decay_mask(record["mask"])
            _state_dict.write(state, record["slots"], record["raw_steps"],
                              record["skipped_steps"], record["touched"])
            binding.key = record["key"]
            binding.step.fill_(state.raw_steps)
        for key, value in saved["extra"].items():
            self.state[key] = value


def __getattr__(name):
    # ``ZeroAdamax`` imports torch.distributed.optim, which plain ``Adamax`` users do not
    # need: it is made on first access.
    if name != "ZeroAdamax":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._torch_zero import ShardSteps, ZeroAdamax
    if ZeroAdamax.local_optimizer_class is None:
        ZeroAdamax.local_optimizer_class = type(
            "ShardAdamax", (ShardSteps, Adamax),
            {"__module__": __name__, "__doc__": "The local optimizer of a ``ZeroAdamax``."})
    return ZeroAdamax


def _as_groups(params):
    """``params`` as a list of group dicts (PyTorch's rules)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or dicts, got a single "
                        "tensor; wrap it in a list.")
    groups = list(params)
    if not groups:
        raise ValueError("optimizer got an empty parameter list.")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return groups


def _label(group, index, k):
    """How messages name parameter ``k`` of group ``index``."""
    if "param_names" in group:
        return f"parameter {group['param_names'][k]!r}"
    return f"param_groups[{index}]['params'][{k}]"


def _same(a, b):
    """Whether two ``_torch_options.key`` snapshots are equal (type-strict)."""
    return b is not None and len(a) == len(b) and all(
        x is y or (type(x) is type(y) and x == y) for x, y in zip(a, b))


def _layout(param):
    """What a re-pointed parameter must keep: ``(shape, dtype, device)``."""
    return tuple(param.shape), param.dtype, param.device


def _params_changed(group, binding):
    params = group["params"]
    return len(params) != len(binding.params) or any(
        p is not q for p, q in zip(params, binding.params))


def _flat_views(params):
    """One zeroed contiguous tensor per dtype and, per parameter, a view of it that
    holds a copy of the parameter's values. Returns ``(buffers, views)``; the
    parameters themselves are not touched. Views start at multiples of
    ``_flat_buffer.ALIGNMENT`` elements, like the slot buffers."""
    by_dtype = {}
    for k, p in enumerate(params):
        by_dtype.setdefault(p.dtype, []).append(k)
    buffers, views = {}, [None] * len(params)
    for dtype, members in by_dtype.items():
        offsets, total = aligned_offsets(params[k].numel() for k in members)
        buffer = torch.zeros(total, dtype=dtype, device=params[members[0]].device)
        for k, offset in zip(members, offsets):
            view = buffer[offset:offset + params[k].numel()].view(params[k].shape)
            view.copy_(params[k].detach())
            views[k] = view
        buffers[dtype] = buffer
    return buffers, views
