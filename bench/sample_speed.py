"""Sampling speed: start-up of ``sample.py`` against ``python -c "import torch"``, and characters per second.

``python -m bench.sample_speed [--repeats N] [--chars N] [--checkpoint CKPT ...]``

The model is the default configuration's (hidden 256) with tinyshakespeare's vocabulary (65 characters, read
from ../shared/data when present), randomly initialised: speed does not depend on what the weights learned. Then
the generation speed of each cell, at the sizes with a speed goal (LSTM: >= 20k characters/s for one layer of 256,
>= 5k for two of 512, one core), exact and with ``--half``. With ``--checkpoint``, what ``--half`` costs in quality:
each trained checkpoint's loss on the last 10% of tinyshakespeare (fed character by character through the
sampler, as sample.py's prime is), exact and with ``--half``.
Start-up times are interleaved with the baseline and compared by median, so a busy machine slows both alike.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.common import ROOT, find_shakespeare
from charrnn import checkpoint
from charrnn.network import Architecture
from charrnn.sampling import Sampler

HIDDEN = 256


def vocabulary() -> list[str]:
    path = find_shakespeare()
    if path is None:
        return [chr(c) for c in range(32, 97)]  # 65 printable characters
    with open(path, encoding="utf-8") as f:
        return sorted(set(f.read()))


def write_checkpoint(path: str) -> None:
    vocab = vocabulary()
    arch = Architecture(len(vocab), HIDDEN)
    state = {"state_dict": arch.init_params(generator=torch.Generator().manual_seed(0))}
    checkpoint.write_metadata(state, arch, vocab, hidden_state=None)
    checkpoint.save_atomic(state, path)


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# (cell, hidden size, layers, goal in characters per second or None)
NETWORKS = [("rnn", 256, 1, None), ("lstm", 256, 1, 20_000), ("gru", 256, 1, None), ("lstm", 512, 2, 5_000),
            ("gru", 512, 2, None)]  # fmt: skip


def chars_per_second(cell, params, n: int, repeats: int, **kwargs) -> float:
    best = 0.0
    for _ in range(repeats):
        sampler = Sampler(cell, params, seed=0, **kwargs)
        start = time.perf_counter()
        for _ in sampler.generate(n):
            pass
        best = max(best, n / (time.perf_counter() - start))
    return best


def heldout_losses(path: str, chars: int) -> tuple[float, float, float]:
    """Mean loss in nats per character of checkpoint ``path`` on ``chars`` characters of tinyshakespeare's held-out
    tail, exact and with ``half``, and the largest gap between their probabilities of the true next character."""
    net = checkpoint.load_network(path)
    with open(find_shakespeare(), encoding="utf-8") as f:
        text = f.read()
    index = {c: i for i, c in enumerate(net.vocab)}
    ids = [index[c] for c in text[-(len(text) // 10) :][: chars + 1]]
    losses, probs = [], []
    for half in (False, True):
        sampler = Sampler(net.arch.cell, net.params, half=half)
        true_probs = []
        for x, y in zip(ids, ids[1:]):
            logits = sampler.advance(x)
            shifted = np.exp(logits - logits.max())
            true_probs.append(shifted[y] / shifted.sum())
        probs.append(np.array(true_probs))
        losses.append(-np.log(probs[-1]).mean())
    return losses[0], losses[1], np.abs(probs[1] - probs[0]).max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="start-up runs of each command; speed runs")
    parser.add_argument("--chars", type=int, default=200_000, help="characters per speed run")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="trained checkpoints to score exact and --half")
    parser.add_argument("--heldout", type=int, default=20_000, help="held-out characters scored per checkpoint")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "default.ckpt")
        write_checkpoint(ckpt)
        net = checkpoint.load_network(ckpt)
        params, vocab = net.params, net.vocab
        blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
        print(
            f"model: hidden {HIDDEN}, vocabulary {len(vocab)}; cpu_count {os.cpu_count()}, "
            f"torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={blas_threads}"
        )

        baseline_cmd = [sys.executable, "-c", "import torch"]
        sample_cmd = [sys.executable, "sample.py", ckpt, "--length", "200", "--seed", "1"]
        wall(sample_cmd)  # warm the file cache
        base, run = [], []
        for _ in range(args.repeats):
            base.append(wall(baseline_cmd))
            run.append(wall(sample_cmd))
        b, s = statistics.median(base), statistics.median(run)
        print(
            f"start-up: sample.py --length 200 {s:.3f}s, import torch {b:.3f}s, ratio {s / b:.2f}x "
            f"(median of {args.repeats}; goal <= 1.5x)"
        )

        for label, kwargs in (
            ("temperature 1", {}),
            ("temperature 0.8, top-k 10", {"temperature": 0.8, "top_k": 10}),
            ("greedy", {"temperature": 0.0}),
        ):
            rate = chars_per_second("rnn", params, args.chars, min(args.repeats, 3), **kwargs)
            print(f"generation, {label}: {rate:,.0f} chars/s (best of {min(args.repeats, 3)} x {args.chars:,})")
        for cell, H, L, goal in NETWORKS:
            weights = Architecture(len(vocab), H, cell, L).init_params(generator=torch.Generator().manual_seed(0))
            n = max(1000, args.chars // (H * L // 128))
            rate, half = (chars_per_second(cell, weights, n, min(args.repeats, 3), half=h) for h in (False, True))
            goal = f"; goal >= {goal:,}" if goal else ""
            print(
                f"generation, {cell} {L} x {H}: {rate:,.0f} chars/s, --half {half:,.0f} "
                f"(best of {min(args.repeats, 3)} x {n:,}{goal})"
            )

        n = 5 * args.chars
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = wall([sys.executable, "sample.py", ckpt, "--length", str(n), "--seed", "1"])
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
        print(
            f"whole process, sample.py --length {n:,} > /dev/null: {seconds:.2f}s wall, {n / seconds:,.0f} chars/s "
            f"including start-up ({cpu:.2f}s CPU, {n / cpu:,.0f} chars per CPU second); "
            "required >= 20,000, goal 50,000"
        )

    for path in args.checkpoint:
        exact, half, gap = heldout_losses(path, args.heldout)
        print(
            f"{path}: held-out loss over {args.heldout:,} characters {exact:.5f} nats/char exact, {half:.5f} with "
            f"--half ({half - exact:+.1e}); largest change of a true character's probability {gap:.1e}"
        )


if __name__ == "__main__":
    main()
