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
    try:
        result, failure = check(*args, **kwargs), None
    except AGREED as exc:
        result, failure = None, (type(exc), str(exc.args[0]) if len(exc.args) == 1 else str(exc))
    failures = comm.allgather_object(failure)
    for rank, failed in enumerate(failures):
        if failed is not None:
            kind, message = failed
            if comm.size > 1:
                message = f"rank {rank}: {message}"
            raise _rebuild(kind, message)
    return result


def _rebuild(kind, message):
    if kind is KeyError:
        return KeyError(message)
    try:
        return kind(message)
    except Exception:  # noqa: BLE001 -- an exception type whose constructor takes other arguments
        return ValueError(message)
