"""Multi-process glue for hand-written gradients.

DDP averages gradients from hooks inside autograd's backward. charrnn's gradients are written by hand and never
pass through autograd, so under DDP each rank would silently train its own model. ``mean_over_ranks`` does the
averaging explicitly, with the process group Lightning set up.
"""

import torch
import torch.distributed as dist


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
