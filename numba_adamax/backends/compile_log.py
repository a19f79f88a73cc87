"""Say on the library's logger when a kernel compile takes long, so that a first step
does not look like a hang.

A listener on numba's ``numba:compile`` events (sent only when a kernel really
compiles, not when it loads from the disk cache) starts a timer when one of this
package's kernels starts compiling; if the compile is still running after
``NOTICE_AFTER`` seconds, the ``numba_adamax`` logger says, at INFO level, what is
being compiled and that it is cached afterwards: once for the kernels a first step
compiles one after the other (at most one notice per ``QUIET_FOR`` seconds).
Nested compiles (the helpers a kernel calls) are part of the outer one.
"""
import logging
import threading
import time

from numba.core import event

logger = logging.getLogger("numba_adamax")

#: Seconds a compile runs before it is reported.
NOTICE_AFTER = 1.0
#: Seconds after a notice during which further long compiles are not reported.
QUIET_FOR = 30.0

_PACKAGE = __name__.split(".")[0] + ".kernels"


class _CompileNotice(event.Listener):
    """Reports this package's top-level kernel compiles that run past ``NOTICE_AFTER``."""

    def __init__(self):
        self._local = threading.local()
        self._last_notice = -float("inf")

    def _notice(self, kernel, dtypes):
        now = time.monotonic()
        if now - self._last_notice < QUIET_FOR:
            return
        self._last_notice = now
        logger.info("compiling the kernels of this configuration (%s, %s) on first use; "
                    "this takes a few seconds once, then the compiled code is cached on disk.",
                    kernel, dtypes)

    def on_start(self, ev):
        dispatcher = ev.data["dispatcher"]
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if depth or not getattr(dispatcher.py_func, "__module__", "").startswith(_PACKAGE):
            return
        kernel = dispatcher.py_func.__qualname__
        dtypes = "/".join(sorted({str(t.dtype) for t in ev.data["args"]
                                  if getattr(t, "ndim", 0) == 1
                                  and "float" in str(getattr(t, "dtype", ""))}))
        timer = threading.Timer(NOTICE_AFTER, self._notice, args=(kernel, dtypes))
        timer.daemon = True
        timer.start()
        self._local.timer = timer

    def on_end(self, ev):
        self._local.depth -= 1
        if not self._local.depth and getattr(self._local, "timer", None) is not None:
            self._local.timer.cancel()
            self._local.timer = None


_installed = []


def install():
    """Start reporting long compiles (once per process; later calls do nothing)."""
    if not _installed:
        _installed.append(_CompileNotice())
        event.register("numba:compile", _installed[0])
