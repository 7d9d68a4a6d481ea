"""What charrnn is measured against: Karpathy's NumPy min-char-rnn, and the model a PyTorch user would write
(``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear`` + autograd + ``torch.optim.Adagrad`` in a LightningModule with
automatic optimization).
"""

import functools


import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from charrnn.module import CharRNN
from tests.min_char_rnn import MinCharRNN  # noqa: F401  (the NumPy baseline, owned by the tests it is the reference of)


def validation_loss(params: list[np.ndarray], datamodule, vocab_size: int) -> float:
    """``val/loss`` of NumPy parameters (Wxh, Whh, Why, bh, by), computed by charrnn's own validation."""
    model = CharRNN(vocab_size=vocab_size, hidden_size=params[0].shape[0])
    with torch.no_grad():
        for p, value in zip(model.params.values(), params):
            p.copy_(torch.from_numpy(value))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["val/loss"])


TORCH_CELLS = {"rnn": functools.partial(torch.nn.RNN, nonlinearity="tanh"), "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class TorchRNN(L.LightningModule):
    """The same network as a PyTorch user would write it: ``nn.RNN`` (tanh), ``nn.LSTM`` or ``nn.GRU`` of
    ``num_layers`` over one-hot inputs, ``nn.Linear`` output, autograd, ``torch.optim.Adagrad`` and Lightning's
    automatic optimization (clipping via the Trainer)."""

    def __init__(self, vocab_size: int, hidden_size: int, learning_rate: float = 0.1, cell="rnn", num_layers=1):
        super().__init__()
        self.vocab_size, self.learning_rate = vocab_size, learning_rate
        self.rnn = TORCH_CELLS[cell](vocab_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, vocab_size)
        self.h = None

    def training_step(self, batch, batch_idx):
        inputs, targets, (window,) = batch  # one window per batch (CharDataModule's default): (1, B, T)
        inputs, targets = inputs[0], targets[0]
        if window == 0 or self.h is None:
            zeros = inputs.new_zeros((self.rnn.num_layers, inputs.shape[0], self.rnn.hidden_size), dtype=torch.float32)
            self.h = (zeros, zeros.clone()) if isinstance(self.rnn, torch.nn.LSTM) else zeros
        out, h = self.rnn(F.one_hot(inputs, self.vocab_size).float(), self.h)
        self.h = tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach()
        loss = F.cross_entropy(self.head(out).reshape(-1, self.vocab_size), targets.reshape(-1))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adagrad(self.parameters(), lr=self.learning_rate)
