"""What the model is: the one description of the network that training, checkpoints and sampling ask.

``Architecture`` names the network (cell, depth, sizes, dropout) and knows its parameters and its carried state;
the functions below are the training step and the forward pass that everything outside the math calls. The math
itself is plain tensor code: one file per cell in ``cells/`` and their stacking, dropout and output layer in
``stack.py``.
"""

import dataclasses
import math

import torch

from . import stack
from .cells import CELLS, parallel
from .errors import UsageError


@dataclasses.dataclass(frozen=True)
class Architecture:
    vocab_size: int
    hidden_size: int
    cell: str = "rnn"
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--model.{name} must be a positive integer, got {value}")
        if self.cell not in CELLS:
            raise UsageError(f"--model.cell must be one of {', '.join(CELLS)}, got {self.cell}")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise UsageError(f"--model.dropout must be a number from 0 up to (not including) 1, got {p}")

    @property
    def cell_math(self):
        """The cell's module in ``cells/`` (its gates, carried tensors and layer math)."""
        return CELLS[self.cell]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in the order the parameters are created (and initialised)."""
        return stack.param_shapes(self.cell_math, self.vocab_size, self.hidden_size, self.num_layers)

    def num_weights(self) -> int:
        """How many numbers the parameters hold, by arithmetic alone, so that a size or depth beyond any machine's
        memory (or a depth of millions of layers) is refused at once."""
        H, V = self.hidden_size, self.vocab_size
        layer = lambda inputs: sum(math.prod(shape) for shape in self.cell_math.layer_shapes(inputs, H).values())  # noqa: E731
        return layer(V) + (self.num_layers - 1) * layer(H) + V * (H + 1)

    def init_params(self, generator=None, dtype=torch.float32) -> dict:
        return stack.init_params(self.cell_math, self.vocab_size, self.hidden_size, self.num_layers, generator, dtype)

    def zero_state(self, batch: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """The state a stream starts from: (batch, L * K, H), streams first (as distributed.gather_rows and
        rows_of_rank expect); row j of a stream is layer j // K's state j % K (h, then the LSTM's c)."""
        return stack.zero_state(self.cell_math, batch, self.num_layers, self.hidden_size, dtype, device)

    def dropout_masks(self, seed: int, step: int, first_stream: int, batch: int, seq_length: int, dtype, device):
        """The training masks of streams ``first_stream ...`` at ``step`` (None without dropout): a function of
        (seed, step, global stream), so any split of the streams over processes, and a resumed run, draw the same."""
        return stack.dropout_masks(self.dropout, seed, step, first_stream, batch, seq_length, self.num_layers,
                                   self.hidden_size, dtype, device)  # fmt: skip

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


def loss_and_grads(arch: Architecture, params: dict, inputs, targets, state, masks=None):
    """``(loss summed over the batch, gradients averaged over streams, state after the batch)``: see stack.py."""
    return stack.loss_and_grads(arch.cell_math, params, inputs, targets, state, masks)


def forward(arch: Architecture, params: dict, inputs, state):
    """The forward pass alone, without dropout: ``(logits (B, T, V), state after them, every layer's activations)``."""
    return stack.forward(arch.cell_math, params, inputs, state)


def logits(arch: Architecture, params: dict, inputs, state):
    """Next-character scores (B, T, V) for ``inputs`` (B, T), and the state after them."""
    return forward(arch, params, inputs, state)[:2]


def target_log_probs(arch: Architecture, params: dict, inputs, targets, state):
    """``(log p of each of targets (B, T) given the inputs up to it, state after them)``: what validation and the
    Python API's score measure."""
    scores, state = logits(arch, params, inputs, state)
    return torch.log_softmax(scores, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1), state


def train_step(arch: Architecture, params: dict, optimizer, inputs, targets, state, clip=5.0, mean=None,
               masks=None):  # fmt: skip
    """min-char-rnn's update for one window: BPTT, element-wise clip to [-clip, clip], then the optimizer's step.

    ``mean``: a function taking ``[loss, *gradients]`` to their means over every copy of the model (processes),
    applied before clipping, so N copies of B streams step exactly as one with N * B streams. ``masks``: the window's
    dropout masks (``Architecture.dropout_masks``). Returns ``(loss, state)``; ``params`` must be the tensors the
    optimizer steps.
    """
    with torch.no_grad():
        loss, grads, state = loss_and_grads(arch, params, inputs, targets, state, masks)
        if mean is not None:
            loss, *averaged = mean([loss, *grads.values()])
            grads = dict(zip(grads, averaged))
        for name, grad in grads.items():
            # In place: Lightning's clip_gradients costs more than a small step.
            params[name].grad = grad.clamp_(-clip, clip)
    optimizer.step()
    parallel.step_ended()
    return loss, state
