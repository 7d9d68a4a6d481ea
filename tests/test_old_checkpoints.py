"""A checkpoint written by an earlier charrnn (tests/fixtures, format 1) still loads, resumes exactly and samples."""

import shutil

import torch

import sample
from charrnn import checkpoint
from charrnn.network import Architecture
from tests.fixtures.make_format1_checkpoint import CKPT, FLAGS, STEPS, TEXT
from tests.train_helpers import assert_one_line_error, assert_same_training_state, newest, train


def _args(root, steps, *extra):
    # The checkpoint's run started Adagrad's sums at 0, before configs/default.yaml started them at 0.03.
    return ["--data.path", TEXT, *FLAGS, "--model.initial_accumulator_value", 0, "--trainer.max_steps", steps,
            "--trainer.default_root_dir", root, *extra]  # fmt: skip


def test_format1_checkpoint_loads():
    net = checkpoint.load_network(CKPT)
    with open(TEXT, encoding="utf-8") as f:
        assert net.vocab == sorted(set(f.read()))
    assert net.arch == Architecture(vocab_size=len(net.vocab), hidden_size=8, cell="rnn", num_layers=1, dropout=0.0)
    assert net.params["Whh"].shape == (8, 8) and net.params["Why"].shape == (len(net.vocab), 8)


def test_format1_checkpoint_resumes_exactly(tmp_path):
    """Resumed from the old checkpoint (a copy: resuming never writes into it), the run ends bitwise where a run
    resumed from the same state written in today's format ends, both computed here: the state format 1 saved
    (weights, Adagrad memory, hidden state, position in the text) is read back whole. (Not compared with a run from
    scratch: the old checkpoint's first steps were summed on another CPU.)"""
    old = shutil.copy(CKPT, tmp_path / "old.ckpt")
    state = torch.load(CKPT, weights_only=True)
    meta = checkpoint.read_metadata(state, CKPT)
    checkpoint.write_metadata(state, meta.arch, meta.vocab, meta.hidden_state)
    torch.save(state, tmp_path / "today.ckpt")
    checkpoint.write_metadata(state, meta.arch, meta.vocab, torch.zeros_like(meta.hidden_state))
    torch.save(state, tmp_path / "no_state.ckpt")
    # Other seeds: only what the checkpoints hold can make the runs meet.
    assert train(_args(tmp_path / "resumed", 2 * STEPS, "--ckpt_path", old, "--seed_everything", 2)) == 0
    today = tmp_path / "today.ckpt"
    assert train(_args(tmp_path / "today", 2 * STEPS, "--ckpt_path", today, "--seed_everything", 3)) == 0
    assert newest(tmp_path / "resumed")["global_step"] == 2 * STEPS
    assert_same_training_state(newest(tmp_path / "resumed"), newest(tmp_path / "today"))
    # The comparison sees the carried state: without it, the same 20 steps end elsewhere.
    assert train(_args(tmp_path / "no_state", 2 * STEPS, "--ckpt_path", tmp_path / "no_state.ckpt")) == 0
    ends = newest(tmp_path / "resumed")["state_dict"], newest(tmp_path / "no_state")["state_dict"]
    assert not torch.equal(*(end["Whh"] for end in ends))


def test_format1_checkpoint_samples(capsysbinary):
    assert sample.main([CKPT, "--length", "80", "--seed", "3"]) == 0
    out = capsysbinary.readouterr().out.decode("utf-8")
    with open(TEXT, encoding="utf-8") as f:
        assert len(out) == 80 and set(out) <= set(f.read())


def test_an_unknown_format_is_refused_in_one_line(tmp_path, capsys):
    ckpt = torch.load(CKPT, weights_only=True)
    ckpt["charrnn"]["format"] = 99
    torch.save(ckpt, tmp_path / "future.ckpt")
    assert sample.main([str(tmp_path / "future.ckpt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "checkpoint format 99")
    assert train(_args(tmp_path / "run", 2 * STEPS, "--ckpt_path", tmp_path / "future.ckpt")) == 2
    assert_one_line_error(capsys.readouterr().err, "checkpoint format 99")
