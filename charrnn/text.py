"""Text files as charrnn reads them, and validation's layout of a text as parallel streams.

Lightning-free (data.py, the training side, imports it), so that the Python API, sample.py and score.py read a
prime or a scored file exactly as training reads its data, and score a text exactly as validation does.
"""

import codecs
import os

import torch

from .checks import regular_file
from .errors import UsageError

_CHUNK_BYTES = 1 << 23
VAL_STREAMS = 64
VAL_CHUNK = 256  # characters of every stream per forward pass: validation's batches, and score's


def decoded_chunks(path: str, what: str = "data file"):
    """Yield the file's text in chunks: UTF-8 checked, BOM dropped, CRLF (and lone CR) turned into LF.

    Line ends are normalised so a file saved on Windows trains the same model as on Unix and no '\\r' reaches
    the vocabulary or the samples. ``what`` names the file in errors.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    offset, carry = 0, ""
    with open(path, "rb") as f:
        while True:
            try:
                raw = f.read(_CHUNK_BYTES)
            except OSError as e:  # e.g. /proc/self/mem, or a disk failing
                raise UsageError(f"cannot read {what} {path} ({e.strerror})") from None
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                source = "utf-16" if offset + e.start == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"
                raise UsageError(
                    f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {offset + e.start}); "
                    f"convert it first, e.g. iconv -f {source} -t utf-8"
                ) from None
            offset += len(raw)
            # Hold back a trailing CR: its LF may start the next chunk.
            carry = text[-1:] if raw and text.endswith("\r") else ""
            text = text[: len(text) - len(carry)]
            if "\r" in text:  # a scan is much cheaper than two replaces on the common Unix text
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not raw:
                return


def check_text_file(path: str, what: str = "data file", advice: str = "pass --data.path with a UTF-8 text file"):
    """A UsageError unless ``path`` is a readable regular file; ``what`` names it, ``advice`` says what to do."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path} does not exist; {advice}")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a directory; {advice}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path} is not readable")
    regular_file(path, what)


def read_text(path: str, what: str, advice: str) -> str:
    """A whole UTF-8 file as training reads it (BOM dropped, CRLF and CR as LF); errors name it as ``what``."""
    check_text_file(path, what, advice)
    return "".join(decoded_chunks(path, what))


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
