"""Training speed of each cell's hand-written BPTT against the same cell as nn.RNN / nn.LSTM / nn.GRU + autograd.

    python -m bench.cells [--cells rnn lstm gru] [--shapes 256x1x32x50 512x2x32x100] [--rounds 5] [--seconds 2]
                          [--threads 1] [--dropout 0]

Both sides compute gradients alone, from the same loss (cross-entropy summed over time, averaged over streams) and
the same model (one-hot input, L layers of the cell, a linear output layer), carrying the state between windows:
(h) charrnn/stack.py's ``loss_and_grads``; (t) ``nn.RNN/LSTM/GRU(V, H, L) + nn.Linear``, forward and
``backward()``, gradients set to None before each window. No optimizer: its cost is the same on both sides. The
text is random (speed does not depend on it), V = 65 as tinyshakespeare's.

Rates are per CPU second of this process. Rounds alternate the two sides, so load from other users of the machine hits both alike; the ratio h / t is taken
per round and its median printed. Also: the hand-written side's matrix-product rate (GFLOP/s) as a share of one
large torch.mm on the same threads, the ceiling for this work.

Then generation: characters per second of charrnn/sampling.py's NumpyStack ``advance`` (all layers over one character
and the next logits; drawing the character adds the same few microseconds for every cell), float64 and float32.
"""

import argparse
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench.threads  # noqa: E402, F401  (first: sizes the thread pools before NumPy and torch load)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import print_table, set_threads  # noqa: E402
from bench.throughput import mm_gflops  # noqa: E402
from charrnn import sampling, stack  # noqa: E402
from charrnn.cells import CELLS  # noqa: E402

V = 65


def batches(B, T, n=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)) for _ in range(n)]


def windows_per_second(step, seconds, warmup=0.5):
    """Windows per CPU second of ``step()`` (this process, one thread), timed after ``warmup`` seconds of it: the
    time slices that other users of a shared machine take do not count, their cache pressure still does."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup:
        step()
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        step()
        n += 1
    return n / (time.process_time() - t0)


def hand_written(name, H, L, B, T, p):
    cell = CELLS[name]
    params = stack.init_params(cell, V, H, L, generator=torch.Generator().manual_seed(0))
    data, state, step_no = batches(B, T), [stack.zero_state(cell, B, L, H)], [0]

    def step():
        inputs, targets = data[step_no[0] % len(data)]
        masks = stack.dropout_masks(p, 0, step_no[0], 0, B, T, L, H)
        _, _, state[0] = stack.loss_and_grads(cell, params, inputs, targets, state[0], masks)
        step_no[0] += 1

    return step


def autograd(name, H, L, B, T, p):
    torch.manual_seed(0)
    rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name](V, H, L, dropout=p)
    out = torch.nn.Linear(H, V)
    params = [*rnn.parameters(), *out.parameters()]
    data, state, step_no = batches(B, T), [None], [0]

    def step():
        inputs, targets = data[step_no[0] % len(data)]
        for q in params:
            q.grad = None
        h, state[0] = rnn(torch.nn.functional.one_hot(inputs.t(), V).float(), state[0])
        logits = out(torch.nn.functional.dropout(h, p))
        loss = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.t().reshape(-1), reduction="sum")
        (loss / B).backward()
        state[0] = tuple(s.detach() for s in state[0]) if name == "lstm" else state[0].detach()
        step_no[0] += 1

    return step


def product_flops(name, H, L, B, T):
    """Matrix-product FLOPs of one hand-written window: per layer the recurrent product forward and backward and
    dWhh (and for layers above the first the input projection, its weight gradient and input gradient); the output
    layer forward, dWhy and dh. Layer 0's gather and scatter are not products."""
    GH = CELLS[name].GATES * H
    per_layer = 2 * T * B * GH * H
    return per_layer * (3 * L + 3 * (L - 1)) + 3 * 2 * T * B * V * H


def sampling_rate(name, H, L, dtype, seconds):
    """Characters per second of NumpyStack.advance over a cycle of all V characters (best of three windows)."""
    stepper = sampling.NumpyStack(CELLS[name], stack.init_params(CELLS[name], V, H, L), dtype=dtype)
    chars = itertools.cycle(range(V))
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            for _ in range(100):
                stepper.advance(next(chars))
            n += 100
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--shapes", nargs="+", default=["256x1x32x50", "512x2x32x100"], help="HxLxBxT")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per side and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--sampling", nargs="*", default=["lstm:256x1", "lstm:512x2", "gru:256x1", "rnn:256x1"],
                        help="cell:HxL models whose generation speed to measure")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  threads={torch.get_num_threads()}  "
          f"load avg {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    peak = mm_gflops()
    rows = []
    for shape in args.shapes:
        H, L, B, T = map(int, shape.split("x"))
        for name in args.cells:
            sides = {"h": hand_written(name, H, L, B, T, args.dropout), "t": autograd(name, H, L, B, T, args.dropout)}
            rates = {k: [] for k in sides}
            for _ in range(args.rounds):
                for k, step in sides.items():
                    rates[k].append(windows_per_second(step, args.seconds))
            ratio = statistics.median(h / t for h, t in zip(rates["h"], rates["t"]))
            hand, torch_rate = statistics.median(rates["h"]), statistics.median(rates["t"])
            share = product_flops(name, H, L, B, T) * hand / 1e9 / peak
            rows.append([name, H, L, B, T, f"{hand * B * T / 1e3:.1f}", f"{torch_rate * B * T / 1e3:.1f}",
                         f"{ratio:.2f}", f"{share:.0%}"])  # fmt: skip
            print(f"  {name} H={H} L={L}: h/t per round " + " ".join(
                f"{h / t:.2f}" for h, t in zip(rates["h"], rates["t"])), flush=True)  # fmt: skip
    print(f"\none 2048x2048 torch.mm: {peak:.1f} GFLOP/s\n")
    print_table(["cell", "H", "L", "B", "T", "(h) kchar/s", "(t) kchar/s", "h/t (median)", "products / mm"], rows)
    rows = []
    for model in args.sampling:
        name, size = model.split(":")
        H, L = map(int, size.split("x"))
        rates = [sampling_rate(name, H, L, dtype, args.seconds) for dtype in (np.float64, np.float32)]
        rows.append([name, H, L, *(f"{r / 1e3:.1f}" for r in rates)])
    print("\ngeneration, NumpyStack.advance:\n")
    print_table(["cell", "H", "L", "float64 kchar/s", "float32 kchar/s"], rows)


if __name__ == "__main__":
    main()
