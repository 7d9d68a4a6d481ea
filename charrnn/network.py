"""What the model is: the one description of the network that training, checkpoints and sampling ask.

``Architecture`` names the network (cell, depth, sizes) and knows its parameters and its carried state; the
functions below are the training step and the forward pass that everything outside the math calls. The math itself
is plain tensor code (today min-char-rnn's tanh RNN in ``rnn.py``).
"""

import dataclasses

import torch

from . import distributed, rnn
from .errors import UsageError

CELLS = ("rnn",)


@dataclasses.dataclass(frozen=True)
class Architecture:
    vocab_size: int
    hidden_size: int
    cell: str = "rnn"
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--model.{name} must be a positive integer, got {value}")
        if self.cell not in CELLS:
            raise UsageError(f"--model.cell {self.cell} is not supported; use one of: {', '.join(CELLS)}")
        if self.num_layers != 1:
            raise UsageError(f"--model.num_layers {self.num_layers} is not supported; use 1")
        if self.dropout != 0:
            raise UsageError(f"--model.dropout {self.dropout} is not supported; use 0")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in the order the parameters are created (and initialised)."""
        V, H = self.vocab_size, self.hidden_size
        return {"Wxh": (H, V), "Whh": (H, H), "Why": (V, H), "bh": (H, 1), "by": (V, 1)}

    def init_params(self, generator=None, dtype=torch.float32) -> dict:
        return rnn.init_params(self.vocab_size, self.hidden_size, generator=generator, dtype=dtype)

    def zero_state(self, batch: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """The state a stream starts from: (batch, H), one row per stream (streams first, as distributed.gather_rows
        and rows_of_rank expect)."""
        return torch.zeros((batch, self.hidden_size), dtype=dtype, device=device)

    def check_params(self, params: dict, source: str) -> None:
        """A UsageError naming ``source`` unless ``params`` are finite floating tensors of this network's shapes."""
        if not all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in params.values()):
            raise UsageError(f"{source} is not a charrnn checkpoint (its weights are missing or malformed)")
        if any(tuple(params[name].shape) != shape for name, shape in self.param_shapes().items()):
            raise UsageError(f"{source} is damaged: its weight shapes do not fit one network")
        if not all(bool(torch.isfinite(p).all()) for p in params.values()):
            raise UsageError(f"{source} has non-finite weights (training diverged); sample from an earlier checkpoint")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def loss_and_grads(arch: Architecture, params: dict, inputs, targets, state):
    """``(loss summed over the batch, gradients averaged over streams, state after the batch)``: see rnn.py."""
    return rnn.loss_and_grads(params, inputs, targets, state)


def logits(arch: Architecture, params: dict, inputs, state):
    """The forward pass alone: next-character scores (B, T, V) for ``inputs`` (B, T), and the state after them."""
    hs = rnn.hidden_states(params, inputs, state)
    return rnn.logits_of(params, hs[1:].transpose(0, 1)), hs[-1]


def train_step(arch: Architecture, params: dict, optimizer, inputs, targets, state, clip=5.0, over_ranks=False):
    """min-char-rnn's update for one window: BPTT, element-wise clip to [-clip, clip], then the optimizer's step.

    With ``over_ranks`` the loss and gradients are first averaged over the processes, before clipping, so N ranks of
    B streams step exactly as one process with N * B streams. Returns ``(loss, state)``; ``params`` must be the
    tensors the optimizer steps.
    """
    with torch.no_grad():
        loss, grads, state = loss_and_grads(arch, params, inputs, targets, state)
        if over_ranks:
            loss, *averaged = distributed.mean_over_ranks([loss, *grads.values()])
            grads = dict(zip(grads, averaged))
        for name, grad in grads.items():
            # In place: Lightning's clip_gradients costs more than a small step.
            params[name].grad = grad.clamp_(-clip, clip)
    optimizer.step()
    return loss, state

