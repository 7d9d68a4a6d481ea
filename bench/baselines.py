"""What charrnn is measured against: Karpathy's NumPy min-char-rnn, and the model a PyTorch user would write
(``nn.RNN`` + ``nn.Linear`` + autograd + ``torch.optim.Adagrad`` in a LightningModule with automatic optimization).
"""

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


class TorchRNN(L.LightningModule):
    """The same tanh RNN as a PyTorch user would write it: ``nn.RNN`` over one-hot inputs, ``nn.Linear`` output,
    autograd, ``torch.optim.Adagrad`` and Lightning's automatic optimization (clipping via the Trainer)."""

    def __init__(self, vocab_size: int, hidden_size: int, learning_rate: float = 0.1):
        super().__init__()
        self.vocab_size, self.learning_rate = vocab_size, learning_rate
        self.rnn = torch.nn.RNN(vocab_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.head = torch.nn.Linear(hidden_size, vocab_size)
        self.h = None

    def training_step(self, batch, batch_idx):
        inputs, targets, (window,) = batch  # one window per batch (CharDataModule's default): (1, B, T)
        inputs, targets = inputs[0], targets[0]
        if window == 0 or self.h is None:
            self.h = inputs.new_zeros((1, inputs.shape[0], self.rnn.hidden_size), dtype=torch.float32)
        out, h = self.rnn(F.one_hot(inputs, self.vocab_size).float(), self.h)
        self.h = h.detach()
        loss = F.cross_entropy(self.head(out).reshape(-1, self.vocab_size), targets.reshape(-1))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adagrad(self.parameters(), lr=self.learning_rate)
