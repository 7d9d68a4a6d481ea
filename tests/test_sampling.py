"""The sampler's statistics and state for every cell, checked against the torch forward pass (``network.forward``)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import network, sampling, stack
from charrnn.cells import native

V, H = 40, 16
NETWORKS = [("rnn", 1), ("lstm", 2), ("gru", 2)]  # (cell, layers)


@pytest.fixture(scope="module", params=NETWORKS, ids=[f"{c}-{n}" for c, n in NETWORKS])
def arch(request):
    return network.Architecture(V, H, *request.param)


@pytest.fixture(scope="module")
def params(arch):
    return make_params(arch)


def make_params(arch):
    """A small network whose next-character distribution is neither flat nor nearly one-hot."""
    g = torch.Generator().manual_seed(0)
    p = arch.init_params(generator=g, dtype=torch.float64)
    p = {k: v + 0.4 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in p.items()}
    p["Wxh"] = torch.randn(p["Wxh"].shape, generator=g, dtype=torch.float64)
    p["Why"] = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    p["by"] = torch.randn(V, 1, generator=g, dtype=torch.float64) * 0.5
    return p


@pytest.fixture(scope="module")
def state(arch):
    return make_state(arch)


def make_state(arch):
    """A carried state (L * K, H) of one stream."""
    rows = arch.zero_state(1, torch.float64).shape[1]
    return torch.tanh(torch.randn(rows, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5)


def sampler_of(arch, params, **kwargs):
    return sampling.Sampler(arch.cell, params, **kwargs)


def logits_after(arch, params, state):
    """The logits of the top layer's h in ``state`` (L * K, H)."""
    return stack.logits_of(params, state[(arch.num_layers - 1) * arch.cell_math.NUM_STATES].view(1, H)).view(-1)


def forward(arch, params, ids):
    """The forward pass from a zero state: the logits after each character and the final state (L * K, H)."""
    logits, state = network.logits(arch, params, torch.tensor([ids]), arch.zero_state(1, torch.float64))
    return logits[0], state[0]


def draws(sampler, n: int, seed: int = 1234) -> np.ndarray:
    """``n`` independent draws of the next character from the sampler's current state."""
    return np.array([sampler.choose(u) for u in np.random.default_rng(seed).random(n)])


def expected_probs(arch, params, state, temperature, top_k):
    logits = logits_after(arch, params, state) / temperature
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
def test_draws_follow_the_softmax(arch, params, state, temperature, top_k):
    n = 40_000
    sampler = sampler_of(arch, params, h=state, temperature=temperature, top_k=top_k)
    counts = np.bincount(draws(sampler, n), minlength=V)
    probs = expected_probs(arch, params, state, temperature, top_k)

    assert counts[probs == 0].sum() == 0, "drew a character outside the top k"
    stat, df = chi2_statistic(counts, probs)
    assert stat < chi2_critical(df), (stat, df)
    # The same counts are far from the distribution of a neighbouring temperature: the test can fail.
    wrong = expected_probs(arch, params, state, temperature * 1.25, top_k)
    assert chi2_statistic(counts, wrong)[0] > 3 * chi2_critical(df)


def test_greedy_and_top1_pick_the_most_likely(arch, params, state):
    best = int(logits_after(arch, params, state).argmax())
    for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"temperature": 3.0, "top_k": 1}):
        assert set(draws(sampler_of(arch, params, h=state, **kwargs), 200)) == {best}


def test_state_after_prime_equals_forward_pass(arch, params):
    ids = torch.randint(0, V, (57,), generator=torch.Generator().manual_seed(2)).tolist()
    sampler = sampler_of(arch, params)
    for x in ids:
        sampler.advance(x)
    logits, state = forward(arch, params, ids)
    np.testing.assert_allclose(sampler.state, state.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sampler.next_logits, logits[-1].numpy(), rtol=0, atol=1e-12)


def test_generated_text_drives_the_state(arch, params):
    """Each generated character is fed back: the final state is the forward pass over prime + output."""
    prime = [3, 1, 4, 1, 5]
    sampler = sampler_of(arch, params, seed=9)
    for x in prime:
        sampler.advance(x)
    out = list(sampler.generate(300))
    np.testing.assert_allclose(sampler.state, forward(arch, params, prime + out)[1].numpy(), rtol=0, atol=1e-12)
    assert out == list(sampling.generate(arch.cell, params, 300, prime_ids=prime, seed=9))


def test_seed_fixes_the_text_and_a_longer_run_extends_it(arch, params, monkeypatch):
    long = list(sampling.generate(arch.cell, params, 9000, seed=42))
    assert long[:100] == list(sampling.generate(arch.cell, params, 100, seed=42))
    monkeypatch.setattr(sampling, "_BLOCK", 7)  # how the uniforms are blocked must not change the text
    assert long == list(sampling.generate(arch.cell, params, 9000, seed=42))
    assert long[:100] != list(sampling.generate(arch.cell, params, 100, seed=43))


def test_float32_params_and_starting_state_are_accepted(arch, params, state):
    """Training hands over float32 parameters (possibly requiring grad) and a (1, L * K, H) state."""
    p32 = {k: torch.nn.Parameter(v.float()) for k, v in params.items()}
    plain = {k: v.float() for k, v in params.items()}
    a = list(sampling.generate(arch.cell, p32, 500, h=state.float().unsqueeze(0), seed=3, top_k=7, temperature=0.8))
    b = list(sampling.generate(arch.cell, plain, 500, h=state.float(), seed=3, top_k=7, temperature=0.8))
    assert a == b and len(a) == 500


def test_torch_device_matvec_matches_numpy(arch, params):
    """The path used for --device cuda, run on the CPU: same products, hence the same text."""
    host = sampler_of(arch, params, seed=11, temperature=0.9)
    device = sampler_of(arch, params, seed=11, temperature=0.9, device="cpu")
    assert list(host.generate(2000)) == list(device.generate(2000))
    np.testing.assert_allclose(host.state, device.state, rtol=0, atol=1e-12)


def test_huge_and_tiny_temperatures_stay_finite(arch, params, state):
    """Logits are shifted by their maximum before scaling, so 1/T cannot overflow exp()."""
    best = int(logits_after(arch, params, state).argmax())
    assert set(draws(sampler_of(arch, params, h=state, temperature=1e-300), 100)) == {best}
    wide = draws(sampler_of(arch, params, h=state, temperature=1e300), 20_000)
    assert len(set(wide)) == V  # effectively uniform


@pytest.mark.parametrize("top_k", [None, 3])
def test_extreme_uniforms_land_on_possible_characters(arch, params, state, top_k):
    """u = 0 and the largest u below 1 (where u * total may round up to total) still pick a drawable character."""
    probs = expected_probs(arch, params, state, 1.0, top_k)
    sampler = sampler_of(arch, params, h=state, top_k=top_k)
    for u in (0.0, 1.0 - 2.0**-53):
        assert probs[sampler.choose(u)] > 0
    assert sampler.choose(1.0 - 2.0**-53) == np.flatnonzero(probs)[-1]


LSTM = network.Architecture(V, H, "lstm", 2)  # the one cell that generates in native.c
half_kernel = pytest.mark.skipif(
    not native.half_available(), reason="native.c's float16 product needs an x86-64 CPU with AVX2, FMA and F16C"
)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_c_loop_generates_what_the_numpy_loop_does(temperature, request):
    """The LSTM generates in native.c (choose, then every layer's step and product): the same text as the NumPy
    loop, whose draws are checked against the softmax above, and the same state."""
    arch, params = LSTM, make_params(LSTM)
    c_loop = sampler_of(arch, params, seed=21, temperature=temperature)
    assert c_loop.native_loop is not None, "native.c did not build"
    text = list(c_loop.generate(3000))
    request.getfixturevalue("without_native")
    numpy_loop = sampler_of(arch, params, seed=21, temperature=temperature)
    assert numpy_loop.native_loop is None
    assert text == list(numpy_loop.generate(3000))
    np.testing.assert_allclose(c_loop.state, numpy_loop.state, rtol=0, atol=1e-12)


def test_c_loop_draws_as_choose_at_extreme_uniforms_and_temperatures():
    arch, params, state = LSTM, make_params(LSTM), make_state(LSTM)
    uniforms = [0.0, 1.0 - 2.0**-53, *np.random.default_rng(5).random(50)]
    for temperature in (1.0, 0.3, 1e-300, 1e300):
        for u in uniforms:
            c_loop = sampler_of(arch, params, h=state, temperature=temperature)
            expected = c_loop.choose(u)  # before the loop advances the state
            assert c_loop.native_loop(np.array([u])) == [expected], (temperature, u)


def test_large_float32_trained_matrices_are_read_as_float32(request):
    """A 2 x 256 LSTM's first matrix (2048 x 257, 4.2 MB in float64) holds float32 weights: the sampler reads it as
    float32 and sums in float64, giving the text and state of float64 products."""
    arch = network.Architecture(V, 256, "lstm", 2)
    params = arch.init_params(generator=torch.Generator().manual_seed(3))  # float32, as trained
    fast = sampler_of(arch, params, seed=8)
    assert [w.dtype for w in fast.network.weights] == [np.float32, np.float64]
    text = list(fast.generate(1500))
    request.getfixturevalue("without_native")
    slow = sampler_of(arch, params, seed=8)
    assert [w.dtype for w in slow.network.weights] == [np.float64, np.float64]
    assert text == list(slow.generate(1500))
    np.testing.assert_allclose(fast.state, slow.state, rtol=0, atol=1e-12)
    inexact = {**params, "Whh": params["Whh"].double() + 1e-12}  # float64 values float32 cannot hold stay float64
    assert sampler_of(arch, inexact).network.weights[0].dtype == np.float64


@pytest.mark.parametrize("half", [False, pytest.param(True, marks=half_kernel)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_c_loop_draws_follow_the_softmax(temperature, half):
    """An LSTM whose weights are all zero keeps h = 0, so every character is a fresh draw from softmax(by / T) (by
    as float16 holds it with ``half``): the C loop's 40,000 characters pass the chi-square test against it and fail
    it against a neighbouring temperature."""
    params = {k: torch.zeros_like(v) for k, v in make_params(LSTM).items()}
    params["by"] = torch.randn(V, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 1.5
    sampler = sampler_of(LSTM, params, seed=13, temperature=temperature, half=half)
    assert sampler.native_loop is not None, "native.c did not build"
    assert {w.dtype for w in sampler.network.weights} == {np.dtype(np.float16 if half else np.float64)}
    counts = np.bincount(list(sampler.generate(40_000)), minlength=V)
    by = params["by"].view(-1).half().double() if half else params["by"].view(-1)
    softmax = lambda t: torch.softmax(by / t, 0).numpy()  # noqa: E731
    stat, df = chi2_statistic(counts, softmax(temperature))
    assert stat < chi2_critical(df), (stat, df)
    assert chi2_statistic(counts, softmax(temperature * 1.25))[0] > 3 * chi2_critical(df)


@half_kernel
@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # the same examples every run
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), scale=st.sampled_from([1e-6, 1.0, 300.0]),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_half_product_sums_float16_weights_in_float32(rows, cols, scale, seed):
    """``matvec_f16`` at every shape (its eight-row, eight-column blocks and their tails): the float16 weights times
    x rounded to float32, summed in float32, so within float32 rounding of the exact product of those values."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((rows, cols)) * scale).astype(np.float16)
    x, out, scratch = rng.standard_normal(cols), np.full(rows, np.nan), np.empty(cols, np.float32)
    native.kernel("matvec_f16")(W.ctypes.data, x.ctypes.data, out.ctypes.data, rows, cols, scratch.ctypes.data)
    x32 = x.astype(np.float32).astype(np.float64)
    exact = W.astype(np.float64) @ x32
    bound = (cols + 1) * 2.0**-24 * (np.abs(W.astype(np.float64)) @ np.abs(x32)) + 1e-300
    assert np.all(np.abs(out - exact) <= bound), np.max(np.abs(out - exact) / bound)


@half_kernel
def test_half_weights_move_the_logits_a_little(arch):
    """``half``: every matrix in float16. After 300 characters the state and logits are those of the exact sampler
    to float16's precision (not equal: the float16 products are in use), and a matrix float16 cannot hold stays."""
    params, ids = make_params(arch), list(np.random.default_rng(2).integers(0, V, 300))
    exact, half = sampler_of(arch, params), sampler_of(arch, params, half=True)
    assert {w.dtype for w in half.network.weights} == {np.dtype(np.float16)}
    for x in ids:
        exact.advance(x), half.advance(x)
    state_gap = np.abs(half.state - exact.state).max()
    logit_gap = np.abs(half.next_logits - exact.next_logits).max() / np.abs(exact.next_logits).max()
    assert 0 < state_gap < 5e-3 and 0 < logit_gap < 2e-3, (state_gap, logit_gap)
    huge = {**params, "Why": params["Why"] * 1e6}
    assert sampler_of(arch, huge, half=True).network.weights[-1].dtype == np.float64


@half_kernel
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_half_c_loop_generates_what_the_numpy_loop_does(temperature):
    """The LSTM's C loop with float16 matrices gives the NumPy loop's text and state: both call matvec_f16. (Their
    steps' exp and tanh differ by an ulp, which the float32 rounding of h inside the product can grow to ~1e-8.)"""
    c_loop = sampler_of(LSTM, make_params(LSTM), seed=21, temperature=temperature, half=True)
    numpy_loop = sampler_of(LSTM, make_params(LSTM), seed=21, temperature=temperature, half=True)
    numpy_loop.native_loop = None
    assert c_loop.native_loop is not None
    assert list(c_loop.generate(3000)) == list(numpy_loop.generate(3000))
    np.testing.assert_allclose(c_loop.state, numpy_loop.state, rtol=0, atol=1e-6)


def test_path_names_the_loop_that_runs(request, monkeypatch):
    """``Sampler.path`` (``sample.py --verbose``) says native.c's generator exactly when it runs: its kernel is called
    for the text; with CHARRNN_NATIVE=0, --top-k, or a cell without one, the NumPy loop runs and the line says why."""
    params = make_params(LSTM)
    c_loop = sampler_of(LSTM, params, seed=1)
    assert c_loop.path == "C generator (lstm_generate), float64 weights, float64 sums"
    calls, real = [], native.kernel("lstm_generate")
    monkeypatch.setattr(c_loop, "native_loop", None)  # rebuilt below around a counting kernel
    monkeypatch.setattr(native, "kernel", lambda name: lambda *a: calls.append(name) or real(*a))
    c_loop.native_loop = c_loop._c_loop()
    list(c_loop.generate(600))
    assert calls == ["lstm_generate"] * 3  # 256-character chunks
    monkeypatch.undo()
    top_k = sampling.Sampler(LSTM.cell, params, top_k=3)
    assert top_k.native_loop is None and top_k.path == "NumPy (--top-k runs in NumPy), float64 weights, float64 sums"
    gru = network.Architecture(V, H, "gru")
    assert sampler_of(gru, make_params(gru)).path.startswith("NumPy (no C generator for this cell), ")
    request.getfixturevalue("without_native")
    numpy_loop = sampler_of(LSTM, params, seed=1)
    assert numpy_loop.native_loop is None and numpy_loop.path.startswith("NumPy (CHARRNN_NATIVE=0), float64 weights")
