"""Scoring speed: characters per second of ``Model.score`` (score.py) against training's forward pass.

``python -m bench.score_speed [--text FILE] [--chars N] [--threads N] [--repeats N]``

An untrained LSTM of 256 units (speed does not depend on what the weights learned) in float32 with tinyshakespeare's
vocabulary scores the first ``--chars`` characters of tinyshakespeare (1 MB by default, repeated if shorter) as one
stream and as 64 streams (validation's layout); the baseline is ``network.forward`` alone at training's shape
(B = 32 streams of T = 50 characters), the forward half of a training step. Best of ``--repeats``.
"""

import argparse
import time

import torch

from bench.common import machine_line, set_threads, shakespeare_path
from charrnn import api, network
from charrnn.network import Architecture


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", help="the text (default: tinyshakespeare from ../shared/data)")
    p.add_argument("--chars", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    set_threads(args.threads)
    print(machine_line())
    with open(args.text or shakespeare_path(), encoding="utf-8") as f:
        text = f.read()
    text = (text * (args.chars // len(text) + 1))[: args.chars]
    vocab = sorted(set(text))
    arch = Architecture(len(vocab), 256, "lstm")
    model = api.Model("untrained", arch, arch.init_params(torch.Generator().manual_seed(0)), vocab)
    for streams in (1, 64):
        seconds = best_time(lambda: model.score(text, streams=streams), args.repeats)
        print(f"score, {streams:2d} stream{'s' if streams > 1 else ' '}: {len(text) / seconds:12,.0f} characters/s")
    B, T = 32, 50
    inputs = torch.randint(len(vocab), (B, T))
    state = arch.zero_state(B)
    with torch.no_grad():
        forward = lambda: [network.forward(arch, model.params, inputs, state) for _ in range(50)]  # noqa: E731
        seconds = best_time(forward, args.repeats)
    print(f"network.forward, B={B} T={T}: {50 * B * T / seconds:12,.0f} characters/s")


if __name__ == "__main__":
    main()
