"""Every bad input to train.py: one line ``error: ...`` on stderr, exit code 2, no traceback, and nothing on disk
added, changed or lost. Also the awkward inputs that must work: a BOM, CRLF line ends, thousands of characters."""

import io
import random

import numpy as np
import pytest
import torch

from charrnn import text as text_io
from tests.train_helpers import (
    Malicious,
    assert_one_line_error,
    corpus,
    newest,
    snapshot,
    start_train_py,
    tiny_args,
    train,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished 10-step run under ``root`` plus every kind of bad file next to its text."""
    d = tmp_path_factory.mktemp("inputs")
    text = corpus()
    (d / "input.txt").write_text(text)
    root = d / "runs"
    assert train(tiny_args(d / "input.txt", root, steps=10)) == 0
    ckpt_path = d / "runs/lightning_logs/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)

    (d / "empty.txt").write_bytes(b"")
    (d / "short.txt").write_text(text[:12])
    (d / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 10)
    (d / "utf16.txt").write_text(text, encoding="utf-16")
    (d / "other.txt").write_text(text.upper())
    shuffled = list(text)
    random.Random(0).shuffle(shuffled)
    (d / "same-chars.txt").write_text("".join(shuffled))  # same vocabulary and length, another text
    (d / "texts" / "sub").mkdir(parents=True)
    (d / "texts" / "a.txt").write_text(text)
    (d / "texts" / "sub" / "b.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    (d / "a-file").write_text("not a directory")
    (d / "no-checkpoints").mkdir()
    (d / "junk.ckpt").write_text("not a checkpoint\n")
    (d / "truncated.ckpt").write_bytes(ckpt_path.read_bytes()[: ckpt_path.stat().st_size // 2])
    torch.save({"weights": torch.zeros(3)}, d / "foreign.ckpt")
    torch.save({k: ckpt[k] for k in ("state_dict", "charrnn", "global_step")}, d / "weights-only.ckpt")
    torch.save({**ckpt, "payload": Malicious(d / "marker")}, d / "evil.ckpt")
    (d / "loop.txt").symlink_to(d / "loop.txt")
    (d / "dangling.txt").symlink_to(d / "gone.txt")
    (d / "best-only/checkpoints").mkdir(parents=True)
    (d / "best-only/checkpoints/best.ckpt").write_bytes(ckpt_path.read_bytes())
    return d, root


CASES = {
    # data file
    "missing file": (["--data.path", "{d}/missing.txt"], "does not exist"),
    "directory without files": (["--data.path", "{d}/no-checkpoints"], "holds no files"),
    "a symbolic link loop": (["--data.path", "{d}/loop.txt"], "loop.txt is a symbolic link that loops"),
    "a dangling symbolic link": (["--data.path", "{d}/dangling.txt"], "is a symbolic link to", "which does not exist"),
    "a fraction holding no character": (["--data.val_fraction", 1e-9], "--data.val_fraction 1e-09 of the 800",
                                        "holds 0, and validation needs 2; use --data.val_fraction 0.0025 or more"),
    "empty file": (["--data.path", "{d}/empty.txt"], "is empty"),
    "shorter than one window per stream": (["--data.path", "{d}/short.txt", "--data.val_fraction", 0], "too few for 2"),
    "not UTF-8 (latin-1)": (["--data.path", "{d}/latin1.txt"], "not UTF-8 text (byte 0xe9 at offset 3)"),
    "not UTF-8 (UTF-16)": (["--data.path", "{d}/utf16.txt"], "not UTF-8 text", "iconv -f utf-16 -t utf-8"),
    "a directory's file not UTF-8": (["--data.path", "{d}/texts"], "texts/sub/b.txt is not UTF-8"),
    "a directory without a match": (["--data.path", "{d}/texts", "--data.glob", "*.md"],
                                    "holds no files matching --data.glob *.md"),
    "--data.glob without a directory": (["--data.glob", "*.txt"], "--data.glob *.txt selects files in a directory"),
    "an empty list of paths": (["--data.path", "[]"], "--data.path is an empty list"),
    "a list with a missing file": (["--data.path", "[{d}/input.txt, {d}/missing.txt]"], "missing.txt does not exist"),
    # fine-tuning
    "init_from does not exist": (["--init_from", "{d}/missing.ckpt"], "missing.ckpt does not exist"),
    "init_from a text file": (["--init_from", "{d}/junk.ckpt"], "not a checkpoint file, or it is truncated"),
    "init_from malicious": (["--init_from", "{d}/evil.ckpt"], "refused to load"),
    "init_from a directory without one": (["--init_from", "{d}/no-checkpoints"], "no last.ckpt found"),
    "init_from, another hidden size": (["--init_from", "{d}/runs", "--model.hidden_size", 32],
                                       "--model.hidden_size 32 contradicts --init_from"),
    # sizes, lengths, rates
    "batch_size 0": (["--data.batch_size", 0], "--data.batch_size must be a positive integer"),
    "batch_size -2": (["--data.batch_size", -2], "--data.batch_size must be a positive integer"),
    "batch larger than the text allows": (["--data.batch_size", 1000], "too few for 1000 streams"),
    "seq_length 0": (["--data.seq_length", 0], "--data.seq_length must be a positive integer"),
    "hidden_size -4": (["--model.hidden_size", -4], "--model.hidden_size must be a positive integer"),
    "cell unknown": (["--model.cell", "transformer"], "--model.cell must be one of rnn, lstm, gru, got transformer"),
    "num_layers 0": (["--model.num_layers", 0], "--model.num_layers must be a positive integer, got 0"),
    "dropout 1": (["--model.dropout", 1], "--model.dropout must be a number from 0 up to (not including) 1, got 1"),
    "dropout -0.1": (["--model.dropout", -0.1], "--model.dropout must be a number from 0 up to"),
    "learning_rate 0": (["--model.learning_rate", 0], "--model.learning_rate must be a finite positive number"),
    "learning_rate -1": (["--model.learning_rate", -1], "--model.learning_rate must be a finite positive number"),
    "learning_rate nan": (["--model.learning_rate", "nan"], "model.learning_rate"),
    "clip 0": (["--model.clip", 0], "--model.clip must be a finite positive number"),
    "val_fraction 1": (["--data.val_fraction", 1], "--data.val_fraction must be a number from 0 up to (not"),
    "val_fraction -0.5": (["--data.val_fraction", -0.5], "--data.val_fraction must be a number from 0 up to"),
    "max_steps 0": (["--trainer.max_steps", 0], "--trainer.max_steps must be a positive integer, or -1"),
    "max_steps -7": (["--trainer.max_steps", -7], "--trainer.max_steps must be a positive integer, or -1"),
    "max_epochs 0": (["--trainer.max_epochs", 0], "--trainer.max_epochs must be a positive integer, or -1"),
    "log_every_n_steps 0": (
        ["--trainer.log_every_n_steps", 0],
        "--trainer.log_every_n_steps must be a positive whole number of steps",
    ),
    "val_check_interval 0": (
        ["--trainer.val_check_interval", 0],
        "--trainer.val_check_interval must be a positive whole number of steps",
    ),
    "val_check_interval 0.5": (["--trainer.val_check_interval", 0.5], "whole number of steps"),
    "checkpoint_every 0": (["--checkpoint_every", 0], "--checkpoint_every must be a positive integer"),
    "sample_length 0": (["--model.sample_length", 0], "--model.sample_length must be a positive integer"),
    "print_every -1": (["--model.print_every", -1], "--model.print_every must be 0 (off) or a positive integer"),
    **{f"precision {p}": (["--trainer.precision", p], f"error: --trainer.precision {p} is not supported")
       for p in ("16-mixed", "bf16-true", "bf16-mixed")},
    # flags that do not parse
    "unknown flag": (["--bogus", 3], "unrecognized arguments: --bogus 3"),
    "text for an integer": (["--data.batch_size", "abc"], "--data.batch_size must be an integer, got abc"),
    "fraction for an integer": (["--model.hidden_size", 1.5], "--model.hidden_size must be an integer, got 1.5"),
    "missing config file": (["--config", "{d}/missing.yaml"], "does not exist"),
    "quoted integer": (["--model.num_layers", '"2"'], '--model.num_layers must be an integer, got "2"'),
    "negative rate in exponent form": (["--optimizer", "torch.optim.Adam", "--optimizer.lr", "-1e-3"],
                                       "--optimizer.lr must be a finite positive number, got -0.001"),
    "negative infinity": (["--model.clip", "-inf"], "--model.clip must be a finite positive number, got -inf"),
    "optimizer argument of the wrong type": (
        ["--optimizer", "torch.optim.SGD", "--optimizer.nesterov", 12],
        "--optimizer.nesterov must be true or false, got 12",
    ),
    "optimizer argument not a number": (
        ["--optimizer", "torch.optim.Adam", "--optimizer.lr", "x"],
        "--optimizer.lr cannot be x; python train.py --optimizer.help torch.optim.Adam",
    ),
    "schedule argument of the wrong type": (
        ["--optimizer", "torch.optim.Adam", "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", 2.5],
        "--lr_scheduler.T_max must be an integer, got 2.5",
    ),
    "schedule missing an argument": (["--optimizer", "torch.optim.Adam", "--lr_scheduler", "StepLR"],
                                     "--lr_scheduler torch.optim.lr_scheduler.StepLR needs --lr_scheduler.step_size"),
    "schedule without its function": (["--optimizer", "torch.optim.Adam", "--lr_scheduler", "LambdaLR"],
                                      "LambdaLR needs --lr_scheduler.lr_lambda"),
    # resuming something that does not fit
    "resume: other vocabulary": (["--data.path", "{d}/other.txt", "--ckpt_path", "last"], "different vocabulary"),
    "resume: same characters, other text": (["--data.path", "{d}/same-chars.txt", "--ckpt_path", "last"], "other text"),
    "resume: other hidden size": (["--model.hidden_size", 32, "--ckpt_path", "last"], "with --model.hidden_size 16"),
    "resume: other cell": (["--model.cell", "lstm", "--ckpt_path", "last"], "has cell rnn (not lstm)",
                           "with --model.cell rnn"),
    "resume: other depth and dropout": (["--model.num_layers", 2, "--model.dropout", 0.1, "--ckpt_path", "last"],
                                        "resume with --model.num_layers 1 --model.dropout 0.0"),
    "resume: other batch size": (["--data.batch_size", 3, "--ckpt_path", "last"], "different data layout"),
    # checkpoint paths
    "ckpt_path does not exist": (["--ckpt_path", "{d}/missing.ckpt"], "does not exist"),
    "ckpt_path a symbolic link loop": (["--ckpt_path", "{d}/loop.txt"], "is a symbolic link that loops"),
    "ckpt_path a run holding only best.ckpt": (["--ckpt_path", "{d}/best-only"],
                                               "no last.ckpt found under", "best-only/checkpoints/best.ckpt is there"),
    "ckpt_path truncated": (["--ckpt_path", "{d}/truncated.ckpt"], "not a checkpoint file, or it is truncated"),
    "ckpt_path a text file": (["--ckpt_path", "{d}/junk.ckpt"], "not a checkpoint file, or it is truncated"),
    "ckpt_path a foreign torch file": (["--ckpt_path", "{d}/foreign.ckpt"], "not a charrnn checkpoint"),
    "ckpt_path weights only": (["--ckpt_path", "{d}/weights-only.ckpt"], "no training state"),
    "ckpt_path a directory without one": (["--ckpt_path", "{d}/no-checkpoints"], "no last.ckpt found"),
    "ckpt_path malicious": (["--ckpt_path", "{d}/evil.ckpt"], "refused to load", "posix.system"),
    # output
    "output directory under a file": (["--trainer.default_root_dir", "{d}/a-file/runs"], "cannot write to output"),
}  # fmt: skip


def _args(world, flags):
    d, root = world
    return tiny_args(d / "input.txt", root, *(str(f).format(d=d) for f in flags), steps=20)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_on_disk_changes(world, capsys, case):
    flags, *fragments = CASES[case]
    before = snapshot(world[0])
    assert train(_args(world, flags)) == 2
    line = assert_one_line_error(capsys.readouterr().err, *fragments)
    for internals in ("NestedArg(", "Namespace(", "expected one argument", "<class"):
        assert internals not in line
    assert snapshot(world[0]) == before
    assert not (world[0] / "marker").exists()


def test_the_malicious_checkpoint_really_runs_code_when_trusted(world, tmp_path):
    """Proves the case above can fail: loading evil.ckpt the unsafe way does create the marker."""
    d, _ = world
    marker = tmp_path / "marker"
    torch.save({"payload": Malicious(marker)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_train_py_prints_exactly_one_line(world):
    """What a user sees: real processes (so warnings and log lines would show), started side by side, failing
    at each stage: parsing, reading the text, checking the resume once the Trainer exists."""
    d, root = world
    picked = ["unknown flag", "missing file", "resume: other hidden size", "ckpt_path malicious"]
    jobs = {case: start_train_py(_args(world, CASES[case][0])) for case in picked}
    before = snapshot(d)
    for case, job in jobs.items():
        _, err = job.communicate(timeout=300)
        assert job.returncode == 2, (case, err)
        assert_one_line_error(err, *CASES[case][1:])
    assert snapshot(d) == before
    assert not (d / "marker").exists()


# Awkward inputs that must work.


def test_bom_is_dropped_and_crlf_or_cr_becomes_lf(tmp_path):
    text = corpus(300)
    (tmp_path / "lf.txt").write_text(text, newline="\n")
    (tmp_path / "bom-crlf.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    (tmp_path / "cr.txt").write_bytes(text.replace("\n", "\r").encode())
    vocab, ids = text_io.read_corpus(str(tmp_path / "lf.txt"))
    for name in ("bom-crlf.txt", "cr.txt"):
        other_vocab, other_ids = text_io.read_corpus(str(tmp_path / name))
        assert other_vocab.chars == vocab.chars and np.array_equal(other_ids, ids)
    assert "\r" not in vocab.chars and "\ufeff" not in vocab.chars


def test_decoding_across_chunk_boundaries(tmp_path, monkeypatch):
    """CRLF pairs and multi-byte characters split between two read chunks decode as if read whole."""
    text = "\ufeffa\r\nb\u00e9\r\n\u4e2d\u6587\r\r\n\U0001f600x\r" * 7
    (tmp_path / "t.txt").write_bytes(text.encode())
    expected = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    for size in range(1, 12):
        monkeypatch.setattr(text_io, "_CHUNK_BYTES", size)
        chunks = text_io._decoded_chunks(io.BytesIO(text.encode()), "t.txt")
        assert "".join(chunks) == expected, size


def test_thousands_of_cjk_characters_train(tmp_path):
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    text = "".join(chars) + "".join(rng.choice(chars[:300]) for _ in range(3000))
    (tmp_path / "cjk.txt").write_text(text)
    vocab, ids = text_io.read_corpus(str(tmp_path / "cjk.txt"))
    assert len(vocab) == 3000 and ids.dtype == np.int16
    assert train(tiny_args(tmp_path / "cjk.txt", tmp_path / "runs", "--model.sample_length", 20, steps=12)) == 0
    ckpt = newest(tmp_path / "runs")
    assert len(ckpt["charrnn"]["vocab"]) == 3000 and ckpt["state_dict"]["Wxh"].shape == (16, 3000)
    assert all(torch.isfinite(p).all() for p in ckpt["state_dict"].values())
