"""Fine-tuning (``--init_from``): the checkpoint's network and characters, new characters that start unlikely, and a
run that resumes and samples like any other."""

import contextlib
import io
import math
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import checkpoint, cli, finetune, network, rundir
from tests.train_helpers import (
    assert_one_line_error,
    assert_same_training_state,
    corpus,
    newest,
    run_script,
    snapshot,
    tiny_args,
    train,
)

# A network per cell, trained to predictions far from uniform (a high rate, a text it can learn a little of).
ADAM = ("--optimizer", "torch.optim.Adam", "--optimizer.lr", 0.03)
NETWORKS = {
    "rnn": ("--model.learning_rate", 0.3),
    "lstm": ("--model.cell", "lstm", "--model.num_layers", 2, *ADAM),
    "gru": ("--model.cell", "gru", "--model.dropout", 0.1, *ADAM),
}
NEW_TEXT = "0 == 1 [x] {y} <z> @w # 2 + 3 = 5\n" * 30  # digits and brackets: characters corpus() lacks
STEPS = 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cell -> (the pretrained run directory, the fine-tuning text's path)."""
    d = tmp_path_factory.mktemp("finetune")
    (d / "old.txt").write_text(corpus())
    (d / "new.txt").write_text(corpus(3000)[800:] + NEW_TEXT)
    runs = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for name, flags in NETWORKS.items():
            assert train(tiny_args(d / "old.txt", d / name, *flags, steps=STEPS)) == 0
            runs[name] = d / name
    return runs, d / "new.txt"


def fine_tune_model(run, text):
    """The model and data of ``train.py --init_from run --data.path text``, built and initialised, not trained."""
    with contextlib.redirect_stdout(io.StringIO()):
        built, _ = cli._build(tiny_args(text, run / "unused", "--init_from", run))
    return built.model, built.datamodule


@pytest.mark.parametrize("cell", NETWORKS)
def test_the_network_and_old_characters_are_the_checkpoints(trained, cell):
    runs, text = trained
    old = checkpoint.load_network(str(runs[cell]))
    model, data = fine_tune_model(runs[cell], text)
    V = len(old.vocab)
    new_chars = sorted(set(text.read_text()) - set(old.vocab))
    assert new_chars and data.chars == old.vocab + new_chars
    assert model.arch == network.Architecture(**{**old.arch.as_dict(), "vocab_size": V + len(new_chars)})
    assert model.vocab == data.chars
    assert data.vocab.decode(torch.cat([data.train_ids, data.val_ids]).tolist()) == text.read_text()
    params = model.params
    for name, value in old.params.items():
        if name in ("Wxh", "Why", "by"):
            assert torch.equal(params[name][tuple(slice(0, n) for n in value.shape)], value), name
        else:
            assert torch.equal(params[name], value), name
    assert torch.all(params["Why"][V:] == 0)
    assert torch.all(params["by"][V:] == finetune.new_output_bias(old.params["Why"], old.params["by"], len(new_chars)))
    assert params["Wxh"][:, V:].abs().sum() > 0  # drawn, not zero: the new characters have distinct inputs


@pytest.fixture(scope="module")
def pairs(trained):
    """cell -> (checkpoint network, fine-tune model) for the property below, built once."""
    runs, text = trained
    return {cell: (checkpoint.load_network(str(runs[cell])), fine_tune_model(runs[cell], text)[0]) for cell in NETWORKS}


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(cell=st.sampled_from(list(NETWORKS)), data=st.data())
def test_old_characters_keep_their_probabilities(pairs, cell, data):
    """After any prime of old characters, before the first step: every old character's probability within 0.01 of
    the checkpoint's, each network run through network.forward on its own weights."""
    old, model = pairs[cell]
    prime = data.draw(st.text(alphabet=old.vocab, min_size=1, max_size=60), label="prime")
    ids = torch.tensor([[old.vocab.index(c) for c in prime]])
    probabilities = []
    for arch, params in ((old.arch, old.params), (model.arch, {k: v.detach() for k, v in model.params.items()})):
        logits = network.forward(arch, params, ids, arch.zero_state(1, torch.float64))[0]
        probabilities.append(torch.softmax(logits.double(), -1)[0])  # (T, V)
    before, after = probabilities
    V = len(old.vocab)
    assert (after[:, :V] - before).abs().max() < 0.01
    assert after[:, V:].sum(-1).max() < finetune.NEW_MASS


def test_new_output_bias_is_a_floor_over_every_state():
    """Against the states themselves: the new characters' mass stays under NEW_MASS at the corners of the box of
    states that minimise the old characters' log-sum-exp (found by projected gradient descent), and the floor is
    not loose by more than a little."""
    g = torch.Generator().manual_seed(0)
    Why = torch.randn(30, 12, generator=g, dtype=torch.float64)
    by = torch.randn(30, 1, generator=g, dtype=torch.float64)
    bias = finetune.new_output_bias(Why, by, 5)
    h = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    descent = torch.optim.Adam([h], lr=0.05)
    for _ in range(2000):
        loss = torch.logsumexp(by.view(-1) + Why @ h, 0)
        descent.zero_grad()
        loss.backward()
        descent.step()
        with torch.no_grad():
            h.clamp_(-1, 1)
    lowest = float(torch.logsumexp(by.view(-1) + Why @ h.detach(), 0))
    mass_at_worst = 5 * math.exp(bias) / (math.exp(lowest) + 5 * math.exp(bias))
    assert mass_at_worst < finetune.NEW_MASS
    assert mass_at_worst > finetune.NEW_MASS / 2  # the bias is not needlessly low


def test_a_fine_tuned_run_resumes_exactly_and_samples(trained, tmp_path):
    runs, text = trained
    flags = ("--init_from", runs["lstm"], "--model.learning_rate", 0.05)
    assert train(tiny_args(text, tmp_path / "straight", *flags, steps=24)) == 0
    assert train(tiny_args(text, tmp_path / "resumed", *flags, steps=13)) == 0
    first = newest(tmp_path / "resumed")
    assert first["global_step"] == 13  # counted from 0, not from the checkpoint's STEPS
    assert train(tiny_args(text, tmp_path / "resumed", *flags, "--ckpt_path", "last", steps=24)) == 0
    assert_same_training_state(newest(tmp_path / "straight"), newest(tmp_path / "resumed"))

    code, out, err = run_script("sample.py", [tmp_path / "resumed", "--prime", "[x] = 0", "--length", 40])
    assert code == 0 and err == "" and out.startswith("[x] = 0") and len(out) == len("[x] = 0") + 40


def test_a_new_run_beside_the_checkpoint_leaves_it_untouched(trained, tmp_path):
    runs, text = trained
    root = tmp_path / "root"
    shutil.copytree(runs["rnn"], root)
    before = snapshot(root)
    assert train(tiny_args(text, root, "--init_from", root, steps=4)) == 0  # a new run: version_1 of the same root
    after = snapshot(root)
    assert {name: after[name] for name in before} == before
    assert rundir.newest_last_checkpoint(str(root)) == str(root / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert newest(root)["global_step"] == 4


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (("--model.hidden_size", 32), ("--model.hidden_size 32 contradicts --init_from", "hidden size 16")),
        (("--model.cell", "gru"), ("--model.cell gru contradicts", "which has cell lstm")),
        (("--model.num_layers", 1), ("--model.num_layers 1 contradicts", "num layers 2")),
        (("--model.dropout", 0.5), ("--model.dropout 0.5 contradicts",)),
    ],
)
def test_a_flag_that_contradicts_the_checkpoint_is_refused(trained, tmp_path, capsys, flags, fragments):
    runs, text = trained
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, "--init_from", runs["lstm"], *flags, steps=4)) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not tmp_path.joinpath("lightning_logs").exists()


def test_a_config_file_counts_as_given_and_its_agreement_is_fine(trained, tmp_path, capsys):
    runs, text = trained
    (tmp_path / "agrees.yaml").write_text(f"init_from: {runs['lstm']}\nmodel:\n  cell: lstm\n  num_layers: 2\n")
    (tmp_path / "contradicts.yaml").write_text("model:\n  hidden_size: 64\n")
    capsys.readouterr()
    args = ("--init_from", runs["lstm"], "--config", tmp_path / "contradicts.yaml")
    assert train(tiny_args(text, tmp_path / "a", *args, steps=2)) == 2
    assert_one_line_error(capsys.readouterr().err, "--model.hidden_size 64 contradicts")
    assert train(tiny_args(text, tmp_path / "b", "--config", tmp_path / "agrees.yaml", steps=2)) == 0  # the YAML twin
    assert newest(tmp_path / "b")["charrnn"]["architecture"]["cell"] == "lstm"
