"""Data scale: time and memory to read a ~100 MB UTF-8 text, build the vocabulary, encode it and lay out the streams.

    python -m bench.data_scale [--mb 100] [--batch-size 32]

The text is tiny-shakespeare repeated with mutations (shuffled lines, upper-cased lines, inserted non-ASCII lines:
accents, CJK, emoji, CRLF line ends), written to a temporary directory and deleted afterwards. The measurement runs
in a fresh process so its peak RSS above the start (Linux VmHWM, reset at the start) is the loader's alone.
Targets: <= 10 s (goal 5 s) and <= 1.5 GB above the start.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.common import ROOT, machine_line, print_table, shakespeare_path

NON_ASCII = ["Ça va? Déjà vu — naïve café, façade, São Paulo.", "日本語のテキスト、漢字とかな。",
             "Emoji 🎭🗡️👑 and “quotes” ‘here’ …", "Ελληνικά και Русский текст, ß ø å ñ."]  # fmt: skip


def write_corpus(path: str, megabytes: float, seed: int = 0) -> int:
    """Write about ``megabytes`` MB of mutated tiny-shakespeare; returns the size in bytes."""
    rng = np.random.default_rng(seed)
    with open(shakespeare_path(), encoding="utf-8") as f:
        lines = f.read().split("\n")
    written, target = 0, int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8", newline="") as out:
        while written < target:
            order = rng.permutation(len(lines))
            upper = rng.random(len(lines)) < 0.05
            extra = rng.random(len(lines)) < 0.02
            block = []
            for i, line in enumerate(lines[j] for j in order):
                block.append(line.upper() if upper[i] else line)
                if extra[i]:
                    block.append(NON_ASCII[i % len(NON_ASCII)])
            text = ("\r\n" if rng.random() < 0.1 else "\n").join(block) + "\n"
            out.write(text)
            written += len(text.encode("utf-8"))
    return os.path.getsize(path)


def measure(path: str, batch_size: int, seq_length: int = 25) -> dict:
    """Runs in the child process: read_corpus, then the training and validation stream layout."""
    import torch

    from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes
    from charrnn.text import read_corpus, train_streams, val_streams

    start_rss = rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    vocab, ids = read_corpus(path)
    t1 = time.perf_counter()
    ids = torch.from_numpy(ids)
    n_val = int(len(ids) * 0.1)
    inputs, targets = train_streams(ids[: len(ids) - n_val], batch_size, seq_length)
    val = val_streams(ids[len(ids) - n_val :])
    t2 = time.perf_counter()
    return {
        "chars": len(ids),
        "vocab": len(vocab),
        "read_encode_s": t1 - t0,
        "layout_s": t2 - t1,
        "peak_above_start_mb": (peak_rss_bytes() - start_rss) / 1e6,
        "arrays_mb": (ids.nbytes + sum(t.numel() * t.element_size() for t in val)) / 1e6,
        "train_shape": list(inputs.shape),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated text in MB")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size)))
        return
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        path = os.path.join(tmp, "big.txt")
        size = write_corpus(path, args.mb)
        child = [sys.executable, "-m", "bench.data_scale", "--child", path, "--batch-size", str(args.batch_size)]
        r = json.loads(subprocess.run(child, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    total = r["read_encode_s"] + r["layout_s"]
    print(f"text: {size / 1e6:.1f} MB, {r['chars'] / 1e6:.1f} M characters, vocabulary {r['vocab']}, "
          f"training streams {r['train_shape']}")  # fmt: skip
    print_table(
        ["read + vocab + encode s", "layout s", "total s", "target s", "peak RSS above start MB", "target MB"],
        [[f"{r['read_encode_s']:.2f}", f"{r['layout_s']:.2f}", f"{total:.2f}", "<= 10 (goal 5)",
          f"{r['peak_above_start_mb']:.0f}", "<= 1500"]],
    )  # fmt: skip
    print(
        f"(of the peak: {r['arrays_mb']:.0f} MB are the results themselves: the ids and the int64 validation streams)"
    )


if __name__ == "__main__":
    main()
