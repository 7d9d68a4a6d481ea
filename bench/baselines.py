"""What charrnn is measured against: Karpathy's NumPy min-char-rnn, and the model a PyTorch user would write
(``nn.RNN`` + ``nn.Linear`` + autograd + ``torch.optim.Adagrad`` in a LightningModule with automatic optimization).
"""

import os

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from charrnn import rnn
from charrnn.module import CharRNN


class MinCharRNN:
    """min-char-rnn.py transcribed: one-hot inputs, dict-per-step forward, BPTT, clip [-5, 5], its Adagrad, and a
    200-character sample plus the loss line every 100 iterations (written to /dev/null instead of the console).

    Also the reference of tests/test_min_char_rnn.py, which starts it from given ``params`` (a dict of arrays keyed
    like ``charrnn.rnn.PARAM_NAMES``) and checks that charrnn with one stream trains exactly like it.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 100, learning_rate: float = 1e-1, seed: int = 0, params=None):
        rng = np.random.default_rng(seed)
        V, H = vocab_size, hidden_size
        if params is None:
            self.Wxh = rng.standard_normal((H, V)) * 0.01
            self.Whh = rng.standard_normal((H, H)) * 0.01
            self.Why = rng.standard_normal((V, H)) * 0.01
            self.bh = np.zeros((H, 1))
            self.by = np.zeros((V, 1))
        else:
            self.Wxh, self.Whh, self.Why, self.bh, self.by = (np.array(params[k]) for k in rnn.PARAM_NAMES)
            H = self.Whh.shape[0]
        self.vocab_size, self.hidden_size, self.learning_rate = V, H, learning_rate
        self.rng = rng
        self.out = open(os.devnull, "w")

    @property
    def params(self):
        return [self.Wxh, self.Whh, self.Why, self.bh, self.by]

    def loss_fun(self, inputs, targets, hprev):
        Wxh, Whh, Why, bh, by = self.params
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        for t in range(len(inputs)):
            xs[t] = np.zeros((self.vocab_size, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
            ys[t] = np.dot(Why, hs[t]) + by
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby = np.zeros_like(bh), np.zeros_like(by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(Why.T, dy) + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(Whh.T, dhraw)
        for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
            np.clip(dparam, -5, 5, out=dparam)
        return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]

    def sample(self, h, seed_ix, n):
        Wxh, Whh, Why, bh, by = self.params
        x = np.zeros((self.vocab_size, 1))
        x[seed_ix] = 1
        ixes = []
        for t in range(n):
            h = np.tanh(np.dot(Wxh, x) + np.dot(Whh, h) + bh)
            y = np.dot(Why, h) + by
            p = np.exp(y) / np.sum(np.exp(y))
            ix = self.rng.choice(range(self.vocab_size), p=p.ravel())
            x = np.zeros((self.vocab_size, 1))
            x[ix] = 1
            ixes.append(ix)
        return ixes

    def train(self, data, seq_length: int = 25):
        """min-char-rnn's main loop over the id array ``data``; after each update yields the iteration count, the
        window's loss (summed over its characters) and the smoothed loss."""
        mems = [np.zeros_like(p) for p in self.params]
        smooth_loss = -np.log(1.0 / self.vocab_size) * seq_length
        n, p = 0, 0
        while True:
            if p + seq_length + 1 >= len(data) or n == 0:
                hprev = np.zeros((self.hidden_size, 1))
                p = 0
            inputs = data[p : p + seq_length].tolist()
            targets = data[p + 1 : p + seq_length + 1].tolist()
            if n % 100 == 0:
                print(self.sample(hprev, inputs[0], 200), file=self.out)
            loss, *grads, hprev = self.loss_fun(inputs, targets, hprev)
            smooth_loss = smooth_loss * 0.999 + loss * 0.001
            if n % 100 == 0:
                print(f"iter {n}, loss: {smooth_loss:f}", file=self.out)
            for param, dparam, mem in zip(self.params, grads, mems):
                mem += dparam * dparam
                param += -self.learning_rate * dparam / np.sqrt(mem + 1e-8)
            p += seq_length
            n += 1
            yield n, loss, smooth_loss


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
