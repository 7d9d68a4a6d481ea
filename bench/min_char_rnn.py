"""Karpathy's min-char-rnn.py (https://gist.github.com/karpathy/d4dee566867f8291f086), transcribed as a class."""

import os

import numpy as np

PARAM_NAMES = ("Wxh", "Whh", "Why", "bh", "by")  # min-char-rnn's order


class MinCharRNN:
    """min-char-rnn.py transcribed: one-hot inputs, dict-per-step forward, BPTT, clip [-5, 5], its Adagrad, and a
    200-character sample plus the loss line every 100 iterations (written to /dev/null instead of the console).

    Started from given ``params`` (a dict of arrays keyed by ``PARAM_NAMES``), it is the reference
    tests/test_min_char_rnn.py holds charrnn to; the benchmarks time it as the NumPy baseline.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 100, learning_rate: float = 1e-1, seed: int = 0,
                 params=None):  # fmt: skip
        rng = np.random.default_rng(seed)
        V, H = vocab_size, hidden_size
        if params is None:
            self.Wxh = rng.standard_normal((H, V)) * 0.01
            self.Whh = rng.standard_normal((H, H)) * 0.01
            self.Why = rng.standard_normal((V, H)) * 0.01
            self.bh = np.zeros((H, 1))
            self.by = np.zeros((V, 1))
        else:
            self.Wxh, self.Whh, self.Why, self.bh, self.by = (np.array(params[k]) for k in PARAM_NAMES)
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
