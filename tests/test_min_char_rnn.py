"""With one stream, charrnn's training is min-char-rnn: same losses, same parameters, step for step.

The reference is Karpathy's min-char-rnn.py as transcribed in bench/min_char_rnn.py (the NumPy baseline the
benchmarks time), started from the same float64 parameters as charrnn.
"""

import numpy as np
import pytest
import torch

from bench.min_char_rnn import PARAM_NAMES, MinCharRNN
from charrnn import network
from charrnn.callbacks import AtomicCheckpointIO
from charrnn.data import CharDataModule
from charrnn.module import CharRNN
from charrnn.optim import Adagrad
from tests.train_helpers import quiet_trainer

STEPS, T, H = 50, 25, 16


def min_char_rnn(data_ids, vocab_size, params, steps):
    """min-char-rnn run from ``params`` for ``steps`` updates; returns the per-step losses (summed over the window),
    the smoothed losses and the final parameters."""
    model = MinCharRNN(vocab_size, params=params)
    losses, smooth = [], []
    for n, loss, smooth_loss in model.train(data_ids, seq_length=T):
        losses.append(loss)
        smooth.append(smooth_loss)
        if n == steps:
            return losses, smooth, dict(zip(PARAM_NAMES, model.params))


def make_text(n=4000):
    rng = np.random.default_rng(0)
    words = ["the ", "king ", "and ", "queen ", "of ", "rome ", "said ", "thou ", "art\n", "é ", "λόγος "]
    return "".join(rng.choice(words, size=n // 4))


@pytest.fixture
def initial_params():
    g = torch.Generator().manual_seed(0)
    return lambda V: {k: v.double() for k, v in network.Architecture(V, H).init_params(generator=g).items()}


def test_bare_math_equals_min_char_rnn(initial_params):
    text = make_text()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    params0 = initial_params(len(chars))
    losses, _, expected = min_char_rnn(ids, len(chars), {k: v.numpy() for k, v in params0.items()}, STEPS)

    arch = network.Architecture(len(chars), H)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in params0.items()}
    opt = Adagrad(params.values(), lr=0.1)
    data = torch.from_numpy(ids)
    h = arch.zero_state(1, torch.float64)
    for n in range(STEPS):
        x, y = data[n * T : (n + 1) * T].view(1, T), data[n * T + 1 : (n + 1) * T + 1].view(1, T)
        loss, h = network.train_step(arch, params, opt, x, y, h, clip=5.0)
        assert loss.item() == pytest.approx(losses[n], rel=1e-12)
    for k in PARAM_NAMES:
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
    trainer = quiet_trainer(
        max_steps=STEPS,
        precision="64-true",
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)

    ids = np.array([data.vocab.index[c] for c in text])
    _, smooth, expected = min_char_rnn(ids, data.vocab_size, {k: v.numpy() for k, v in params0.items()}, STEPS)
    assert trainer.global_step == STEPS
    for k in PARAM_NAMES:
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


def adagrad_steps(grads, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The parameter (starting at 0) and Adagrad's ``mem`` after one step per gradient in ``grads``."""
    p = torch.nn.Parameter(torch.zeros_like(grads[0]))
    opt = Adagrad([p], lr=0.1, **settings)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt.state[p]["mem"]


def test_an_initial_accumulator_makes_the_first_steps_proportional_to_the_gradient():
    g1 = torch.tensor([1e-6, 1e-3, 0.5, -5.0], dtype=torch.float64)
    g2 = torch.tensor([2e-3, -1e-4, 0.25, 5.0], dtype=torch.float64)
    A = 0.1
    p, mem = adagrad_steps([g1], initial_accumulator_value=A)
    torch.testing.assert_close(p, -0.1 * g1 / torch.sqrt(A + g1 * g1 + 1e-8), rtol=1e-15, atol=0)
    # A gradient of 1e-3 moves its weight by a full lr from 0, by lr * g / sqrt(A) from A.
    assert adagrad_steps([g1])[0][1].item() == pytest.approx(-0.1, rel=1e-2)
    assert p[1].item() == pytest.approx(-0.1 * 1e-3 / A**0.5, rel=1e-4)
    p, mem = adagrad_steps([g1, g2], initial_accumulator_value=A)
    torch.testing.assert_close(mem, A + g1 * g1 + g2 * g2, rtol=1e-15, atol=0)
    by_hand = -0.1 * g1 / torch.sqrt(A + g1 * g1 + 1e-8) - 0.1 * g2 / torch.sqrt(A + g1 * g1 + g2 * g2 + 1e-8)
    torch.testing.assert_close(p, by_hand, rtol=1e-14, atol=0)


def test_an_initial_accumulator_of_0_is_min_char_rnns_update_bitwise():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, 5, generator=g) * 10.0 ** torch.randint(-6, 1, (7, 5), generator=g) for _ in range(5)]
    default, explicit = adagrad_steps(grads), adagrad_steps(grads, initial_accumulator_value=0.0)
    assert torch.equal(default[0], explicit[0]) and torch.equal(default[1], explicit[1])
    # The sums of squares start at exactly 0, as min-char-rnn's np.zeros_like: after one step they are g * g.
    assert torch.equal(adagrad_steps(grads[:1])[1], grads[0] * grads[0])
