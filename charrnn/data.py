"""Batches out: the text (charrnn/text.py) as Lightning's data module, with the windows of its streams as batches.

With N processes the text is cut into N * ``batch_size`` streams and rank r trains streams
r * B .. r * B + B - 1; the validation streams are split across ranks the same way.
"""

import math
import os
import zlib

import lightning as L
import torch

from .distributed import block_of_rank
from .errors import UsageError
from .text import (
    BUILTIN_TEXT,
    VAL_CHUNK,
    corpus_from_text,
    pydoc_text,
    read_corpus,
    text_files,
    train_streams,
    val_streams,
)

DEFAULT_PATH = "data/raw/input.txt"
BATCH_CHARS = 3200  # characters per trainer batch that amortise the trainer's per-batch overhead


def choose_windows_per_batch(chars_per_window: int, step_counts=()) -> int:
    """The largest W <= BATCH_CHARS / chars_per_window that divides every positive count of optimizer steps in
    ``step_counts``, so that validation, checkpoints and the end of training still fall at the end of a batch."""
    limit = max(1, BATCH_CHARS // chars_per_window)
    common = math.gcd(*(n for n in step_counts if n > 0))
    return max(w for w in range(1, limit + 1) if common % w == 0)


def _source(path: list[str] | str, files: list[str]) -> str:
    """What a run learned from, as the run summary and TensorBoard name it: the file, or the paths given and how many
    files they held."""
    if isinstance(path, str) and files == [path]:
        return path
    given = ", ".join([path] if isinstance(path, str) else path)
    return f"{given} ({len(files)} file{'s' if len(files) != 1 else ''})"


class TrainBatches:
    """Batches of ``per_batch`` consecutive windows, inputs and targets (W, B, T) and the window indices, one optimizer
    step per window: several windows per batch spare the trainer's per-batch overhead, which at small B * T costs more
    than a step.

    Step s trains window ``s % windows`` and iteration starts at ``step()``, so a resume is exact without replaying
    data. Batches end at multiples of W steps and may wrap around the end of the text (the module resets the state at
    window 0), so the trainer's batch counts stay proportional to steps.
    """

    def __init__(self, inputs, targets, seq_length: int, step=lambda: 0, per_batch=1, streams=None):
        self.inputs, self.targets, self.seq_length, self.step = inputs, targets, seq_length, step
        self.windows = inputs.shape[1] // seq_length
        self.per_batch = per_batch
        self.streams = inputs.shape[0] if streams is None else streams  # of all ranks together

    def __len__(self):
        return -(-self.windows // self.per_batch)

    def __iter__(self):
        T, W = self.seq_length, self.per_batch
        step = self.step()
        epoch_end = (step // (W * len(self)) + 1) * W * len(self)
        while step < epoch_end:
            stop = (step // W + 1) * W
            windows = [s % self.windows for s in range(step, stop)]
            inputs = torch.stack([self.inputs[:, w * T : (w + 1) * T] for w in windows])
            targets = torch.stack([self.targets[:, w * T : (w + 1) * T] for w in windows])
            yield inputs.long(), targets.long(), windows
            step = stop

    def state_dict(self):
        """The layout, so a resume on a different text or batch size is refused instead of silently wrong."""
        return {"streams": self.streams, "stream_length": self.inputs.shape[1], "seq_length": self.seq_length}

    def load_state_dict(self, state):
        if state != self.state_dict():
            raise UsageError(
                f"the checkpoint was trained on a different data layout ({state}) "
                f"than this run's ({self.state_dict()}); "
                "resume with the same text, --data.seq_length and number of streams (--data.batch_size times processes)"
            )


class ValBatches:
    """Iterates time chunks (inputs, targets, mask, chunk index) of the validation streams."""

    def __init__(self, inputs, targets, mask, chunk: int = VAL_CHUNK):
        self.inputs, self.targets, self.mask, self.chunk = inputs, targets, mask, chunk

    def __len__(self):
        return -(-self.inputs.shape[1] // self.chunk)

    def __iter__(self):
        C = self.chunk
        for i in range(len(self)):
            cut = slice(i * C, (i + 1) * C)
            yield self.inputs[:, cut], self.targets[:, cut], self.mask[:, cut], i


class CharDataModule(L.LightningDataModule):
    """UTF-8 text as training streams and a held-out validation tail.

    Args:
        path: the text file, a directory (its files below it, sorted by path), or a list of them, joined in order
            (a newline before a file whose text would otherwise continue the line before it). When it is the default
            and does not exist, Python's own reference documentation (``pydoc_data.topics``, shipped with every
            Python) is used, so a fresh clone trains offline.
        seq_length: characters per window (the truncated-BPTT length).
        batch_size: parallel training streams per process (rank); N processes train N * batch_size streams.
        val_fraction: the last part of the joined text, contiguous, held out for validation (0 disables validation).
        glob: only the files of a directory whose name matches this pattern (e.g. ``*.txt``); files named in
            ``path`` are always taken.
        vocab: characters that come first in the vocabulary, keeping their ids (``--init_from``'s checkpoint's);
            the text's others follow.
    """

    def __init__(self, path: list[str] | str = DEFAULT_PATH, seq_length: int = 25, batch_size: int = 32,
                 val_fraction: float = 0.1, glob: str | None = None, vocab: list[str] | None = None):  # fmt: skip
        super().__init__()
        self.path, self.seq_length, self.batch_size, self.val_fraction = path, seq_length, batch_size, val_fraction
        # Optimizer steps per trainer batch: one unless the trainer's side (cli._group_windows) groups several.
        self.windows_per_batch = 1
        if path == DEFAULT_PATH and glob is None and not os.path.exists(path):
            print(f"{path} not found: training on Python's reference documentation ({BUILTIN_TEXT}) instead")
            vocab, ids = corpus_from_text(pydoc_text(), vocab)
            self.source = BUILTIN_TEXT
        else:
            files = text_files(path, glob)
            vocab, ids = read_corpus(files, vocab)
            self.source = _source(path, files)
        self.vocab = vocab
        ids = torch.from_numpy(ids)
        n_val = int(len(ids) * val_fraction)
        self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        if val_fraction > 0 and len(self.val_ids) < 2:
            least = f"--data.val_fraction {2 / len(ids):.2g} or more, " if 2 / len(ids) < 1 else ""
            raise UsageError(
                f"--data.val_fraction {val_fraction} of the {len(ids)} characters of {self.source} holds {n_val}, and "
                f"validation needs 2; use {least}a longer text, or --data.val_fraction 0 for no validation"
            )
        self.train_inputs, self.train_targets = train_streams(self.train_ids, batch_size, seq_length, per_process=True)
        self.train_crc32 = zlib.crc32(self.train_ids.numpy())

    def state_dict(self):
        """A checksum of the training text: a resume on another text is refused even when its layout matches."""
        return {"train_crc32": self.train_crc32}

    def load_state_dict(self, state):
        if state != self.state_dict():
            raise UsageError(
                "the checkpoint was trained on another text (or --data.val_fraction); "
                "resume with the same --data.path and --data.val_fraction"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def chars(self) -> list[str]:
        return self.vocab.chars

    def _rank_and_world(self):
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def setup(self, stage):
        # The streams of all ranks (batch_size each); train_dataloader hands each rank its own rows.
        world = self._rank_and_world()[1]
        self.train_inputs, self.train_targets = train_streams(self.train_ids, world * self.batch_size, self.seq_length)

    def train_dataloader(self):
        # A plain iterable, not a DataLoader, so Lightning injects no DistributedSampler: each rank takes its own rows.
        step = (lambda: self.trainer.global_step) if self.trainer is not None else (lambda: 0)
        rank, world = self._rank_and_world()
        inputs, targets = (block_of_rank(rows, rank, world) for rows in (self.train_inputs, self.train_targets))
        streams = self.train_inputs.shape[0]
        return TrainBatches(inputs, targets, self.seq_length, step, self.windows_per_batch, streams)

    def val_dataloader(self):
        if self.val_fraction == 0:
            return []
        rank, world = self._rank_and_world()
        streams = val_streams(self.val_ids, multiple_of=world)
        return ValBatches(*(block_of_rank(rows, rank, world) for rows in streams))
