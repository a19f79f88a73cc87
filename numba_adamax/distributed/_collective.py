"""Agreeing on failures: a check that fails on some ranks raises on all of them.

A distributed call validates locally, then every rank learns whether any rank failed
and raises the same exception (the lowest failing rank's type and message), so no rank
goes on into a collective the others have left, and nothing is written anywhere.
"""

from .._checkpoint import CheckpointError

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
