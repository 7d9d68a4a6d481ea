"""charrnn's own threads on the CPU: the C window loops over blocks of streams, and the window's large products over
blocks of rows, with no synchronisation inside a block (charrnn/cells/fast.py, native.py).

Why not torch's threads: torch shares every operation among its threads and waits for all of them at its end, so a
window of a few hundred operations waits a few hundred times for its slowest thread, and next to a busy process
(another training run, a compile) the thread that shares a core with it stalls every one of them: on a loaded 2-core
machine an LSTM window on two torch threads ran 0.1-0.4x as fast as on one. Here a window's work is cut into more
blocks than threads, each thread takes the next block when it is done with one, and the caller waits only for blocks
already started: a slowed thread takes fewer blocks, and one that never gets a core takes none. The blocks run C
(ctypes releases the GIL during the call) or one torch operation on torch's one thread (torch releases it too).
"""

import concurrent.futures
import functools
import threading

import torch

_threads = 1


def threads() -> int:
    """How many threads run a window's blocks (the caller's included): 1 unless ``set_threads`` said more."""
    return _threads


def set_threads(n: int) -> None:
    """Run windows on ``n`` threads from now on (train.py: ``--threads``, by default every available core)."""
    global _threads
    _threads = n


@functools.cache
def _pool(helpers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The threads beside the caller's: started once for each thread count, kept for the process."""
    return concurrent.futures.ThreadPoolExecutor(helpers, thread_name_prefix="charrnn", initializer=_torch_threads)


def _torch_threads() -> None:
    """A helper runs torch's operations on torch's threads (one, as train.py sets it). OpenMP and MKL keep the
    thread count per thread and a new thread starts from the machine's default, so without this MKL and oneDNN
    start a team of every core inside each block (measured on 2 cores: the window's weight gradient in blocks on
    2 threads took twice the processor time, 12.6 against 5.4 ms)."""
    torch.set_num_threads(torch.get_num_threads())


PER_THREAD = 2  # blocks per thread where the work allows: a thread slowed by another process leaves the rest


def split(size: int, count: int) -> list[tuple[int, int]]:
    """``[(first, end), ...]``: ``range(size)`` in ``count`` blocks whose sizes differ by one at most."""
    return [(size * i // count, size * (i + 1) // count) for i in range(count)]


def blocks(size: int, most: int) -> list[tuple[int, int]]:
    """``range(size)`` in blocks for ``run``: one on one thread; else blocks of at most ``most``, and at least
    ``PER_THREAD`` per thread while ``size`` allows, so that a thread slowed by another process (or never started)
    leaves the others blocks to take over."""
    if _threads == 1:
        return [(0, size)]
    return split(size, max(-(-size // most), min(size, PER_THREAD * _threads)))


def run(work, parts: list) -> list:
    """``[work(part) for part in parts]``, on ``threads()`` threads, each taking the next part when it is done with
    one; the caller runs parts too and waits only for those already started elsewhere. Raises what a part raised."""
    if _threads == 1 or len(parts) == 1:
        return [work(part) for part in parts]
    results, order, lock = [None] * len(parts), iter(range(len(parts))), threading.Lock()

    def take_parts():
        while True:
            with lock:
                i = next(order, None)
            if i is None:
                return
            results[i] = work(parts[i])

    helpers = [_pool(_threads - 1).submit(take_parts) for _ in range(min(_threads, len(parts)) - 1)]
    try:
        take_parts()
    finally:  # even when a part failed here, no helper writes into the caller's buffers after the return
        for helper in helpers:
            if not helper.cancel():  # started: it may hold a part
                concurrent.futures.wait([helper])
    for helper in helpers:
        if not helper.cancelled():
            helper.result()  # raises what a part raised there
    return results
