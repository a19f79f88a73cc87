"""``Rows``: what the drivers' sparse operations exchange with ``_sparse``, and the
chunking both drivers sum a sparse gradient's squared norm in."""
from ..kernels import config


def rows_per_chunk(row_size):
    """Rows per partial sum of a sparse squared norm: ``config.REDUCTION_CHUNK`` elements
    rounded to whole rows. Both drivers use it, so CUDA reproduces the CPU's bits."""
    return max(1, config.REDUCTION_CHUNK // max(1, row_size))


class Rows:
    """The rows one sparse gradient updates in a call.

    ``rows``: distinct row numbers (int64, on the host). ``values``: the flat summed
    gradient rows aligned with ``rows`` (the driver's memory), or None when the
    accumulator holds the gradient. ``row_size``: elements per row.
    ``device_rows``: for a device variable, ``rows`` copied to the device (else None).
    """

    __slots__ = ("rows", "values", "row_size", "device_rows")

    def __init__(self, rows, values, row_size, device_rows=None):
        self.rows, self.values, self.row_size = rows, values, row_size
        self.device_rows = device_rows
