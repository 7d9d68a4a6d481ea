"""Multi-process glue for hand-written gradients.

DDP averages gradients from hooks inside autograd's backward. charrnn's gradients are written by hand and never
pass through autograd, so under DDP each rank would silently train its own model. ``mean_over_ranks`` does the
averaging explicitly, with the process group Lightning set up. With ``--trainer.strategy ddp`` rank 0 starts the
other ranks (train.py run again) and stops them if it ends before they do (``start_ranks_quietly``,
``stop_started_ranks``).
"""

import os
import signal
import subprocess
import time

import torch
import torch.distributed as dist

from .entry import RANK_ZERO_PID  # tells a started rank which process it must not outlive


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over all ranks, as views of one flat buffer.

    One all-reduce of the concatenation instead of one per tensor: a step costs one collective's latency, however
    many parameters there are. ``torch.distributed.all_reduce`` is used directly rather than
    ``strategy.reduce``, which adds a barrier (a second collective) before every reduction.
    """
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def release_process_group() -> None:
    """Shut the process group down while the interpreter is still alive: gloo's worker threads, still freeing a
    collective's tensors at interpreter exit, abort the process (SIGABRT) after a run that finished fine."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` stacked in rank order: the inverse of ``rows_of_rank``."""
    world = rank_and_world()[1]
    if world == 1:
        return rows
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def block_of_rank(rows, rank: int, world: int):
    """Rank ``rank``'s contiguous share of ``rows`` laid out in stream order: block ``rank`` of ``world``."""
    per_rank = rows.shape[0] // world
    return rows[rank * per_rank : (rank + 1) * per_rank]


def rows_of_rank(rows: torch.Tensor) -> torch.Tensor:
    """This process's share of ``rows`` (stream order): the inverse of ``gather_rows``."""
    return block_of_rank(rows, *rank_and_world())


def stop_started_ranks(launcher) -> None:
    """End the ranks Lightning started for this process (train.py run again per rank) when it stops before they
    finish: before this process exits and closes the sockets they wait on (they would print a traceback). Two
    signals (a started rank waits for a second one, entry._leave_to_rank_zero), then SIGKILL for a rank blocked in C.
    Lightning's observer thread watches the same list: emptied first, so a rank that ends here is not taken for a
    crash ("Forcefully terminating" this process)."""
    ranks = list(getattr(launcher, "procs", ()))
    if not ranks:
        return
    launcher.procs.clear()
    for _ in range(2):
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    for rank in ranks:
        try:
            rank.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def start_ranks_quietly(launcher) -> None:
    """Make ``launcher`` (Lightning's, which runs train.py again for each other rank) start its ranks with SIGINT
    and SIGTERM blocked, and telling them rank 0's process id. A Ctrl-C in a rank's first moments, before
    entry.start can handle it, would print Python's own KeyboardInterrupt traceback (or a SIGTERM end it at once,
    which rank 0's Lightning takes for a crash); blocked, it waits for entry.start, which unblocks it. Rank 0's own
    signals wait for those few milliseconds, too."""
    start = getattr(launcher, "_call_children_scripts", None)
    if start is None:  # not a launcher that starts processes
        return

    def held():
        os.environ[RANK_ZERO_PID] = str(os.getpid())
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    launcher._call_children_scripts = held
