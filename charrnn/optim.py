"""min-char-rnn's Adagrad as a torch optimizer.

min-char-rnn updates ``mem += g * g; p -= lr * g / sqrt(mem + 1e-8)``. ``torch.optim.Adagrad`` instead divides by
``sqrt(mem) + eps``: its first step moves every weight with a non-zero gradient by a full ``lr * sign(g)``, however
tiny the gradient, while eps inside the root damps gradients below ~1e-4. We keep the original rule so that
charrnn with one stream reproduces min-char-rnn step for step (pinned by tests/test_min_char_rnn.py).

``initial_accumulator_value`` (torch's name) starts ``mem`` above 0. With 0 (min-char-rnn) the first step moves
almost every weight by ``lr * sign(g)``, whatever the gradient's size; with ``mem`` starting at A the first steps
are ``lr * g / sqrt(A + g^2)``, proportional to the gradient while ``g^2`` is small against A.
"""

import ctypes
import math
import struct

import torch

from .cells import native, native_build, parallel

ADAGRAD = f"{__name__}.Adagrad"  # the optimizer without --optimizer, by the class path --optimizer would name it


class Adagrad(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.1, eps: float = 1e-8, initial_accumulator_value: float = 0.0):
        # As torch's optimizers refuse theirs: a negative eps makes sqrt(mem + eps) NaN wherever mem < -eps.
        given = {"learning rate": lr, "epsilon value": eps, "initial_accumulator_value": initial_accumulator_value}
        for name, value in given.items():
            if not value >= 0:
                raise ValueError(f"Invalid {name}: {value}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, mems = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state[p]
                    if "mem" not in state:
                        start = group.get("initial_accumulator_value", 0.0)  # absent from older checkpoints
                        state["mem"] = torch.full_like(p, start, memory_format=torch.preserve_format)
                    params.append(p)
                    grads.append(p.grad)
                    mems.append(state["mem"])
            if params:
                _update(params, grads, mems, group["lr"], group["eps"])
        return loss


# The fewest weights per block of an update on several threads: a GRU of 256 (270,000 weights) took 0.23 ms a step
# in one block on one thread, 0.18 in two blocks on two.
BLOCK_ELEMENTS = 2**16


def _update(params, grads, mems, lr: float, eps: float) -> None:
    """``mem += g * g; p -= lr * g / sqrt(mem + eps)`` for each weight: in native.c, one pass in a block per thread
    (charrnn/cells/parallel.py), where the tensors are contiguous on the CPU in one float dtype; else torch's list
    operations, which a GPU runs as a few kernels."""
    tensors = [*params, *grads, *mems]
    dtype = params[0].dtype
    part = native.kernel(f"adagrad_{native_build.DTYPES[dtype]}_part") if dtype in native_build.DTYPES else None
    if part is None or not all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors):
        torch._foreach_addcmul_(mems, grads, grads)
        denominators = torch._foreach_add(mems, eps)
        torch._foreach_sqrt_(denominators)
        torch._foreach_addcdiv_(params, grads, denominators, value=-lr)
        return
    rows = [x for p, g, m in zip(params, grads, mems) for x in (p.data_ptr(), g.data_ptr(), m.data_ptr(), p.numel())]
    rows = (ctypes.c_long * len(rows))(*rows)  # (p, g, mem, n) for each weight, as native.c reads them
    total, floats = sum(p.numel() for p in params), struct.unpack("2q", struct.pack("2d", lr, eps))
    blocks = parallel.split(total, min(parallel.threads(), -(-total // BLOCK_ELEMENTS)))
    parallel.run_parts(part, lambda block: [ctypes.addressof(rows), len(params), *block, *floats], blocks, rowwise=True)


def take_base_rates(optimizer: torch.optim.Optimizer, schedulers, base_rates) -> None:
    """Make ``base_rates`` (this run's flags) the base learning rates of ``optimizer`` and its ``schedulers``, as
    restored from a checkpoint. Without a schedule the rate is the base; with one the schedule's factor at the
    restored step is kept, the rate scaled by new base / saved base. Unchanged rates leave every value as saved."""
    for i, (group, base) in enumerate(zip(optimizer.param_groups, base_rates)):
        if "initial_lr" not in group:  # set by a schedule: its base
            group["lr"] = base
        elif group["initial_lr"] != base:
            group["lr"] *= base / group["initial_lr"]
            group["initial_lr"] = base
            for scheduler in schedulers:
                scheduler.base_lrs[i] = base


def rate_problem(lr: float) -> str | None:
    """Why a learning rate cannot train, or None: a negative rate climbs the loss (gradient ascent) and a
    non-finite one turns every weight it touches non-finite."""
    if not math.isfinite(lr):
        return "not finite"
    if lr < 0:
        return "negative (it would climb the loss)"
    return None
