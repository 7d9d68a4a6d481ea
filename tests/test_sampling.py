"""The sampler's statistics and state, checked against the torch forward pass in ``rnn.py``."""

import math

import numpy as np
import pytest
import torch

from charrnn import rnn, sampling

V, H = 40, 16


@pytest.fixture(scope="module")
def params():
    """A small network whose next-character distribution is neither flat nor nearly one-hot."""
    g = torch.Generator().manual_seed(0)
    p = rnn.init_params(V, H, generator=g, dtype=torch.float64)
    p["Wxh"] = torch.randn(H, V, generator=g, dtype=torch.float64)
    p["Whh"] = torch.randn(H, H, generator=g, dtype=torch.float64) * 0.4
    p["Why"] = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    p["by"] = torch.randn(V, 1, generator=g, dtype=torch.float64) * 0.5
    return p


@pytest.fixture(scope="module")
def state():
    return torch.tanh(torch.randn(H, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5)


def draws(sampler, n: int, seed: int = 1234) -> np.ndarray:
    """``n`` independent draws of the next character from the sampler's current state."""
    return np.array([sampler.choose(u) for u in np.random.default_rng(seed).random(n)])


def expected_probs(params, h, temperature, top_k):
    logits = rnn.logits_of(params, h.view(1, H)).view(-1) / temperature
    if top_k is not None:
        logits[logits < torch.topk(logits, top_k).values[-1]] = -math.inf
    return torch.softmax(logits, 0).numpy()


def chi2_critical(df: int, alpha_z: float = 4.75) -> float:
    """Upper chi-square quantile by Wilson-Hilferty; z = 4.75 is a one-sided tail of about 1e-6."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + alpha_z * math.sqrt(c)) ** 3


def chi2_statistic(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the classes with non-zero probability, those expecting < 5 pooled into one."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big & (probs > 0)].sum())
    exp = np.append(expected[big], expected[~big & (probs > 0)].sum())
    keep = exp > 0
    return float((((obs - exp) ** 2)[keep] / exp[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, None), (1.8, None), (1.0, 5), (0.7, 12)])
def test_draws_follow_the_softmax(params, state, temperature, top_k):
    n = 40_000
    sampler = sampling.Sampler(params, h=state, temperature=temperature, top_k=top_k)
    counts = np.bincount(draws(sampler, n), minlength=V)
    probs = expected_probs(params, state, temperature, top_k)

    assert counts[probs == 0].sum() == 0, "drew a character outside the top k"
    stat, df = chi2_statistic(counts, probs)
    assert stat < chi2_critical(df), (stat, df)
    # The same counts are far from the distribution of a neighbouring temperature: the test can fail.
    wrong = expected_probs(params, state, temperature * 1.25, top_k)
    assert chi2_statistic(counts, wrong)[0] > 3 * chi2_critical(df)


def test_greedy_and_top1_pick_the_most_likely(params, state):
    best = int(rnn.logits_of(params, state.view(1, H)).argmax())
    for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"temperature": 3.0, "top_k": 1}):
        assert set(draws(sampling.Sampler(params, h=state, **kwargs), 200)) == {best}


def test_state_after_prime_equals_forward_pass(params):
    ids = torch.randint(0, V, (57,), generator=torch.Generator().manual_seed(2))
    sampler = sampling.Sampler(params)
    for x in ids.tolist():
        sampler.advance(x)
    hs = rnn.hidden_states(params, ids.view(1, -1), torch.zeros(1, H, dtype=torch.float64))
    np.testing.assert_allclose(sampler.state, hs[-1, 0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sampler.next_logits, rnn.logits_of(params, hs[-1]).view(-1).numpy(), rtol=0, atol=1e-12)


def test_generated_text_drives_the_state(params):
    """Each generated character is fed back: the final state is the forward pass over prime + output."""
    prime = [3, 1, 4, 1, 5]
    sampler = sampling.Sampler(params, seed=9)
    for x in prime:
        sampler.advance(x)
    out = list(sampler.generate(300))
    hs = rnn.hidden_states(params, torch.tensor([prime + out]), torch.zeros(1, H, dtype=torch.float64))
    np.testing.assert_allclose(sampler.state, hs[-1, 0].numpy(), rtol=0, atol=1e-12)
    assert out == list(sampling.generate(params, 300, prime_ids=prime, seed=9))


def test_seed_fixes_the_text_and_a_longer_run_extends_it(params, monkeypatch):
    long = list(sampling.generate(params, 9000, seed=42))
    assert long[:100] == list(sampling.generate(params, 100, seed=42))
    monkeypatch.setattr(sampling, "_BLOCK", 7)  # how the uniforms are blocked must not change the text
    assert long == list(sampling.generate(params, 9000, seed=42))
    assert long[:100] != list(sampling.generate(params, 100, seed=43))


def test_float32_params_and_starting_state_are_accepted(params, state):
    """Training hands over float32 parameters (possibly requiring grad) and a (1, H) state."""
    p32 = {k: torch.nn.Parameter(v.float()) for k, v in params.items()}
    plain = {k: v.float() for k, v in params.items()}
    a = list(sampling.generate(p32, 500, h=state.float().view(1, H), seed=3, top_k=7, temperature=0.8))
    b = list(sampling.generate(plain, 500, h=state.float(), seed=3, top_k=7, temperature=0.8))
    assert a == b and len(a) == 500


def test_torch_device_matvec_matches_numpy(params):
    """The path used for --device cuda, run on the CPU: same products, hence the same text."""
    host = sampling.Sampler(params, seed=11, temperature=0.9)
    device = sampling.Sampler(params, seed=11, temperature=0.9, device="cpu")
    assert list(host.generate(2000)) == list(device.generate(2000))
    np.testing.assert_allclose(host.state, device.state, rtol=0, atol=1e-12)


def test_huge_and_tiny_temperatures_stay_finite(params, state):
    """Logits are shifted by their maximum before scaling, so 1/T cannot overflow exp()."""
    best = int(rnn.logits_of(params, state.view(1, H)).argmax())
    assert set(draws(sampling.Sampler(params, h=state, temperature=1e-300), 100)) == {best}
    wide = draws(sampling.Sampler(params, h=state, temperature=1e300), 20_000)
    assert len(set(wide)) == V  # effectively uniform


@pytest.mark.parametrize("top_k", [None, 3])
def test_extreme_uniforms_land_on_possible_characters(params, state, top_k):
    """u = 0 and the largest u below 1 (where u * total may round up to total) still pick a drawable character."""
    probs = expected_probs(params, state, 1.0, top_k)
    sampler = sampling.Sampler(params, h=state, top_k=top_k)
    for u in (0.0, 1.0 - 2.0**-53):
        assert probs[sampler.choose(u)] > 0
    assert sampler.choose(1.0 - 2.0**-53) == np.flatnonzero(probs)[-1]
