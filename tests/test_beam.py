"""Beam search (Model.beam, sample.py --beam): width 1 is greedy, a wider beam never ends below it, it finds the most
likely sequence where greedy provably does not, and its log-probability is the sum of the steps' log-softmax."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import charrnn
import sample
from charrnn import api, network
from charrnn.network import Architecture
from tests.train_helpers import tiny_args, train


def log_prob(m: api.Model, prime: str, text: str) -> float:
    """Independently of the API: training's forward pass over prime + text (float64, from the zero state), and the
    log-softmax of each step's logits at the next character; with no prime the zero state's logits are ``by``."""
    params = {name: p.double() for name, p in m.params.items()}
    ids = [m.vocab.index(c) for c in prime + text]
    with torch.no_grad():
        logits, _ = network.logits(m.arch, params, torch.tensor([ids]), m.arch.zero_state(1, torch.float64))
    rows = torch.cat([params["by"].view(1, -1), logits[0]])  # row t: the distribution of character t
    log_softmax = torch.log_softmax(rows, -1)
    return sum(float(log_softmax[t, ids[t]]) for t in range(len(prime), len(ids)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("beam")
    assert train(tiny_args(text, d / "run", "--model.cell", "lstm", "--model.num_layers", 2, steps=60)) == 0
    return d / "run"


def test_width_one_is_greedy_and_a_wider_beam_is_no_less_likely(trained, capsysbinary):
    m = charrnn.load(trained)
    for prime in ("", "The ", "in"):
        greedy = m.sample(150, prime, temperature=0)
        one = m.beam(prime, 150, 1)
        assert one.text == greedy and one.log_prob == pytest.approx(log_prob(m, prime, greedy), abs=1e-9)
        for width in (2, 5, 16):
            wide = m.beam(prime, 150, width)
            assert len(wide.text) == 150 and wide.log_prob >= one.log_prob - 1e-9
            assert wide.log_prob == pytest.approx(log_prob(m, prime, wide.text), abs=1e-9)
    assert sample.main([str(trained), "--length", "150", "--prime", "The ", "--beam", "1"]) == 0
    beam_out = capsysbinary.readouterr().out
    assert sample.main([str(trained), "--length", "150", "--prime", "The ", "--greedy"]) == 0
    assert beam_out == capsysbinary.readouterr().out == ("The " + m.sample(150, "The ", temperature=0)).encode()


@settings(max_examples=30, deadline=None)
@given(cell=st.sampled_from(["rnn", "lstm", "gru"]), layers=st.integers(1, 2), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 4.0]), width=st.integers(2, 6), length=st.integers(1, 12))  # fmt: skip
def test_on_random_models_a_wider_beam_never_ends_below_greedy(cell, layers, seed, scale, width, length):
    vocab = list("abcde")
    arch = Architecture(len(vocab), 6, cell, layers)
    params = {k: v * scale for k, v in arch.init_params(torch.Generator().manual_seed(seed), torch.float64).items()}
    m = api.Model("random", arch, params, vocab)
    one, wide = m.beam("ab", length, 1), m.beam("ab", length, width)
    assert one.text == m.sample(length, "ab", temperature=0)
    assert wide.log_prob >= one.log_prob - 1e-12
    assert wide.log_prob == pytest.approx(log_prob(m, "ab", wide.text), abs=1e-9)


def hand_built() -> api.Model:
    """A tanh RNN over {a, b} with weights set by hand: from the zero state a is a little more likely (0.525, from
    by), after a the state stays zero (a's input column is 0) and the same holds, but after b one unit saturates
    and makes a nearly certain (0.994). Greedy takes a, a, ...; "ba..." is more likely."""
    arch = Architecture(vocab_size=2, hidden_size=2, cell="rnn")
    params = {
        "Wxh": torch.tensor([[0.0, 3.0], [0.0, 0.0]], dtype=torch.float64),
        "Whh": torch.zeros(2, 2, dtype=torch.float64),
        "bh": torch.zeros(2, 1, dtype=torch.float64),
        "Why": torch.tensor([[5.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
        "by": torch.tensor([[0.1], [0.0]], dtype=torch.float64),
    }
    return api.Model("hand-built", arch, params, ["a", "b"])


@pytest.mark.parametrize("length,width", [(2, 2), (3, 2), (4, 8), (5, 16)])
def test_a_beam_finds_what_greedy_misses_on_a_hand_built_network(length, width):
    """Width 2 at lengths 2 and 3; at 4 and 5 the kept greedy hypothesis takes one of two places and "baba..."
    falls out, so a beam as wide as all the sequences of length - 1 (which keeps them all) is asked instead."""
    m = hand_built()
    every = {"".join(s): log_prob(m, "", "".join(s)) for s in itertools.product("ab", repeat=length)}
    most_likely = max(every.values())
    greedy = m.beam("", length, 1)
    assert greedy.text == "a" * length == m.sample(length, temperature=0)
    assert most_likely > every[greedy.text] + 0.1  # greedy is provably not the most likely sequence
    found = m.beam("", length, width)  # one of the most likely sequences ("aba" and "baa" tie at length 3)
    assert every[found.text] == pytest.approx(most_likely, abs=1e-12)
    assert found.log_prob == pytest.approx(most_likely, abs=1e-12)
    assert math.isclose(sum(math.exp(v) for v in every.values()), 1.0, abs_tol=1e-12)  # the enumeration is whole
