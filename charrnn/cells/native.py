"""The LSTM's per-step elementwise work (lstm_step.c) compiled with the system's C compiler on first use.

Why C: on the CPU one LSTM step is one matrix product and about ten small elementwise operations, and each torch
operation costs several microseconds of dispatch however small its tensors, so at 32 streams of 256 units the
elementwise operations took a third of a window (BENCHMARKS.md, section 7). One C loop does them in one pass.

The library is built once per source, compiler and CPU (``-march=native``) into ~/.cache/charrnn (or
$XDG_CACHE_HOME/charrnn; the temporary directory if neither is writable) and loaded with ctypes. Without a C
compiler, or with ``CHARRNN_NATIVE=0`` in the environment, the LSTM runs its plain torch loop instead: the same
math, the one used on GPUs, proven against autograd like this one (tests/test_cells.py).
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lstm_step.c")
COMPILE = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-c"]
LINK = ["-shared", "-lmvec", "-lm"]  # glibc's vector exp
DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for path in (os.path.join(base, "charrnn"), os.path.join(tempfile.gettempdir(), f"charrnn-{os.getuid()}")):
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build(compiler: str, directory: str) -> str:
    """The library's path, compiling it unless a build of this source for this compiler and CPU is there."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = " ".join(COMPILE + LINK).encode()
    key = hashlib.sha256(b"\0".join([source, flags, version.encode(), _cpu_flags().encode()]))
    library = os.path.join(directory, f"lstm_step-{key.hexdigest()[:16]}.so")
    if not os.path.exists(library):
        with tempfile.TemporaryDirectory(dir=directory) as tmp:  # concurrent builds (DDP ranks) never collide
            obj, built = os.path.join(tmp, "lstm_step.o"), os.path.join(tmp, "lstm_step.so")
            subprocess.run([compiler, *COMPILE, SOURCE, "-o", obj], check=True, capture_output=True, timeout=120)
            subprocess.run([compiler, obj, *LINK, "-o", built], check=True, capture_output=True, timeout=120)
            os.replace(built, library)
    return library


@functools.cache
def _library():
    """The loaded library, or None (no compiler, a failed build, not Linux/macOS, or CHARRNN_NATIVE=0)."""
    if os.environ.get("CHARRNN_NATIVE") == "0" or sys.platform == "win32":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    directory = _cache_dir()
    if not compiler or not directory:
        return None
    try:
        library = ctypes.CDLL(_build(compiler, directory))
    except (OSError, subprocess.SubprocessError):
        return None
    pointers, sizes = [ctypes.c_void_p] * 5, [ctypes.c_long] * 2
    for suffix in DTYPES.values():
        getattr(library, f"lstm_forward_{suffix}").argtypes = pointers + sizes
        getattr(library, f"lstm_backward_{suffix}").argtypes = pointers + [ctypes.c_void_p] * 2 + sizes
    return library


def lstm_steps(*tensors: torch.Tensor):
    """``(forward, backward)`` C functions for these tensors (all on the CPU, of one float dtype, contiguous),
    called with data pointers; None when they cannot take them (the torch loop is then used)."""
    dtype = tensors[0].dtype
    if dtype not in DTYPES or any(t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous() for t in tensors):
        return None
    library = _library()
    if library is None:
        return None
    suffix = DTYPES[dtype]
    return getattr(library, f"lstm_forward_{suffix}"), getattr(library, f"lstm_backward_{suffix}")
