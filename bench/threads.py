"""Imported first by every benchmark: sizes the OpenMP / BLAS thread pools before NumPy and torch load.

NumPy's OpenBLAS fixes its pool size when it is imported, so ``--threads N`` (default 1) has to reach the
environment before that; child processes (train.py) inherit it. On a shared 2-core machine two threads per process
can collapse under load, while one thread per process degrades gracefully.
"""

import os
import sys


def _threads_from_argv(default: int = 1) -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(default)


THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = THREADS
