"""native.c built into a shared library and loaded with ctypes: never a file another account could have written,
never a damaged one.

The library is built once per source, compiler, flags and CPU (``-march=native``, and ``CHARRNN_CFLAGS`` from the
environment) into ~/.cache/charrnn (or $XDG_CACHE_HOME/charrnn), else <tempdir>/charrnn-<uid>, else a directory of
this process removed at exit. Why the care: loading a library runs its constructors as the user, so a library that
someone else could have replaced runs their code as us. A directory is used only if it is ours, not a symlink, and no
one else may write to it (made 0700 when missing); the library file likewise. Why the checksum: a cached file cut
short or zeroed (a crash, a full disk) was a SIGBUS or SIGSEGV at every later run, and only the file's existence was
checked. Its sha256, recorded when it is built (``native-KEY.so.sha256``), must match before it is loaded. A mismatch
rebuilds it; a library lacking a function native.py calls, or one the loader refuses, is rebuilt once; if that fails
(or the compiler does, or ``CHARRNN_CFLAGS`` cannot be parsed), one line on stderr and charrnn runs its plain torch
path.
"""

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native.c")
COMPILE = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-c"]
LINK = ["-shared", "-lmvec", "-lm"]  # glibc's vector exp
DTYPES = {torch.float32: "float32", torch.float64: "float64"}  # native.c's suffixes: lstm_forward_float32, ...

_P, _N = ctypes.c_void_p, ctypes.c_long  # a pointer, a size
PARTS = ("pack_panels_f32", "lstm_forward_window_f32", "lstm_backward_window_f32", "gru_forward_window_f32",
         "gru_backward_window_f32")  # fmt: skip  # each also as <name>_part, taking its arguments as one array
FUNCTIONS = [  # the C functions native.py calls and their arguments, in groups that native.c builds all or none of
    {  # every CPU
        **{f"lstm_forward_{suffix}": [_P] * 6 + [_N] * 2 for suffix in DTYPES.values()},
        **{f"lstm_backward_{suffix}": [_P] * 7 + [_N] * 2 for suffix in DTYPES.values()},
        **{f"adagrad_{suffix}_part": [_P] for suffix in DTYPES.values()},
        "matvec_f32_f64": [_P] * 3 + [_N] * 2,
        "lstm_generate": [_N, _P, _P] + [_N] * 3 + [_P] * 7 + [ctypes.c_double, ctypes.c_int, _P, _P],
        "spin_while": [_P, _N, _N],
        "post_run": [_P, _P, _P, _N],
        "run_parts": [_P, _N],
        "serve": [_P, _P, _N],
    },
    {  # AVX-512 CPUs
        "pack_panels_f32": [_P, _N, _N, _P] + [_N] * 2,
        "product_f32": [_P, _N, _P, _P, _N, _P, _N] + [_N] * 3,
        "lstm_forward_window_f32": [_P] * 8 + [_N] * 4,
        "lstm_backward_window_f32": [_P] * 11 + [_N] * 4,
        "gru_forward_window_f32": [_P] * 9 + [_N] * 4,
        "gru_backward_window_f32": [_P] * 12 + [_N] * 4,
        **{f"{name}_part": [_P] for name in PARTS},
    },
    {"matvec_f16": [_P] * 3 + [_N] * 2 + [_P]},  # F16C + AVX2 + FMA CPUs
]


def turned_off() -> bool:
    """``CHARRNN_NATIVE=0``: plain torch and NumPy only (no C, no oneDNN products)."""
    return os.environ.get("CHARRNN_NATIVE") == "0"


def _ours(st: os.stat_result) -> bool:
    """Whether a file's status says it is ours and no one else may write to it."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _private(path: str) -> bool:
    """Whether ``path`` is a directory (a symlink is not) that is ours, that no one else may write to, and we may."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _ours(st) and os.access(path, os.W_OK)


def _cache_dir():
    """A private directory to build in (``_private``): the cache's, the temporary directory's ``charrnn-<uid>``, else
    a new one removed at exit; None if none can be made."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for parent, name in ((base, "charrnn"), (tempfile.gettempdir(), f"charrnn-{os.getuid()}")):
        path = os.path.join(parent, name)
        try:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(path, 0o700)
        except OSError:  # there already (checked below like any other), or not ours to make
            pass
        if _private(path):
            return path
    try:
        path = tempfile.mkdtemp(prefix="charrnn-")
    except OSError:
        return None
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _name(compiler: str, compile_flags: list) -> str:
    """The library's file name: a key of the source, the flags, the compiler's version and the CPU."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = " ".join(compile_flags + LINK).encode()
    key = hashlib.sha256(b"\0".join([source, flags, version.encode(), _cpu_flags().encode()]))
    return f"native-{key.hexdigest()[:16]}.so"


def _read_ours(path: str):
    """The bytes of ``path`` when it is a regular file that is ours and no one else may write to (never through a
    symlink), else None. The checks and the read are of one open file, which no rename can swap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        return f.read() if stat.S_ISREG(st.st_mode) and _ours(st) else None


def _missing(library) -> list:
    """The functions of ``FUNCTIONS`` that ``library`` lacks (one of a group it has part of, or of the first),
    declaring the arguments of those it has."""
    missing = []
    for i, group in enumerate(FUNCTIONS):
        there = [name for name in group if hasattr(library, name)]
        if there or i == 0:
            missing += [name for name in group if name not in there]
        for name in there:
            getattr(library, name).argtypes = group[name]
    return missing


def _cached(path: str):
    """The library at ``path`` loaded, when it and its recorded sha256 are ours alone and match; else None."""
    data, recorded = _read_ours(path), _read_ours(path + ".sha256")
    if data is None or recorded is None or hashlib.sha256(data).hexdigest().encode() != recorded.strip():
        return None
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    return None if _missing(library) else library


def _write(path: str, data: bytes, directory: str):
    """``data`` into ``path`` through a new file in ``directory``, on disk before it is renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)


def _build(compiler: str, compile_flags: list, path: str):
    """Compiles native.c, loads the result, and only then records it at ``path`` with its sha256."""
    directory = os.path.dirname(path)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:  # concurrent builds (DDP ranks) never collide
        obj, built = os.path.join(tmp, "native.o"), os.path.join(tmp, "native.so")
        for command in ([compiler, *compile_flags, SOURCE, "-o", obj], [compiler, obj, *LINK, "-o", built]):
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        with open(built, "rb") as f:
            data = f.read()
        # Loaded from its own new name: dlopen hands back an object already loaded under the same name (say a
        # damaged library lacking a function), whatever the file now holds.
        library = ctypes.CDLL(built)
        missing = _missing(library)
        if missing:
            raise OSError(f"{SOURCE} built without {', '.join(missing)}")
        _write(path, data, tmp)
        _write(path + ".sha256", hashlib.sha256(data).hexdigest().encode() + b"\n", tmp)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames
    finally:
        os.close(fd)
    return library


def _without(reason: str) -> None:
    """One line on stderr: charrnn goes on without the library."""
    reason = " ".join(reason.split())
    print(f"charrnn: the C kernels could not be loaded ({reason}); using the plain torch path", file=sys.stderr)


def _reason(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        lines = (error.stderr or "").strip().splitlines()
        return f"{error.cmd[0]} failed: {lines[-1] if lines else f'exit status {error.returncode}'}"
    return str(error) or type(error).__name__


@functools.cache
def library():
    """The loaded library, or None (no compiler, a failed build, not Linux/macOS, or CHARRNN_NATIVE=0): from the
    cache when intact (``_cached``), else built once."""
    if turned_off() or sys.platform == "win32":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not compiler:
        return None
    try:
        compile_flags = COMPILE + shlex.split(os.environ.get("CHARRNN_CFLAGS", ""))
    except ValueError as e:
        return _without(f"CHARRNN_CFLAGS: {e}")
    directory = _cache_dir()
    if directory is None:
        return _without("no private directory to build it in")
    try:
        path = os.path.join(directory, _name(compiler, compile_flags))
        return _cached(path) or _build(compiler, compile_flags, path)
    except (OSError, subprocess.SubprocessError) as e:
        return _without(_reason(e))
