"""Parameter-group options of the PyTorch optimizer: names, defaults, validation.

A group stores PyTorch's names (``lr``, ``betas``, ``eps``) so that
``torch.optim.lr_scheduler`` and other tools that edit ``group["lr"]`` or
``group["betas"]`` work. The Keras names ``learning_rate``, ``beta_1``,
``beta_2`` and ``epsilon`` are accepted as input and converted. This module does
not import torch.
"""
from .._hyperparameters import Hyperparameters

#: ``optimizer.state[p]`` / ``state_dict()`` key -> numba_adamax slot name.
SLOT_KEYS = {"exp_avg": "m", "exp_inf": "u", "ema": "ema", "accumulator": "accumulator"}

#: The hyperparameter keys of a group, with the defaults of ``keras.optimizers.Adamax``.
DEFAULTS = {
    "lr": 0.001,
    "betas": (0.9, 0.999),
    "eps": 1e-7,
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "nonfinite": "propagate",
}

#: Keras name -> PyTorch name, for the two that map one to one.
ALIASES = {"learning_rate": "lr", "epsilon": "eps"}

#: Keras names that are accepted as input only (a group never keeps them).
KERAS_ONLY = ("learning_rate", "epsilon", "beta_1", "beta_2")

#: Keys a group dict may carry only with the optimizer's own value (wrappers such as
#: ``ZeroRedundancyOptimizer`` copy every constructor argument into each group).
OPTIMIZER_WIDE = ("flat",)

#: How messages name a ``Hyperparameters`` field when the option was given under its
#: PyTorch name.
TORCH_SPELLING = {"learning_rate": "lr", "beta_1": "betas[0]", "beta_2": "betas[1]",
                  "epsilon": "eps"}


def spelling(options):
    """``{field: name}`` for the Keras names used in ``options`` (a constructor's or a
    group's raw options), so that messages name an option the way it was given."""
    return {name: name for name in KERAS_ONLY if options.get(name) is not None}


def canonical(options, defaults, label, wide=None):
    """Return a new dict: ``options`` with Keras names turned into PyTorch names and
    missing hyperparameters taken from ``defaults``. Other keys are kept as they are.
    ``wide``: the optimizer-wide options' values; a group may repeat one of them with
    the same value (it is then dropped from the group).

    Raises ``ValueError`` when a value is given under both names, when ``betas`` is
    not a pair, or for an optimizer-wide key with another value. Mutates nothing.
    """
    options = dict(options)
    for key in OPTIMIZER_WIDE:
        if key in options:
            if wide is not None and key in wide and options[key] is wide[key]:
                del options[key]
                continue
            raise ValueError(f"{label}: `{key}` is an optimizer-wide option; pass it to "
                             "the Adamax constructor, not in a parameter group (or give "
                             "the constructor's value).")
    for alias, name in ALIASES.items():
        if alias in options:
            if name in options:
                raise ValueError(f"{label}: give `{name}` or `{alias}`, not both.")
            options[name] = options.pop(alias)
    if "beta_1" in options or "beta_2" in options:
        if "betas" in options:
            raise ValueError(f"{label}: give `betas` or `beta_1`/`beta_2`, not both.")
        base = _pair(defaults["betas"], label)
        options["betas"] = (options.pop("beta_1", base[0]), options.pop("beta_2", base[1]))
    for key, value in defaults.items():
        options.setdefault(key, value)
    options["betas"] = _pair(options["betas"], label)
    return options


def _pair(betas, label):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{label}: `betas` must be a pair (beta_1, beta_2). "
                         f"Received: betas={betas!r}")
    return tuple(betas)


def hyperparameters(group, label, spelled=None):
    """The validated ``Hyperparameters`` of a group (PyTorch names), unlocked.

    Raises ``ValueError`` (the type ``Hyperparameters`` raises, the message prefixed
    with ``label``) for a bad value, and for Keras names left in a group. Messages
    name the options by their PyTorch names unless ``spelled`` (see ``spelling``)
    says the user wrote the Keras name.
    """
    stale = [key for key in KERAS_ONLY if key in group]
    if stale:
        raise ValueError(f"{label} has key(s) {stale}; parameter groups use the PyTorch "
                         "names `lr`, `betas` and `eps`.")
    missing = [key for key in DEFAULTS if key not in group]
    if missing:
        raise ValueError(f"{label} lacks the option(s) {missing}.")
    beta_1, beta_2 = _pair(group["betas"], label)
    try:
        return Hyperparameters(
            learning_rate=group["lr"], beta_1=beta_1, beta_2=beta_2, epsilon=group["eps"],
            **{key: group[key] for key in DEFAULTS if key not in ("lr", "betas", "eps")})
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{label}: {_respelled(str(exc), spelled or {})}") from None


def _respelled(message, spelled):
    """``message`` with each Keras field name replaced by the name the user wrote."""
    for field, torch_name in TORCH_SPELLING.items():
        name = spelled.get(field, torch_name)
        message = message.replace(f"`{field}`", f"`{name}`").replace(f"{field}=", f"{name}=")
    return message


def key(group):
    """A snapshot of a group's hyperparameter values, to tell whether they changed
    (None when a key is missing or a Keras name was added, so that the group is
    validated again)."""
    if any(k not in group for k in DEFAULTS) or any(k in group for k in KERAS_ONLY):
        return None
    return tuple(tuple(group[k]) if k == "betas" and isinstance(group[k], (tuple, list))
                 else group[k] for k in DEFAULTS)
