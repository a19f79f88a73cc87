"""Agreeing on failures: a check that fails on some ranks raises on all of them.

A distributed call validates locally, then every rank learns whether any rank failed
and raises the same exception (the lowest failing rank's type and message), so no rank
goes on into a collective the others have left, and nothing is written anywhere.

The settings in force are agreed the same way: each call folds a digest of them
(``settings_digest``) into its first exchange, and a mismatch raises on every rank.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._checkpoint import CheckpointError

if TYPE_CHECKING:
    from .._hyperparameters import Hyperparameters
    from ._comm import Comm

#: Exception types a local check may raise and that are re-raised on every rank. Any
#: other exception is a bug: it propagates on its rank only and, under the documented
#: ``mpiexec ... python -m mpi4py`` launch, aborts the job.
AGREED = (TypeError, ValueError, FloatingPointError, KeyError, IndexError, OSError,
          CheckpointError)


def together(comm, check, *args, **kwargs):
    """Run ``check(*args, **kwargs)`` on every rank and agree on the outcome
    (collective). Returns this rank's result when no rank raised one of ``AGREED``;
    otherwise every rank raises the exception of the lowest failing rank, with its
    rank prefixed to the message when the group has more than one rank."""
    return together_sharing(comm, check, None, *args, **kwargs)[0]


def together_sharing(comm, check, share, *args, **kwargs):
    """``together``, which also gathers ``share(result)`` (a small picklable value)
    from every rank in the same collective: returns ``(result, shared)`` with
    ``shared`` indexed by rank (all None when ``share`` is None)."""
    try:
        result, failure = check(*args, **kwargs), None
    except AGREED as exc:
        result, failure = None, (type(exc), str(exc.args[0]) if len(exc.args) == 1 else str(exc))
    mine = None if failure is not None or share is None else share(result)
    everyone = comm.allgather_object((failure, mine))
    for rank, (failed, _) in enumerate(everyone):
        if failed is not None:
            kind, message = failed
            if comm.size > 1:
                message = f"rank {rank}: {message}"
            raise _rebuild(kind, message)
    return result, [shared for _, shared in everyone]


def _rebuild(kind, message):
    if kind is KeyError:
        return KeyError(message)
    try:
        return kind(message)
    except Exception:  # noqa: BLE001 -- an exception type whose constructor takes other arguments
        return ValueError(message)


# ---------------------------------------------------------------- the settings in force


def settings_record(hyperparameters: Hyperparameters,
                    excluded: Sequence[str] = ()) -> dict[str, Any]:
    """Every setting of ``hyperparameters`` as JSON-able values: the ``get_config()``
    keys plus ``decay`` and ``nonfinite``, a schedule as its config, a callable
    learning rate by its name (its values are compared per call instead), and the
    names of the variables ``excluded`` from weight decay. Mutates nothing."""
    from .._hyperparameters import _setting_text
    from ..schedules import LearningRateSchedule
    record = hyperparameters.get_config()
    record.setdefault("decay", None)
    record.setdefault("nonfinite", hyperparameters.nonfinite)
    rate = hyperparameters.learning_rate
    if callable(rate) and not isinstance(rate, LearningRateSchedule):
        record["learning_rate"] = _setting_text(rate)
    record["excluded_from_weight_decay"] = list(excluded)
    return record


def settings_digest(hyperparameters: Hyperparameters, excluded: Sequence[str] = ()) -> str:
    """A short hash of ``settings_record(hyperparameters, excluded)``: equal on two ranks
    exactly when their settings are."""
    text = json.dumps(settings_record(hyperparameters, excluded), sort_keys=True,
                      default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def settings_differ(comm: Comm, hyperparameters: Hyperparameters,
                    excluded: Sequence[str] = ()) -> ValueError:
    """The error for ranks whose settings digests differ (collective: every rank's
    record is gathered): names each differing setting with its value per rank."""
    everyone = comm.allgather_object(settings_record(hyperparameters, excluded))
    keys = sorted(set().union(*everyone))
    differing = [f"{key} (per rank: {[r.get(key) for r in everyone]})" for key in keys
                 if any(r.get(key) != everyone[0].get(key) for r in everyone)]
    return ValueError("The optimizer settings differ across the ranks: "
                      f"{'; '.join(differing) or 'their digests differ'}. Set them to the "
                      "same values on every rank before the next call; nothing was changed.")
