"""The Python API (charrnn.load): its samples are sample.py's code path, its score is validation's loss, stop
strings, sessions, errors in the scripts' words, and an installed package that imports from anywhere."""

import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import charrnn
import sample
from charrnn import api, rundir
from charrnn.sampling import encode_prime, generate
from tests.train_helpers import ROOT, corpus, tiny_args, train

TEXT = corpus(2000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs with a validation split: an LSTM in float32 (its native sampling loop) and a 2-layer GRU in float64."""
    d = tmp_path_factory.mktemp("api")
    (d / "input.txt").write_text(TEXT, encoding="utf-8")
    lstm = ("--model.cell", "lstm", "--model.hidden_size", 24)
    gru = ("--model.cell", "gru", "--model.num_layers", 2, "--trainer.precision", "64-true")
    for name, flags in (("lstm", lstm), ("gru", gru)):
        assert train(tiny_args(d / "input.txt", d / name, "--data.val_fraction", 0.2, *flags, steps=40)) == 0
    return d


def best(runs, name) -> str:
    return os.path.join(os.path.dirname(rundir.newest_last_checkpoint(str(runs / name))), rundir.BEST)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_score_of_the_held_out_tail_is_the_logged_val_loss(runs, name):
    """64 streams laid out as validation's, in the run's precision: the val/loss best.ckpt was saved for."""
    m = charrnn.load(best(runs, name))
    assert m.val_loss is not None and m.step > 0 and m.path.endswith(rundir.BEST)
    assert m.params["Why"].dtype == (torch.float64 if name == "gru" else torch.float32)
    tail = TEXT[len(TEXT) - int(len(TEXT) * 0.2) :]
    scored = m.score(tail, streams=64)
    assert scored.chars == len(tail) - 1 and scored.unknown == 0
    assert scored.nats == pytest.approx(m.val_loss, abs=1e-5)
    assert abs(m.score(tail).nats - m.val_loss) > 1e-4  # the layout matters: one stream is another number
    assert scored.bits == pytest.approx(scored.nats / math.log(2)) and scored.perplexity == pytest.approx(
        math.exp(scored.nats)
    )


def test_sample_is_sample_pys_code_path(runs, capsysbinary):
    """The text of the sampler sample.py used before the API, for any settings; sample.py prints the prime first."""
    m = charrnn.load(runs / "lstm")
    for prime, temperature, top_k, seed in (("", 1.0, None, 3), ("The ", 0.7, None, 9), ("a", 1.3, 5, 1),
                                            ("in", 0.0, None, None)):  # fmt: skip
        ids = generate("lstm", m.params, 300, prime_ids=encode_prime(m.vocab, prime), temperature=temperature,
                       top_k=top_k, seed=seed)  # fmt: skip
        assert m.sample(300, prime, temperature, top_k, seed) == "".join(m.vocab[i] for i in ids)
    assert "".join(m.stream(300, "The ", 0.7, seed=9)) == m.sample(300, "The ", 0.7, seed=9)
    assert [len(c) for c in m.stream(150, seed=2)] == [api.PIECE, api.PIECE, 150 - 2 * api.PIECE]
    code = sample.main([str(runs / "lstm"), "--length", "300", "--prime", "The ", "--temperature", "0.7",
                        "--seed", "9"])  # fmt: skip
    assert code == 0 and capsysbinary.readouterr().out.decode() == "The " + m.sample(300, "The ", 0.7, seed=9)


def first_stop_end(text: str, start: int, stops) -> int | None:
    """Brute force: the smallest end > start of an occurrence of any stop string in text."""
    ends = [i + len(s) for s in stops for i in range(len(text)) if text.startswith(s, i) and i + len(s) > start]
    return min(ends) if ends else None


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_sample_ends_right_after_the_first_stop_string(runs, data):
    m = charrnn.load(runs / "gru")
    prime = data.draw(st.sampled_from(["", "e", "The t", "in the "]))
    seed = data.draw(st.integers(0, 50))
    full = m.sample(200, prime, seed=seed)
    text = prime + full
    # Stop strings cut from the text (some starting in the prime), plus one that may occur nowhere.
    cuts = data.draw(st.lists(st.tuples(st.integers(0, len(text) - 1), st.integers(1, 4)), min_size=1, max_size=3))
    stops = [text[i : i + n] for i, n in cuts] + [data.draw(st.text(alphabet="".join(m.vocab), min_size=1, max_size=3))]
    end = first_stop_end(text, len(prime), stops)
    expected = full if end is None else text[len(prime) : end]
    assert m.sample(200, prime, seed=seed, stop=stops) == expected
    assert "".join(m.stream(200, prime, seed=seed, stop=stops)) == expected


def test_session_continues_and_restores(runs):
    m = charrnn.load(runs / "lstm")
    s = m.session(seed=5)
    s.feed("The ")
    first = s.sample(100, temperature=0.8)
    assert first + s.sample(200, temperature=0.8) == m.sample(300, "The ", 0.8, seed=5)

    snapshot = s.state()
    after = s.sample(120, temperature=0.9, top_k=4)
    s.feed("x")
    s.restore(snapshot)
    assert s.sample(120, temperature=0.9, top_k=4) == after

    # A stop leaves the state after the returned text, as if that text had been fed.
    stopped = m.session(seed=7)
    stopped.feed("in")
    text = stopped.sample(300, stop=[" "])
    assert text.endswith(" ") and " " not in text[:-1]
    fed = m.session()
    fed.feed("in" + text)
    np.testing.assert_allclose(stopped.state().hidden, fed.state().hidden, rtol=0, atol=1e-12)


def test_score_reads_unknown_characters_as_a_zero_input(runs):
    """A tanh RNN by hand, with one-hot inputs and a zero vector for a character outside the vocabulary."""
    d = runs / "rnn"
    assert train(tiny_args(runs / "input.txt", d, "--trainer.precision", "64-true", steps=10)) == 0
    m = charrnn.load(d)
    text = "The \u20ac quick\u00e9 fox"
    p = m.params
    h, log_probs = torch.zeros(p["Whh"].shape[0], 1, dtype=torch.float64), []
    for t, c in enumerate(text):
        x = torch.zeros(len(m.vocab), 1, dtype=torch.float64)
        if c in m.vocab:
            x[m.vocab.index(c)] = 1
        if t > 0:
            log_probs.append(float(torch.log_softmax((p["Why"] @ h + p["by"]).view(-1), 0)[m.vocab.index(c)])
                             if c in m.vocab else math.nan)  # fmt: skip
        h = torch.tanh(p["Wxh"] @ x + p["Whh"] @ h + p["bh"])
    scored = m.score(text)
    np.testing.assert_allclose(scored.log_probs, log_probs, rtol=0, atol=1e-12)
    assert (scored.chars, scored.unknown, scored.unknown_chars) == (len(text) - 3, 2, {"\u20ac", "\u00e9"})
    assert scored.nats == pytest.approx(-np.nanmean(log_probs), abs=1e-12)


def test_bad_arguments_are_value_errors_in_sample_pys_words(runs, capsysbinary):
    m = charrnn.load(runs / "lstm")
    cases = [
        (lambda: m.sample(-1), ["--length", "-1"]),
        (lambda: m.sample(5, temperature=float("nan")), ["--temperature", "nan"]),
        (lambda: m.sample(5, top_k=0), ["--top-k", "0"]),
        (lambda: m.sample(5, seed=-2), ["--seed", "-2"]),
        (lambda: m.sample(5, prime="\u20ac"), ["--prime", "\u20ac"]),
        (lambda: m.sample(5, stop=[""]), ["--stop", ""]),
        (lambda: m.beam("", 5, 0), ["--beam", "0"]),
    ]
    for call, flags in cases:
        with pytest.raises(ValueError) as caught:
            call()
        assert sample.main([str(runs / "lstm"), "--length", "5", *flags]) == 2
        assert capsysbinary.readouterr().err.decode() == f"error: {caught.value}\n"
    with pytest.raises(ValueError, match="does not exist"):
        charrnn.load(runs / "missing.ckpt")
    with pytest.raises(ValueError, match="fewer than 2 characters"):
        m.score("T")
    with pytest.raises(ValueError, match="--streams must be 1 or more"):
        m.score("The", streams=0)


def test_pyproject_lists_requirements_txt_without_the_test_tools():
    wanted = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]  # fmt: skip
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["export"]
    assert listed == [r for r in wanted if re.split(r"[<>=\[]", r)[0] not in ("pytest", "hypothesis", "ruff")]


@pytest.mark.slow
def test_pip_install_imports_charrnn_from_anywhere(runs, tmp_path):
    """``pip install .`` (of a copy: the build leaves nothing in the clone) into a throwaway venv that reaches this
    one's packages through a .pth file: charrnn imports from another directory with native.c beside its cells,
    and samples without Lightning."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "charrnn", src / "charrnn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "docs/api.md"):
        (src / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "deps.pth"), "w") as f:  # torch, numpy, pip and setuptools of this venv
        f.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    install = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    probe = ("import os, sys, charrnn; m = charrnn.load(sys.argv[1]); print(charrnn.__file__); print(repr(m.sample(20, "
             "seed=1))); print(os.path.exists(os.path.join(os.path.dirname(charrnn.__file__), 'cells', 'native.c'))); "
             "print(sorted(x for x in sys.modules if x.split('.')[0] == 'lightning'))")  # fmt: skip
    out = subprocess.run([py, "-c", probe, str(runs / "lstm")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    path, text, native_c, lightning = out.stdout.splitlines()
    assert path.startswith(site) and native_c == "True" and lightning == "[]"
    assert text == repr(charrnn.load(runs / "lstm").sample(20, seed=1))
