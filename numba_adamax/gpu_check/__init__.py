"""The device check: what can be verified of the CUDA path, with or without a GPU.

    python -m numba_adamax.gpu_check [--out DIR] [--budget SECONDS]
    python -m numba_adamax.gpu_check --offline [--keep-ptx DIR]

``--offline`` (no GPU needed; numba-cuda and the ``nvidia-cuda-nvcc-cu12`` wheel
installed, the simulator off) compiles every CUDA kernel, for every configuration
shape of ``signatures``, to PTX for sm_80 and sm_90 and assembles each with
``ptxas`` (``ptx``); it prints the register and spill table and ends with the line
``ptx: N kernels assembled for sm_80, sm_90, F failed``. Its exit status is 1 when
anything failed.

Without ``--offline`` it runs on a CUDA GPU from a checkout of the repository
(``device``): the CUDA test files on the hardware, and the GPU benchmark
(``numba_adamax.benchmark.gpu``) with its targets, and writes ``report.json`` and
``report.md`` into ``--out``. Never imported by the package itself.
"""
