"""Start-up costs, each measured in a fresh Python process.

* ``TrackFirstStep.track_compile_seconds``: the first step with an empty Numba cache
  (a new ``NUMBA_CACHE_DIR``), which compiles the kernels the step uses;
* ``TrackWarmStart.track_import_and_first_step_seconds``: ``import numba_adamax``
  plus the first step, with the kernels already in the on-disk cache (filled in
  ``setup``);
* ``TrackFirstStepAfterWarmup.track_first_step_seconds``: with an empty cache,
  ``numba_adamax.warmup(optimizer)`` first (not timed), then the first step, which
  should compile nothing.

The child process times itself, so interpreter start-up is not counted.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from .common import feature_set

_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import numba_adamax as na
imported = time.perf_counter()
w, g = np.ones(1000, np.float32), np.ones(1000, np.float32)
opt = na.Adamax(learning_rate=0.001, **json.loads(sys.argv[1]))
if sys.argv[2] == "warmup":
    opt.build([w])
    na.warmup(opt)
    imported = time.perf_counter()
opt.apply([g], [w])
done = time.perf_counter()
print(json.dumps({"import": imported - start, "first_step": done - imported}))
"""


def run_child(cache_dir, feature, warmup=False):
    """Run ``_CHILD`` with ``NUMBA_CACHE_DIR=cache_dir`` (after ``warmup`` when asked);
    returns its timings."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    options, _ = feature_set(feature)
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(options),
                          "warmup" if warmup else "apply"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class _FreshCache:
    """A new, empty ``NUMBA_CACHE_DIR`` per benchmark, removed afterwards."""

    params = (["plain", "clipnorm"],)
    param_names = ["feature"]
    timeout = 600

    def setup(self, feature):
        self.cache_dir = tempfile.mkdtemp(prefix="numba-adamax-asv-")

    def teardown(self, feature):
        shutil.rmtree(self.cache_dir, ignore_errors=True)


class TrackFirstStep(_FreshCache):
    def track_compile_seconds(self, feature):
        return run_child(self.cache_dir, feature)["first_step"]

    track_compile_seconds.unit = "seconds"


class TrackWarmStart(_FreshCache):
    def setup(self, feature):
        super().setup(feature)
        run_child(self.cache_dir, feature)  # fill the cache

    def track_import_and_first_step_seconds(self, feature):
        timings = run_child(self.cache_dir, feature)
        return timings["import"] + timings["first_step"]

    track_import_and_first_step_seconds.unit = "seconds"


class TrackFirstStepAfterWarmup(_FreshCache):
    def track_first_step_seconds(self, feature):
        return run_child(self.cache_dir, feature, warmup=True)["first_step"]

    track_first_step_seconds.unit = "seconds"
