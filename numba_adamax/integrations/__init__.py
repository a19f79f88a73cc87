"""Adapters that let other frameworks drive numba_adamax's kernels.

``numba_adamax.integrations.torch`` holds ``Adamax``, a ``torch.optim.Optimizer``.
Importing this package imports no framework; each adapter imports its framework
when it is imported itself.
"""
