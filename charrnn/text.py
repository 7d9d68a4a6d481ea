"""Text in: reading and encoding a UTF-8 file, the vocabulary, and the layouts of its streams.

Imports torch and NumPy but not Lightning, so that sample.py, visualize.py and the Python API read text as
training does (BOM dropped, CRLF and CR as LF, ids by sorted code point) without Lightning's start-up.

Training text is cut into ``batch_size`` contiguous streams; batch t holds window t of every stream, so row b of
batch t + 1 continues row b of batch t and the hidden state can be carried across batches. Validation text is
laid out the same way (as parallel streams, for speed) but covers every character, masked where streams are
padded.
"""

import codecs
import contextlib
import fnmatch
import io
import os

import numpy as np
import torch

from .errors import UsageError
from .files import missing, regular_file

BUILTIN_TEXT = "pydoc_data.topics"  # the text a fresh clone trains on: Python's reference documentation
_CHUNK_BYTES = 1 << 23
VAL_STREAMS = 64
VAL_CHUNK = 256  # characters of every stream per forward pass: validation's batches, and the API's score


def _decoded_chunks(stream, path: str, what: str = "data file", chunk_bytes: int | None = None):
    """Yield the text of a binary ``stream`` (the file ``path``) in chunks: UTF-8 checked, BOM dropped, CRLF (and
    lone CR) turned into LF. ``what`` names the file in errors.

    Line ends are normalised so a file saved on Windows trains the same model as on Unix and no '\\r' reaches
    the vocabulary or the samples.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, carry, at_start = 0, "", True
    while True:
        raw = stream.read(chunk_bytes or _CHUNK_BYTES)
        pending = len(decoder.getstate()[0])  # bytes of a character split by the previous chunk
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            at = offset - pending + e.start  # in the file, BOM included
            source = "utf-16" if at == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"
            raise UsageError(
                f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {at}); "
                f"convert it first, e.g. iconv -f {source} -t utf-8"
            ) from None
        offset += len(raw)
        if at_start and text:
            text, at_start = text.removeprefix("\ufeff"), False
        text = carry + text
        # Hold back a trailing CR: its LF may start the next chunk.
        carry = text[-1:] if raw and text.endswith("\r") else ""
        text = text[: len(text) - len(carry)]
        if "\r" in text:  # a scan is much cheaper than two replaces on the common Unix text
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text:
            yield text
        if not raw:
            return


def _unreadable(e: OSError, path: str, what: str) -> UsageError:  # e.g. /proc/self/mem, or a disk failing
    return UsageError(f"cannot read {what} {path} ({e.strerror})")


def _read_bytes(path: str, what: str = "data file") -> bytes:
    """The whole file in one read: every later pass works on these bytes, so a file that changes while charrnn
    starts is read as one version of it, never as a mix of two."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _unreadable(e, path, what) from None


def read_start(path: str, limit: int, what: str) -> tuple[str, bool]:
    """The first ``limit`` characters of a text file read as training reads it, and whether it holds more. Reads
    about as far as needed: a character is at most 4 bytes."""
    text = ""
    try:
        with open(path, "rb") as f, contextlib.closing(_decoded_chunks(f, path, what, 4 * limit + 8)) as chunks:
            for chunk in chunks:
                text += chunk
                if len(text) > limit:
                    break
    except OSError as e:
        raise _unreadable(e, path, what) from None
    return text[:limit], len(text) > limit


def read_text(path: str, what: str) -> str:
    """A whole text file read as training reads it (BOM dropped, CRLF and CR as LF); ``what`` names it in errors."""
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path} does not exist")
    regular_file(path, what)
    return "".join(_decoded_chunks(io.BytesIO(_read_bytes(path, what)), path, what))


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def check_text_file(path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"data file {path} {missing(path)}; pass --data.path with a UTF-8 text file or a directory")
    if not os.access(path, os.R_OK):
        raise UsageError(f"data file {path} is not readable")
    regular_file(path, "data file")


def text_files(paths: str | list[str], pattern: str | None = None) -> list[str]:
    """The files ``--data.path`` names, in the order they are joined: each path as given, a directory standing for
    its regular files below it (recursively, sorted by path, hidden names skipped) whose name matches ``pattern``
    (fnmatch, e.g. ``*.txt``; files named directly are always taken)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise UsageError("--data.path is an empty list; pass a UTF-8 text file, a directory, or a list of them")
    if pattern is not None and not any(os.path.isdir(path) for path in paths):
        raise UsageError(f"--data.glob {pattern} selects files in a directory, but --data.path names none")
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)  # read_corpus checks it
            continue
        found = _files_below(path, pattern)
        if not found:
            matching = f" matching --data.glob {pattern}" if pattern is not None else ""
            raise UsageError(f"data directory {path} holds no files{matching}; pass a directory of UTF-8 text files")
        files += found
    return files


def _files_below(directory: str, pattern: str | None) -> list[str]:
    found = []
    for parent, subdirectories, names in os.walk(directory, onerror=_unreadable_directory):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in names:
            path = os.path.join(parent, name)
            if name.startswith(".") or not os.path.isfile(path):  # sockets, pipes, devices, broken links
                continue
            if pattern is None or fnmatch.fnmatchcase(name, pattern):
                found.append(path)
    return sorted(found, key=lambda path: os.path.relpath(path, directory).split(os.sep))


def _unreadable_directory(error: OSError) -> None:
    raise UsageError(f"cannot read data directory {error.filename} ({error.strerror})")


def _joined_chunks(files: list[str], raws: list[bytes]):
    """The text of the files (their bytes ``raws``) one after the other, with a newline before a file's text when the
    text before it does not end with one (so the last line of one file and the first of the next never run
    together)."""
    ends_line = True
    for path, raw in zip(files, raws):
        for i, chunk in enumerate(_decoded_chunks(io.BytesIO(raw), path)):
            if i == 0 and not ends_line:
                yield "\n"
            yield chunk
            ends_line = chunk.endswith("\n")


class Vocab:
    """The characters of a text (Unicode code points), sorted: the same text always gives the same ids. With a
    ``leading`` vocabulary (a fine-tuned checkpoint's), those characters keep their ids and the text's others follow,
    sorted."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def lookup_table(self, dtype) -> np.ndarray:
        """Code point -> id, indexed by a whole array of code points at once (no Python loop per character)."""
        points = np.array([ord(c) for c in self.chars], dtype=np.int64)
        table = np.zeros(int(points.max()) + 1 if len(points) else 1, dtype=dtype)
        table[points] = np.arange(len(points))
        return table


def id_dtype(vocab_size: int):
    """The smallest integer dtype for ids: a 100 MB text must not cost 800 MB as int64."""
    return np.uint8 if vocab_size <= 256 else np.int16 if vocab_size <= 32768 else np.int32


def vocabulary(chars, leading: list[str] | None = None) -> Vocab:
    """``chars`` sorted, after ``leading`` (whose ids then mean what they meant to the model that had them)."""
    known = set(leading or ())
    return Vocab([*(leading or ()), *sorted(c for c in chars if c not in known)])


def read_corpus(paths: str | list[str], leading: list[str] | None = None):
    """Read text files, each once and whole, and encode them in two passes over those bytes (``_joined_chunks``),
    without a Python object per character. ``leading``: the vocabulary's first characters (``vocabulary``).

    Returns ``(vocab, ids)`` with ids a compact integer numpy array.
    """
    files = [paths] if isinstance(paths, str) else list(paths)
    for path in files:
        check_text_file(path)
    raws = [_read_bytes(path) for path in files]
    seen = np.zeros(0x110000, dtype=bool)  # every Unicode code point; a presence table is cheaper than counting
    length = 0
    for text in _joined_chunks(files, raws):
        cps = _code_points(text)
        seen[cps] = True
        length += len(cps)
    points = np.flatnonzero(seen)
    if len(points) == 0:
        which = f"data file {files[0]} is" if len(files) == 1 else f"all {len(files)} data files are"
        raise UsageError(f"{which} empty; give charrnn some text to learn from")
    vocab = vocabulary(map(chr, points), leading)
    table = vocab.lookup_table(id_dtype(len(vocab)))
    ids = np.empty(length, dtype=table.dtype)
    pos = 0
    for text in _joined_chunks(files, raws):
        cps = _code_points(text)
        ids[pos : pos + len(cps)] = table[cps]
        pos += len(cps)
    return vocab, ids


def corpus_from_text(text: str, leading: list[str] | None = None):
    """``(vocab, ids)`` of an in-memory string (the built-in corpus and tests)."""
    if not text:
        raise UsageError("the text is empty")
    vocab = vocabulary(set(text), leading)
    return vocab, vocab.lookup_table(id_dtype(len(vocab)))[_code_points(text)]


def train_streams(ids: torch.Tensor, streams: int, seq_length: int, per_process: bool = False):
    """Lay ``ids`` out as ``streams`` contiguous rows, a whole number of windows long.

    ``per_process``: ``streams`` is one process's share (the number of processes is not known yet), and an error
    says so rather than give a count the run would not have.

    Returns inputs and targets (B, L) as views of ``ids``; targets are inputs shifted by one character, so row b's
    last target is the first character of row b + 1. At most ``B * T`` trailing characters are not used as inputs.
    """
    windows = (len(ids) - 1) // (streams * seq_length)
    if windows < 1:
        raise UsageError(
            f"the training text has {len(ids)} characters, too few for {streams} streams"
            f"{' per process' if per_process else ''} of one "
            f"{seq_length}-character window each (needs {streams * seq_length + 1}); "
            f"lower --data.batch_size or --data.seq_length, or use a longer text"
        )
    length = windows * seq_length
    return ids[: streams * length].view(streams, length), ids[1 : streams * length + 1].view(streams, length)


def val_streams(ids: torch.Tensor, streams: int = VAL_STREAMS, multiple_of: int = 1):
    """Cover every validation character: predict ids[1:] from ids[:-1] in parallel, padded rows masked out.

    Returns inputs, targets (S, L) int64 and a bool mask (S, L) of real predictions; S is a multiple of
    ``multiple_of`` so that S rows split evenly over that many ranks (surplus rows are all padding).
    """
    n = len(ids) - 1
    streams = -(-max(1, min(streams, n)) // multiple_of) * multiple_of
    length = -(-n // streams)
    x = torch.zeros(streams * length, dtype=torch.long)
    y = torch.zeros(streams * length, dtype=torch.long)
    mask = torch.zeros(streams * length, dtype=torch.bool)
    x[:n], y[:n], mask[:n] = ids[:-1], ids[1:], True
    return x.view(streams, length), y.view(streams, length), mask.view(streams, length)
