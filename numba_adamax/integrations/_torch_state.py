"""``optimizer.state`` of the PyTorch optimizer: a mapping whose parameter entries are
live views of the numba_adamax slots, and which stays writable the way torch's
wrappers write it.

``ZeroRedundancyOptimizer.load_state_dict`` (and user code) assigns
``optimizer.state[p] = {...}`` and ``optimizer.state[p]["step"] = ...``. Here such a
write is checked against the parameter (keys, dtype, shape, step) and copied into
the live slots and the group's counter; the entry stays the live one. Keys that are
not parameters of the optimizer hold anything, as in torch. This module does not
import torch itself: the owner (the optimizer) does the checks and the copies.
"""
from collections import defaultdict


class LiveState(defaultdict):
    """``optimizer.state``: a ``defaultdict(dict)`` whose entries for the optimizer's
    parameters are ``LiveEntry`` objects. ``owner`` provides ``_state_target(key)``
    (``(binding, k)`` or None) and ``_write_state(binding, k, entry)``."""

    def __init__(self, owner):
        super().__init__(dict)
        self._owner = owner

    def __setitem__(self, key, value):
        target = self._owner._state_target(key)
        if target is None:
            super().__setitem__(key, value)
        else:
            self._owner._write_state(*target, value)

    def publish(self, key, entry):
        """Store the live ``entry`` of a parameter without checks (the owner's own write)."""
        super().__setitem__(key, LiveEntry(self._owner, key, entry))

    def __reduce__(self):
        # A copy of the mapping alone is a plain dict of plain dicts.
        return dict, (dict(self),)


class LiveEntry(dict):
    """One parameter's ``{"step", "exp_avg", "exp_inf", ...}``: live tensor views. Setting
    a key checks the value and copies it into the slot (``"step"``: the counter of
    the parameter's group); no other key can be added."""

    def __init__(self, owner, param, entry):
        super().__init__(entry)
        self._owner, self._param = owner, param

    def __setitem__(self, key, value):
        binding, k = self._owner._state_target(self._param)
        self._owner._write_state(binding, k, {**self, key: value})

    def update(self, *args, **kwargs):
        binding, k = self._owner._state_target(self._param)
        self._owner._write_state(binding, k, {**self, **dict(*args, **kwargs)})

    def __delitem__(self, key):
        raise ValueError(f"optimizer.state[p][{key!r}] cannot be removed: the slots of a "
                         "parameter exist for as long as its group does.")

    def __reduce__(self):
        return dict, (dict(self),)
