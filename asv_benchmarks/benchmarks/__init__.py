"""asv benchmarks for numba_adamax (see ../asv.conf.json)."""
