"""``python -m numba_adamax.benchmark``: the side-by-side timings (see ``runner``)."""
from .runner import main

if __name__ == "__main__":
    main()
