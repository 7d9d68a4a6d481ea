"""charrnn's own threads on the CPU: the C window loops over blocks of streams, and a step's other large work (the
products by a weight, the weight gradients, the output layer) over blocks of rows, with no synchronisation inside a
block (charrnn/cells/fast.py, native.py, charrnn/stack.py, docs/cores.md).

Why not torch's threads: torch shares every operation among its threads and waits for all of them at its end, so a
window of a few hundred operations waits a few hundred times for its slowest thread, and next to a busy process
(another training run, a compile) the thread that shares a core with it stalls every one of them: on a loaded 2-core
machine an LSTM window on two torch threads ran 0.1-0.4x as fast as on one. Here a window's work is cut into a block
per thread, each thread takes the next block when it is done with one, and the caller waits only for blocks already
started: a thread that never gets a core takes none. Where sharing the blocks measures slower than the caller running
them alone (next to a busy process), the caller runs them alone (``_Way``). The blocks run C, posted and taken in
native.c with no thread holding Python's lock (``run_parts``), or torch operations on torch's one thread (``run``:
torch lets go of the lock during each).
"""

import contextlib
import ctypes
import functools
import os
import statistics
import threading
import time

import torch

from . import native_build

_threads = 1
_cpus: tuple[int, ...] = ()  # the CPU each thread keeps to, the caller's first; () when they move freely
_ALLOWED = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()  # the process's CPUs at start
# How long a thread waits spinning for the next blocks before it sleeps: longer than the gaps inside a step, where
# the caller runs its own parts (the clip, the optimizer, Lightning: 1-1.5 ms at 256 units), since a sleeping helper
# starts its next part 0.1-0.2 ms late on a virtual machine. 2 threads against 1 at 256 units: GRU 1.58x with
# 0.5 ms, 1.63x with 5; LSTM 1.67x and 1.75x (BENCHMARKS.md, section 13).
SPIN_NS = 5_000_000


def threads() -> int:
    """How many threads run a window's blocks (the caller's included): 1 unless ``set_threads`` said more."""
    return _threads


def set_threads(n: int, pin: bool = False) -> None:
    """Run windows on ``n`` threads from now on (train.py: ``--threads``, by default every available core).

    ``pin`` (train.py's one process): when ``n`` threads are as many as the CPUs the process may run on, each thread,
    the caller's included, keeps to one of them while a step's parts run. Left free on 2 CPUs, in about one run in
    three both threads shared one CPU for much of the run (1.1-1.3x one thread's speed instead of 1.5). Pinned, a
    process beside still gets its share: Linux moves it, not the pinned threads, and where a slowed thread makes
    sharing the slower way the caller runs the parts alone, on no fixed CPU (``_Way``). Otherwise (several processes,
    fewer threads than CPUs) every thread moves freely, as it does after ``set_threads`` without ``pin``."""
    global _threads, _cpus, _way
    _threads = n
    cpus = tuple(sorted(_ALLOWED))
    _cpus = cpus if pin and n > 1 and len(cpus) == n else ()
    _way = _Way()  # the way is measured afresh for the new threads


def _keep_to(cpu: int | None) -> None:
    """Keep the calling thread on ``cpu``, or on every CPU the process had at start (None)."""
    try:
        os.sched_setaffinity(0, {cpu} if cpu is not None else _ALLOWED)  # 0: the calling thread (Linux)
    except (AttributeError, OSError, ValueError):  # not Linux, or the CPU is gone: the thread moves freely
        pass


def _spin(word: ctypes.c_long, value: int) -> bool:
    """Spin (native.c, without the GIL) while ``word`` holds ``value``, for at most ``SPIN_NS``: whether it changed.
    Without the C library, False at once: the caller sleeps until woken."""
    library = native_build.library()
    return bool(library and library.spin_while(ctypes.addressof(word), value, SPIN_NS))


class _Board(ctypes.Structure):
    """native.c's ``struct board``: the last run posted to the helpers, and the taking of its C parts."""

    _fields_ = [("posted", ctypes.c_long), ("state", ctypes.c_long), ("finished", ctypes.c_long),
                ("part", ctypes.c_void_p), ("args", ctypes.c_void_p)]  # fmt: skip


PART_ARGS = 16  # native.c's: the integers each C part takes


class _Team:
    """The threads beside the caller's, each kept to its CPU of ``cpus`` (empty: free), started once for each thread
    count and set of CPUs and kept for the process. ``post`` has each of them run a Python ``job()`` once, or take C
    parts (``run_parts``); between runs a helper spins a while in native.c, without Python's lock, before it sleeps,
    so that the next part of the window finds it running."""

    def __init__(self, helpers: int, cpus: tuple[int, ...]):
        self.board, self.library = _Board(), native_build.library()
        self.job, self.woken = None, threading.Condition()
        for index in range(1, helpers + 1):
            threading.Thread(target=self._serve, args=(cpus[index] if cpus else None,), daemon=True,
                             name=f"charrnn-{index}").start()  # fmt: skip

    def post(self, job=None, part=None, args=None, count: int = 0) -> None:
        """The next run: a Python ``job`` every helper runs once, or ``count`` C parts (``part`` with each
        ``PART_ARGS`` integers of ``args``)."""
        with self.woken:
            self.job = job
            if self.library:
                self.library.post_run(ctypes.byref(self.board), part, args, count)
            else:
                self.board.posted += 1
            self.woken.notify_all()

    def _serve(self, cpu: int | None) -> None:
        """A helper's life: keep to its CPU, run torch's operations on torch's threads (one, as train.py sets it:
        OpenMP and MKL keep the thread count per thread and a new thread starts from the machine's default, so
        without this MKL and oneDNN start a team of every core inside each block: measured on 2 cores, the window's
        weight gradient in blocks on 2 threads took twice the processor time, 12.6 against 5.4 ms); then take each
        run's C parts in native.c (``serve``) and run each Python job posted, asleep when none came for a while."""
        _keep_to(cpu)
        torch.set_num_threads(torch.get_num_threads())
        seen, library = ctypes.c_long(0), self.library
        while True:
            if not (library and library.serve(ctypes.byref(self.board), ctypes.byref(seen), SPIN_NS)):
                with self.woken:
                    self.woken.wait_for(lambda: self.board.posted != seen.value)
                if library:
                    continue  # serve takes the run
                seen.value = self.board.posted
            with self.woken:
                job = self.job  # the last run's: a later one than serve saw (harmless), or C parts (None), taken next
            if job is not None:
                job()


@functools.cache
def _team(helpers: int, cpus: tuple[int, ...]) -> _Team:
    return _Team(helpers, cpus)


def split(size: int, count: int) -> list[tuple[int, int]]:
    """``[(first, end), ...]``: ``range(size)`` in ``count`` blocks whose sizes differ by one at most."""
    return [(size * i // count, size * (i + 1) // count) for i in range(count)]


def blocks(size: int) -> list[tuple[int, int]]:
    """``range(size)`` in one block per thread (fewer where ``size`` is smaller). Two per thread left a thread slowed
    by another process less to hold up, but ran the window loops 5-10% slower on an idle machine (the packed weight
    read once more per block and step), and next to a busy process the caller now runs the parts alone (``_Way``)."""
    return split(size, min(size, _threads))


SPLIT_ROWS = 128  # rows per block of a window's product or output layer, at least: fewer do not pay for the block


def row_blocks(rows: int, device=torch.device("cpu")) -> list[tuple[int, int]]:
    """Blocks of a window's rows (T * B: a product by a weight, the output layer) on the CPU: one per thread, of at
    least ``SPLIT_ROWS`` rows; a recurrence's per-step products (a few dozen rows) stay whole (a split per step would
    wait for the slowest thread every step), and so does work on a GPU. (Two blocks per thread left a thread slowed
    by another process less to hold up, but cost 3-4% of an LSTM's step at 256 units on an idle machine, and next to
    a busy process the caller now runs the parts alone: ``_Way``.)"""
    threads = _threads if device.type == "cpu" else 1
    return split(rows, max(min(threads, rows // SPLIT_ROWS), 1))


class _Parts:
    """One ``run``: its parts, taken one at a time by whichever thread is free, and what they gave."""

    def __init__(self, work, parts: list):
        self.work, self.parts, self.results, self.error = work, parts, [None] * len(parts), None
        self.taken, self.finished, self.lock = 0, ctypes.c_long(0), threading.Lock()
        self.done = threading.Condition(self.lock)
        self.grad, self.inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def take(self) -> None:
        """Run parts until none is left (or one failed), in the caller's autograd mode (torch keeps it per thread)."""
        with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
            while True:
                with self.lock:
                    if self.taken == len(self.parts) or self.error is not None:
                        return
                    i, self.taken = self.taken, self.taken + 1
                try:
                    self.results[i] = self.work(self.parts[i])
                except BaseException as e:
                    with self.lock:
                        self.error = self.error or e
                finally:
                    with self.lock:
                        self.finished.value += 1
                        self.done.notify_all()

    def wait(self) -> None:
        """Until every part taken has finished (spinning first, then asleep): no part is left running anywhere.
        Called once the caller's ``take`` returned, when no more parts are taken."""
        target = self.taken
        while (finished := self.finished.value) != target:
            if not _spin(self.finished, finished):
                with self.lock:
                    self.done.wait_for(lambda: self.finished.value == target)


class _Way:
    """Whether the parts run shared among the threads or on the caller alone: whichever measured faster lately.

    Next to another busy process (a second training run, a compiler) the thread that shares a CPU with it runs at
    half speed, and a part of a few small torch operations hands Python's lock between the threads at each of them:
    shared, the LSTM at 256 units trained at 0.82-0.92x of one thread's speed (docs/cores.md). So now and then (a
    probe) three stretches of training steps go this way, the other way, this way again, each stretch at least
    ``STEPS`` steps and ``SECONDS`` long, every step timed from the end of the one before (``step_ended``: the
    caller's own work, Lightning's included), and the way changes when the other stretch's median step took less
    than the median step of each stretch around it by a margin (a drift of the machine's speed, a validation inside
    a stretch, a step preempted by the neighbour, then change nothing): the caller goes alone unless its stretch
    was more than ``-TO_ALONE`` slower, and takes the helpers back only when sharing is ``TO_SHARED`` faster. Next to a
    busy neighbour the two ways ran about as fast (a shared step as fast as one alone, or 8% slower, by run) and
    the shared way erratic, so a close call goes alone, which also leaves the neighbour its core; idle, sharing is
    60-80% faster and passes either. (Stretches of a fixed number of parts, timed whole, compared mismatched phases
    of a step and let one preempted step decide: next to a busy process an LSTM at 256 units stayed shared for 4 s
    at 0.86x after one such probe.) The first probe starts after the first step (its warm-up untimed), the next
    ``PROBE_SECONDS`` after one that changed the way, twice as long after one that did not (up to
    ``LONGEST_SECONDS``). Without steps (inference) the way stays as it is. Either way runs the same parts and adds
    their results in the same order: the way changes how long a step takes, never its bits."""

    STEPS, SECONDS = 3, 0.1
    PROBE_SECONDS, LONGEST_SECONDS = 2.0, 16.0
    TO_ALONE, TO_SHARED = -0.04, 0.10  # alone: at most 4% slower; shared: at least 10% faster

    def __init__(self):
        self.shared, self.wait, self.probe_at = True, self.PROBE_SECONDS, 0.0
        self.last_end, self.stretches = None, None  # stretches: each one's step times, in a probe

    def next(self) -> bool:
        """Whether the next run goes shared: the present stretch's way."""
        return self.shared != (self.stretches is not None and len(self.stretches) == 2)

    def step_ended(self) -> None:
        """A training step ended: time it, and move the probe on."""
        now = time.monotonic()
        last, self.last_end = self.last_end, now
        if last is None:
            return
        if self.stretches is None:
            if now >= self.probe_at:
                self.stretches = [[]]
            return
        stretch = self.stretches[-1]
        stretch.append(now - last)
        if len(stretch) < self.STEPS or sum(stretch) < self.SECONDS:  # back to back: their sum is the stretch's length
            return
        if len(self.stretches) < 3:
            self.stretches.append([])
            return
        before, other, after = map(statistics.median, self.stretches)
        change = other < (1 - (self.TO_ALONE if self.shared else self.TO_SHARED)) * min(before, after)
        self.shared ^= change
        self.wait = self.PROBE_SECONDS if change else min(2 * self.wait, self.LONGEST_SECONDS)
        self.stretches, self.probe_at = None, now + self.wait


_way = _Way()


def step_ended() -> None:
    """A training step ended (network.train_step): ``_Way`` times the ways by whole steps."""
    _way.step_ended()


def _alone(parts: list, rowwise: bool) -> list | None:
    """The parts the caller runs alone (one thread, or ``_Way`` found that faster), ``rowwise`` ones as one part
    ``(first of the first, end of the last)``; None where they go shared."""
    if _threads > 1 and len(parts) > 1 and _way.next():
        return None
    return [(parts[0][0], parts[-1][1])] if rowwise else parts


def run(work, parts: list, rowwise: bool = False) -> list:
    """``[work(part) for part in parts]``, on ``threads()`` threads, each taking the next part when it is done with
    one; the caller runs parts too and waits only for those already started elsewhere. Parts run in the caller's
    autograd mode. Raises what a part raised.

    Or on the caller alone, where that measured faster (``_Way``); then ``rowwise`` work (parts ``(first, end)``
    whose every row comes out the same bits however the rows are split, and whose results are not used) runs as one
    part ``(first of the first, end of the last)``, as on one thread."""
    alone = _alone(parts, rowwise)
    if alone is not None:
        return [work(part) for part in alone]
    state = _Parts(work, parts)
    _team(_threads - 1, _cpus).post(state.take)
    with _on_own_cpu():
        state.take()
        state.wait()  # no helper writes into the caller's buffers after the return
    if state.error is not None:
        raise state.error
    return state.results


def run_parts(part, args_of, parts: list, rowwise: bool = False) -> None:
    """``run`` for C work: ``part``, one of native.c's ``*_part`` functions, called with the integers
    ``args_of(p)`` (addresses and sizes, at most ``PART_ARGS``) for each part ``p``. Shared, no thread takes
    Python's lock from the post to the end (native.c's ``run_parts``): a helper spinning there starts within
    microseconds."""
    alone = _alone(parts, rowwise)
    if alone is not None:
        for p in alone:
            part((ctypes.c_long * PART_ARGS)(*args_of(p)))
        return
    args = (ctypes.c_long * (PART_ARGS * len(parts)))()
    for i, p in enumerate(parts):
        values = args_of(p)
        args[i * PART_ARGS : i * PART_ARGS + len(values)] = values
    team = _team(_threads - 1, _cpus)
    team.post(part=part, args=args, count=len(parts))
    with _on_own_cpu():
        team.library.run_parts(ctypes.byref(team.board), SPIN_NS)  # returns when every part is finished


@contextlib.contextmanager
def _on_own_cpu():
    """The caller kept to its CPU (where ``set_threads`` pinned the threads) while it runs parts: what it starts
    after them (a compiler, DataLoader workers) may use every CPU."""
    if _cpus:
        _keep_to(_cpus[0])
    try:
        yield
    finally:
        if _cpus:
            _keep_to(None)


def run_summed(work, parts: list) -> tuple:
    """``run``'s results added up item by item, into the first part's: ``work`` returns a tuple of tensors (a block's
    share of sums over rows)."""
    total, *others = run(work, parts)
    for other in others:
        for t, o in zip(total, other):
            t += o
    return total
