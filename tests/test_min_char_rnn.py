"""With one stream, charrnn's training is min-char-rnn: same losses, same parameters, step for step.

The reference below is Karpathy's min-char-rnn.py transcribed into a function (only the data source and the
initial parameters are passed in), in float64.
"""

import lightning as L
import numpy as np
import pytest
import torch

from charrnn import rnn
from charrnn.callbacks import AtomicCheckpointIO
from charrnn.data import CharDataModule
from charrnn.module import CharRNN
from charrnn.optim import Adagrad

STEPS, T, H = 50, 25, 16


def min_char_rnn(data_ids, vocab_size, params, steps, seq_length=T, learning_rate=1e-1):
    """min-char-rnn's training loop; returns per-step losses (summed over the window), smooth losses, params."""
    Wxh, Whh, Why, bh, by = (params[k].copy() for k in rnn.PARAM_NAMES)
    hidden_size = Whh.shape[0]

    def lossFun(inputs, targets, hprev):
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        for t in range(len(inputs)):
            xs[t] = np.zeros((vocab_size, 1))
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

    n, p = 0, 0
    mWxh, mWhh, mWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    mbh, mby = np.zeros_like(bh), np.zeros_like(by)
    smooth_loss = -np.log(1.0 / vocab_size) * seq_length
    losses, smooth = [], []
    while n < steps:
        if p + seq_length + 1 >= len(data_ids) or n == 0:
            hprev = np.zeros((hidden_size, 1))
            p = 0
        inputs = data_ids[p : p + seq_length]
        targets = data_ids[p + 1 : p + seq_length + 1]
        loss, dWxh, dWhh, dWhy, dbh, dby, hprev = lossFun(inputs, targets, hprev)
        smooth_loss = smooth_loss * 0.999 + loss * 0.001
        losses.append(loss)
        smooth.append(smooth_loss)
        for param, dparam, mem in zip(
            [Wxh, Whh, Why, bh, by], [dWxh, dWhh, dWhy, dbh, dby], [mWxh, mWhh, mWhy, mbh, mby]
        ):
            mem += dparam * dparam
            param += -learning_rate * dparam / np.sqrt(mem + 1e-8)
        p += seq_length
        n += 1
    return losses, smooth, dict(zip(rnn.PARAM_NAMES, [Wxh, Whh, Why, bh, by]))


def make_text(n=4000):
    rng = np.random.default_rng(0)
    words = ["the ", "king ", "and ", "queen ", "of ", "rome ", "said ", "thou ", "art\n", "é ", "λόγος "]
    return "".join(rng.choice(words, size=n // 4))


@pytest.fixture
def initial_params():
    g = torch.Generator().manual_seed(0)
    return lambda V: {k: v.double() for k, v in rnn.init_params(V, H, generator=g).items()}


def test_bare_math_equals_min_char_rnn(initial_params):
    text = make_text()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    params0 = initial_params(len(chars))
    losses, _, expected = min_char_rnn(ids, len(chars), {k: v.numpy() for k, v in params0.items()}, STEPS)

    params = {k: torch.nn.Parameter(v.clone()) for k, v in params0.items()}
    opt = Adagrad(params.values(), lr=0.1)
    data = torch.from_numpy(ids)
    h = torch.zeros(1, H, dtype=torch.float64)
    for n in range(STEPS):
        x, y = data[n * T : (n + 1) * T].view(1, T), data[n * T + 1 : (n + 1) * T + 1].view(1, T)
        loss, grads, h = rnn.loss_and_grads({k: p.data for k, p in params.items()}, x, y, h)
        assert loss.item() == pytest.approx(losses[n], rel=1e-12)
        for k, p in params.items():
            p.grad = grads[k].clamp(-5, 5)
        opt.step()
    for k in rnn.PARAM_NAMES:
        np.testing.assert_allclose(params[k].detach().numpy(), expected[k], rtol=1e-10, atol=1e-13)


def test_lightning_training_equals_min_char_rnn(tmp_path, initial_params):
    """The real path (CharDataModule + CharRNN + Trainer, B = 1) in float64 ends where min-char-rnn ends."""
    text = make_text()
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    data = CharDataModule(str(path), seq_length=T, batch_size=1, val_fraction=0.1)
    model = CharRNN(vocab_size=data.vocab_size, hidden_size=H, vocab=data.chars)
    params0 = initial_params(data.vocab_size)
    with torch.no_grad():
        for k, v in params0.items():
            getattr(model, k).copy_(v)
    trainer = L.Trainer(
        max_steps=STEPS,
        precision="64-true",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)

    ids = np.array([data.vocab.index[c] for c in text])
    _, smooth, expected = min_char_rnn(ids, data.vocab_size, {k: v.numpy() for k, v in params0.items()}, STEPS)
    assert trainer.global_step == STEPS
    for k in rnn.PARAM_NAMES:
        np.testing.assert_allclose(getattr(model, k).detach().numpy(), expected[k], rtol=1e-10, atol=1e-13)
    assert model.smooth_loss.item() == pytest.approx(smooth[-1] / T, rel=1e-12)


def test_adagrad_rule_is_min_char_rnns_not_torchs():
    """eps sits inside the square root, as in min-char-rnn; torch.optim.Adagrad would move tiny gradients by lr."""
    g = torch.tensor([1e-6, 0.5, -3.0], dtype=torch.float64)
    ours, theirs = (torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(2))
    ours.grad, theirs.grad = g.clone(), g.clone()
    Adagrad([ours], lr=0.1).step()
    torch.optim.Adagrad([theirs], lr=0.1).step()
    expected = -0.1 * g / torch.sqrt(g * g + 1e-8)
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-15, atol=0)
    assert abs(ours[0].item()) < 0.002 and abs(theirs[0].item()) > 0.09
