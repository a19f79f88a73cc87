"""Every tunable of the kernels and of their launches, in one place.

Callers read these as ``config.NAME`` when they run (not at import), so a test
patches one attribute here and every path sees it.
"""

#: A dtype group with at least this many elements runs the multithreaded (``prange``)
#: CPU loops; smaller groups run the serial ones.
PARALLEL_THRESHOLD = 32768

#: Elements per unit of kernel work: each variable is cut into chunks of at most
#: this size (``prange`` iterations on the CPU, blocks on CUDA).
CHUNK = 16384

#: Elements per partial sum of a sparse gradient's squared norm (rounded to whole
#: rows). Fixed, and shared by both targets, so the norm never depends on the
#: number of threads and CUDA reproduces the CPU's bits.
REDUCTION_CHUNK = 4096

#: Threads per block of every CUDA kernel (a power of two).
BLOCK_SIZE = 256

#: At most this many blocks per CUDA launch; blocks stride over the work beyond it.
MAX_BLOCKS = 4096

#: Options of every CPU kernel called from Python. ``error_model="numpy"``: a
#: division by zero gives inf/NaN as in NumPy instead of raising. No ``fastmath``:
#: it would reorder the arithmetic and drop NaN handling.
JIT = dict(parallel=True, cache=True, error_model="numpy", nogil=True)

#: Options of the serial CPU helpers (loops over one chunk, small finishing passes).
SERIAL_JIT = dict(cache=True, error_model="numpy", nogil=True)
