"""native_build.py's loading of native.c's library: never a library another account could have planted (a directory
of theirs or open to all, a symlinked cache, a file others may write: each planted with its right sha256, whose
constructor leaves a marker file), never a crash on a damaged cached library (cut short, zeroed, lacking a function:
rebuilt), and at most one line on stderr when charrnn goes on without C. Each run is a fresh process (``probe``),
so a crash shows as its exit code, with its cache and temporary directories under tmp_path."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.cells import native_build

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None or sys.platform == "win32", reason="needs a C compiler")

PROBE = """
import numpy as np
from charrnn.cells import native
matvec = native.kernel("matvec_f32_f64")
if matvec is None:
    print("torch")
else:
    W, x, out = np.arange(12, dtype=np.float32).reshape(3, 4), np.linspace(-1, 1, 4), np.empty(3)
    matvec(W.ctypes.data, x.ctypes.data, out.ctypes.data, 3, 4)
    assert np.allclose(out, W.astype(np.float64) @ x), out
    print("c")
"""

PLANTED = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}
"""


@pytest.fixture
def env(tmp_path):
    """The environment of a probe: its cache and temporary directories in tmp_path, the system's compiler."""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CHARRNN_NATIVE", "CHARRNN_CFLAGS")}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"), "CC": CC}


def probe(env) -> tuple[int, str, str]:
    """A new process calls a C kernel (``matvec_f32_f64``, checked against NumPy): its exit code, "c" or "torch"
    (which path it took), and its stderr."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout.strip(), proc.stderr


def library_name(compiler=CC) -> str:
    """The file name charrnn gives the library for this source, compiler version, flags and CPU."""
    return native_build._name(compiler, native_build.COMPILE)


def planted_library(tmp_path, complete=True) -> bytes:
    """A library whose constructor creates tmp_path/marker: with all of native.c (an attacker's library that works),
    else with none of its functions."""
    source = tmp_path / "planted.c"
    source.write_text(PLANTED)
    out = tmp_path / "planted.so"
    marker = f'-DMARKER="{tmp_path / "marker"}"'
    sources = [native_build.SOURCE] if complete else []
    flags = [f for f in native_build.COMPILE if f != "-c"]
    command = [CC, *flags, marker, str(source), *sources, *native_build.LINK, "-o", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return out.read_bytes()


def plant(directory: Path, library: bytes, name: str = None) -> Path:
    """``library`` where charrnn looks for its own in ``directory``, with its sha256 recorded beside it."""
    path = directory / (name or library_name())
    path.write_bytes(library)
    Path(f"{path}.sha256").write_text(hashlib.sha256(library).hexdigest() + "\n")
    return path


def assert_works_without_marker(tmp_path, env):
    code, path, stderr = probe(env)
    assert (code, path, stderr) == (0, "c", "")
    assert not (tmp_path / "marker").exists(), "the planted library was loaded"


def test_the_planted_library_works_and_leaves_its_marker(tmp_path, env):
    """The control of the tests below: planted in a private cache (ours, 0700, the file 0600, its sha256 recorded),
    the library is taken for charrnn's own build, works, and leaves the marker they look for."""
    directory = tmp_path / "cache" / "charrnn"
    directory.mkdir(parents=True, mode=0o700)
    plant(directory, planted_library(tmp_path)).chmod(0o600)
    assert probe(env) == (0, "c", "")
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("where", ["cache", "tmp"])
def test_a_directory_open_to_all_or_another_accounts_is_not_used(tmp_path, env, where):
    """``charrnn`` in the cache, or ``charrnn-<uid>`` in the temporary directory (where charrnn builds when the
    cache cannot be made: here XDG_CACHE_HOME is a file), made by another account (as root: uid 65534) with mode
    0777 and holding a library: charrnn builds elsewhere, and the temporary directory of its own is gone after."""
    if where == "tmp":
        (tmp_path / "cache").write_text("")
        directory = tmp_path / "tmp" / f"charrnn-{os.getuid()}"
    else:
        directory = tmp_path / "cache" / "charrnn"
    directory.mkdir(parents=True)
    planted = plant(directory, planted_library(tmp_path))
    directory.chmod(0o777)
    if os.getuid() == 0:
        for path in (directory, planted, Path(f"{planted}.sha256")):
            os.chown(path, 65534, 65534)
    assert_works_without_marker(tmp_path, env)
    if where == "tmp":
        assert [p.name for p in (tmp_path / "tmp").iterdir()] == [directory.name]


def test_a_symlinked_cache_directory_is_not_followed(tmp_path, env):
    """The cache's ``charrnn`` a symlink to a directory (ours, 0700) holding a library: not loaded."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    plant(elsewhere, planted_library(tmp_path))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "charrnn").symlink_to(elsewhere)
    assert_works_without_marker(tmp_path, env)


@pytest.mark.parametrize("how", ["writable by others", "another account's", "a symlink"])
def test_a_library_file_not_ours_alone_is_not_loaded(tmp_path, env, how):
    """In charrnn's own cache directory, a library file that others may write to, that another account owns, or
    that is a symlink: not loaded, and replaced by charrnn's own build."""
    if how == "another account's" and os.getuid() != 0:
        pytest.skip("needs root to give a file to another account")
    directory = tmp_path / "cache" / "charrnn"
    directory.mkdir(parents=True, mode=0o700)
    path = plant(directory, planted_library(tmp_path))
    if how == "a symlink":
        path.rename(tmp_path / "target.so")
        path.symlink_to(tmp_path / "target.so")
    elif how == "writable by others":
        path.chmod(0o666)
    else:
        os.chown(path, 65534, 65534)
    assert_works_without_marker(tmp_path, env)
    assert not path.is_symlink() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077 == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == Path(f"{path}.sha256").read_text().strip()


def test_a_build_is_private_recorded_and_reused(tmp_path, env):
    """The first run builds into a 0700 directory a library and its sha256, neither writable by others; the next
    loads that same file."""
    assert probe(env) == (0, "c", "")
    directory = tmp_path / "cache" / "charrnn"
    path = directory / library_name()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (path, Path(f"{path}.sha256")))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == Path(f"{path}.sha256").read_text().strip()
    inode = path.stat().st_ino
    assert probe(env) == (0, "c", "")
    assert path.stat().st_ino == inode
    assert sorted(p.name for p in directory.iterdir()) == [path.name, f"{path.name}.sha256"]


def truncate(path: Path, size: int):
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "cut to 16384 bytes": lambda path, tmp_path: truncate(path, 16384),
    "cut by 4096 bytes": lambda path, tmp_path: truncate(path, path.stat().st_size - 4096),
    "zeroed": lambda path, tmp_path: path.write_bytes(bytes(path.stat().st_size)),
    "lacking functions": lambda path, tmp_path: plant(path.parent, planted_library(tmp_path, complete=False)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_library_is_rebuilt(tmp_path, env, damage):
    """A cached library cut short or zeroed (its sha256 no longer matches), or one lacking functions native.py
    calls (its sha256 recorded: a stale build), is rebuilt in place: the run works, silently, and so does the next."""
    assert probe(env) == (0, "c", "")
    path = tmp_path / "cache" / "charrnn" / library_name()
    good = path.read_bytes()
    DAMAGE[damage](path, tmp_path)
    assert probe(env) == (0, "c", "")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == Path(f"{path}.sha256").read_text().strip()
    assert len(path.read_bytes()) == len(good)
    assert probe(env) == (0, "c", "")


def assert_plain_path_with_one_line(env, *fragments):
    code, path, stderr = probe(env)
    assert (code, path) == (0, "torch"), stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("charrnn: the C kernels could not be loaded ("), stderr
    assert stderr.rstrip().endswith("; using the plain torch path") and all(f in stderr for f in fragments), stderr


def test_a_stale_library_and_a_failing_compiler_leave_the_plain_path(tmp_path, env):
    """A cached library lacking functions (its sha256 recorded) and a compiler that reports the same version but
    cannot build: one line on stderr, and the run goes on in plain torch."""
    compiler = tmp_path / "cc"
    script = f'[ "$1" = --version ] && exec {CC} --version\necho "cc: cannot build" >&2; exit 1\n'
    compiler.write_text("#!/bin/sh\n" + script)
    compiler.chmod(0o755)
    directory = tmp_path / "cache" / "charrnn"
    directory.mkdir(parents=True, mode=0o700)
    plant(directory, planted_library(tmp_path, complete=False), library_name(str(compiler)))
    assert_plain_path_with_one_line(env | {"CC": str(compiler)}, "cannot build")


@pytest.mark.parametrize("flags, fragment", [('"-O2', "CHARRNN_CFLAGS"), ("-mno-such-option", "-mno-such-option")])
def test_bad_compiler_flags_leave_the_plain_path(env, flags, fragment):
    """``CHARRNN_CFLAGS`` that shlex cannot split (an unbalanced quote), or that the compiler refuses: one line on
    stderr, no traceback, and the run goes on in plain torch."""
    assert_plain_path_with_one_line(env | {"CHARRNN_CFLAGS": flags}, fragment)
