"""The size of the OpenMP / BLAS thread pools of a benchmark, from its ``--threads N`` (default 1).

NumPy's OpenBLAS fixes its pool size when it is imported, so each benchmark applies these variables before its
first import of NumPy or torch, at the top of the script::

    os.environ.update(threads.pool_sizes())

Child processes (train.py) inherit them. On a shared 2-core machine two threads per process can collapse under
load, while one thread per process degrades gracefully.
"""

import sys

VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _threads_from_argv(argv: list[str], default: int = 1) -> str:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(default)


def pool_sizes(argv: list[str] | None = None) -> dict[str, str]:
    """Every pool's variable set to the command line's ``--threads`` (``argv``: sys.argv by default), parsed before
    argparse runs because the script's imports come first."""
    threads = _threads_from_argv(sys.argv if argv is None else argv)
    return dict.fromkeys(VARIABLES, threads)
