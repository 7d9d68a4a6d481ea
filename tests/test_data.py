"""Vocabulary, encoding, train/validation split and the stream layout."""

import io
import os

import numpy as np
import pytest
import torch

from charrnn.data import CharDataModule, TrainBatches, ValBatches
from charrnn.text import read_corpus, text_files, train_streams, val_streams

UNICODE = "Où est la bibliothèque? 图书馆在哪里？ 📚🦉 naïve café\n" * 40


def write(tmp_path, text, name="input.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def test_vocab_is_sorted_code_points_and_deterministic(tmp_path):
    vocab, ids = read_corpus(write(tmp_path, UNICODE))
    assert vocab.chars == sorted(set(UNICODE))
    assert "📚" in vocab.chars and "图" in vocab.chars  # code points, not UTF-8 bytes
    assert vocab.decode(ids) == UNICODE
    again, ids2 = read_corpus(write(tmp_path, UNICODE, "copy.txt"))
    assert again.chars == vocab.chars and np.array_equal(ids, ids2)


def test_encode_matches_python_and_uses_compact_ids(tmp_path, monkeypatch):
    import charrnn.text as data

    monkeypatch.setattr(data, "_CHUNK_BYTES", 7)  # multi-byte characters split across read chunks
    vocab, ids = read_corpus(write(tmp_path, UNICODE))
    assert ids.dtype == np.uint8
    assert ids.tolist() == [vocab.index[c] for c in UNICODE]


def test_crlf_and_bom_are_normalised(tmp_path, monkeypatch):
    import charrnn.text as data

    monkeypatch.setattr(data, "_CHUNK_BYTES", 4)  # a CR at the end of one chunk, its LF in the next
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfab\r\ncd\r\n\r\nxyz\rw")
    vocab, ids = read_corpus(str(path))
    assert vocab.decode(ids) == "ab\ncd\n\nxyz\nw"


def test_streams_continue_across_batches(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))
    dm = CharDataModule(write(tmp_path, text), seq_length=7, batch_size=4, val_fraction=0.1)
    train_text = text[: len(text) - int(len(text) * 0.1)]
    # One window per batch here (train.py groups several when windows are small): (1, B, T) and [window].
    batches = [(x[0], y[0], w) for x, y, (w,) in dm.train_dataloader()]
    assert [w for _, _, w in batches] == list(range(len(batches)))
    for (x, y, _), (x2, _, _) in zip(batches, batches[1:]):
        assert x.shape == (4, 7) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
        # Row b of the next batch continues row b: the last target is the next batch's first input.
        assert torch.equal(y[:, -1], x2[:, 0])
    # Rows are contiguous slices of the training text; targets run one past into the next row.
    rows = torch.cat([x for x, _, _ in batches], dim=1)
    stream_length = rows.shape[1]
    for b in range(4):
        assert dm.vocab.decode(rows[b].tolist()) == train_text[b * stream_length : (b + 1) * stream_length]
    # Only the tail that does not fill a window in every stream is dropped: fewer than B * T characters.
    used = 4 * stream_length + 1
    assert 0 <= len(train_text) - used < 4 * 7


def test_split_is_contiguous_tail_and_loses_nothing(tmp_path):
    text = UNICODE
    dm = CharDataModule(write(tmp_path, text), seq_length=5, batch_size=2, val_fraction=0.25)
    n_val = int(len(text) * 0.25)
    assert len(dm.val_ids) == n_val
    assert dm.vocab.decode(dm.train_ids.tolist()) + dm.vocab.decode(dm.val_ids.tolist()) == text
    # Validation predicts every character of its text after the first, each exactly once.
    chunks = list(dm.val_dataloader())
    y = torch.cat([c[1] for c in chunks], dim=1)
    mask = torch.cat([c[2] for c in chunks], dim=1)
    assert int(mask.sum()) == n_val - 1
    assert dm.vocab.decode(y.reshape(-1)[mask.reshape(-1)].tolist()) == text[len(text) - n_val + 1 :]


def test_val_streams_pad_and_mask():
    ids = torch.arange(11)
    x, y, mask = val_streams(ids, streams=3)
    assert x.shape == (3, 4) and int(mask.sum()) == 10
    assert torch.equal(x.reshape(-1)[mask.reshape(-1)], ids[:-1])
    assert torch.equal(y.reshape(-1)[mask.reshape(-1)], ids[1:])
    chunks = list(ValBatches(x, y, mask, chunk=3))
    assert [c[3] for c in chunks] == [0, 1] and chunks[1][0].shape == (3, 1)


def test_train_batches_resume_position_follows_the_step():
    x, y = train_streams(torch.arange(101), streams=2, seq_length=5)
    step = {"value": 0}
    batches = TrainBatches(x, y, 5, step=lambda: step["value"])
    assert len(batches) == 10
    step["value"] = 23  # two epochs and three windows done
    assert [w for _, _, (w,) in batches] == list(range(3, 10))


def test_too_short_for_the_streams_is_a_usage_error(tmp_path):
    from charrnn.errors import UsageError

    with pytest.raises(UsageError, match="too few"):
        CharDataModule(write(tmp_path, "abcdefghij" * 3), seq_length=25, batch_size=2, val_fraction=0.1)


def test_a_directory_is_its_files_sorted_recursively_and_joined(tmp_path):
    (tmp_path / "texts" / "b" / ".cache").mkdir(parents=True)
    files = {"texts/b/z.txt": "zz\n", "texts/a.txt": "aa", "texts/b/c.md": "cc", "texts/.hidden.txt": "hh",
             "texts/b/.cache/x.txt": "xx", "texts/empty.txt": "", "texts/d.txt": "dd"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    directory = str(tmp_path / "texts")
    found = text_files(directory)
    assert [os.path.relpath(f, directory) for f in found] == ["a.txt", "b/c.md", "b/z.txt", "d.txt", "empty.txt"]
    vocab, ids = read_corpus(found)
    # A newline between files that do not end with one; none after the last, none for an empty file.
    assert vocab.decode(ids) == "aa\ncc\nzz\ndd"
    only_txt = text_files(directory, "*.txt")
    assert [os.path.relpath(f, directory) for f in only_txt] == ["a.txt", "b/z.txt", "d.txt", "empty.txt"]
    # Files named directly are taken in the order given, whatever their name.
    listed = text_files([str(tmp_path / "texts/d.txt"), directory], "*.md")
    assert [os.path.relpath(f, tmp_path) for f in listed] == ["texts/d.txt", "texts/b/c.md"]


def test_a_leading_vocabulary_keeps_its_ids(tmp_path):
    leading = ["z", "\n", "q", "a"]  # not sorted, and "q" is not in the text
    vocab, ids = read_corpus(write(tmp_path, UNICODE), leading)
    assert vocab.chars[:4] == leading
    assert vocab.chars[4:] == sorted(set(UNICODE) - set(leading))
    assert vocab.decode(ids) == UNICODE
    assert all(vocab.index[c] == i for i, c in enumerate(leading))


def test_several_files_train_and_resume_on_the_same_joined_text_only(tmp_path, capsys):
    from tests.train_helpers import corpus, newest, tiny_args, train

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "1.txt").write_text(corpus(400))
    (texts / "2.txt").write_text(corpus(800)[400:])
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  path:\n    - {texts / '1.txt'}\n    - {texts / '2.txt'}\n")
    assert train(tiny_args(texts, tmp_path / "dir", steps=10)) == 0
    assert train(tiny_args(texts, tmp_path / "list", "--config", config, steps=10)) == 0
    ckpts = [newest(tmp_path / name) for name in ("dir", "list")]
    assert ckpts[0]["CharDataModule"] == ckpts[1]["CharDataModule"]  # the same text: the same checksum
    assert train(tiny_args(texts, tmp_path / "dir", "--ckpt_path", "last", steps=20)) == 0
    (texts / "2.txt").write_text(corpus(800)[400:][::-1])  # the same characters, another text
    capsys.readouterr()
    assert train(tiny_args(texts, tmp_path / "dir", "--ckpt_path", "last", steps=30)) == 2
    assert "another text" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["append", "truncate"])
def test_a_file_changing_while_it_is_read_is_read_as_one_version(tmp_path, monkeypatch, change):
    """Each time charrnn opens the file, it changes right after: text from two versions would crash the encoding
    (appended) or train on characters the file never held (truncated)."""
    import builtins

    import charrnn.text as text_io

    path = write(tmp_path, UNICODE)
    opened = []

    def open_then_change(file, mode="r", *args, **kwargs):
        if str(file) != path:
            return builtins.open(file, mode, *args, **kwargs)
        opened.append(file)
        with builtins.open(path, "rb") as f:
            now = io.BytesIO(f.read())  # what this open reads, however the file changes next
        with builtins.open(path, "a" if change == "append" else "w", encoding="utf-8") as f:
            f.write("appended: ÆØÅ\n" if change == "append" else "")
        return now

    monkeypatch.setattr(text_io, "open", open_then_change, raising=False)  # the module's open, not the builtin
    vocab, ids = read_corpus(path)
    assert vocab.decode(ids) == UNICODE and len(opened) == 1
