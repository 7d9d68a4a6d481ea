"""Training speed of every cell: charrnn's train.py against the same network in autograd, and against a bare loop.

    python -m bench.cell_training [--cells rnn lstm gru] [--shapes 256x1x32x50 512x2x32x100] [--rounds 5]
                                  [--seconds 3] [--threads 1] [--gradients [--dropout 0]]

For each cell and shape (hidden size x layers x streams x window), characters per second of
(a) charrnn as users run it: train.py's ``main`` with ``--model.cell``, ``--model.num_layers`` (Lightning, logging
    and progress bar on), timed inside the run (bench/throughput.py's ``charrnn_train_py``);
(b) the same hand-written math in a bare loop: ``network.train_step`` and nothing around it;
(c) what a PyTorch user would write: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear`` + cross-entropy + autograd
    + ``torch.optim.Adagrad`` in a LightningModule with automatic optimization (bench/baselines.py's ``TorchRNN``).
Each variant's rate in a round is that of its median batch (bench.common.RateMeter.median: a burst of load from
another user of the machine slows a few batches, which the median leaves out). Rounds alternate the variants, (a)
and (c) always side by side and in turn first, so a slow drift of the machine's speed favours neither; each ratio
is taken per round and its median printed, with the median rate and each round's a/c. Goals: a/c >= 1.0 (1.3
hoped for), a/b >= 0.9. Last, (a)'s matrix-product rate as a share of one large ``torch.mm`` on the same threads:
the ceiling for this work.

``--gradients`` times the gradients alone instead, without optimizer or Lightning (its cost is the same on both
sides): (h) charrnn/stack.py's ``loss_and_grads`` against (t) ``nn.RNN/LSTM/GRU(V, H, L) + nn.Linear``, forward and
``backward()`` of the same loss, both carrying the state between windows of random text (V = 65, tinyshakespeare's:
speed does not depend on the text), per CPU second of this process, with ``--dropout`` between the layers.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import statistics
import tempfile
import time

import torch

from bench.common import print_table, shakespeare_path, start
from bench.throughput import bare_loop, charrnn_train_py, flops_per_step, mm_gflops, torch_rnn_lightning
from charrnn import stack
from charrnn.cells import CELLS
from charrnn.data import CharDataModule

VARIANTS = {"a": charrnn_train_py, "b": bare_loop, "c": torch_rnn_lightning}
V = 65  # --gradients: tinyshakespeare's vocabulary size


def shape(text: str) -> tuple[int, int, int, int]:
    H, L, B, T = map(int, text.split("x"))
    return H, L, B, T


def measure(cell: str, H: int, L: int, B: int, T: int, rounds: int, seconds: float, tmp: str) -> tuple[dict, int]:
    """Characters per second of each variant in each round, ``{variant: [round 1, round 2, ...]}``, and the
    vocabulary size."""
    data = CharDataModule(shakespeare_path(), T, B)
    rates = {k: [] for k in VARIANTS}
    for r in range(rounds):
        for k in "acb" if r % 2 == 0 else "bca":
            rates[k].append(VARIANTS[k](data, H, seconds, tmp, cell=cell, num_layers=L, statistic="median") * B * T)
    return rates, data.vocab_size


def random_windows(B, T, n=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)) for _ in range(n)]


def windows_per_second(step, seconds, warmup=0.5):
    """Windows per CPU second of ``step()``, timed after ``warmup`` seconds of it: the time slices that other users
    of a shared machine take do not count, their cache pressure still does."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup:
        step()
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        step()
        n += 1
    return n / (time.process_time() - t0)


def hand_written_gradients(name, H, L, B, T, p):
    cell = CELLS[name]
    params = stack.init_params(cell, V, H, L, generator=torch.Generator().manual_seed(0))
    data, state, step_no = random_windows(B, T), [stack.zero_state(cell, B, L, H)], [0]

    def step():
        inputs, targets = data[step_no[0] % len(data)]
        masks = stack.dropout_masks(p, 0, step_no[0], 0, B, T, L, H)
        _, _, state[0] = stack.loss_and_grads(cell, params, inputs, targets, state[0], masks)
        step_no[0] += 1

    return step


def autograd_gradients(name, H, L, B, T, p):
    torch.manual_seed(0)
    rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name](V, H, L, dropout=p)
    out = torch.nn.Linear(H, V)
    params = [*rnn.parameters(), *out.parameters()]
    data, state, step_no = random_windows(B, T), [None], [0]

    def step():
        inputs, targets = data[step_no[0] % len(data)]
        for q in params:
            q.grad = None
        h, state[0] = rnn(torch.nn.functional.one_hot(inputs.t(), V).float(), state[0])  # (T, B, H)
        logits = out(torch.nn.functional.dropout(h, p))
        loss = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.t().reshape(-1), reduction="sum")
        (loss / B).backward()
        state[0] = tuple(s.detach() for s in state[0]) if name == "lstm" else state[0].detach()
        step_no[0] += 1

    return step


def gradients(args, peak):
    """The ``--gradients`` table: (h) against (t) per round, the median of the per-round ratios."""
    rows = []
    for H, L, B, T in args.shapes:
        for name in args.cells:
            sides = {"h": hand_written_gradients(name, H, L, B, T, args.dropout),
                     "t": autograd_gradients(name, H, L, B, T, args.dropout)}  # fmt: skip
            rates = {k: [] for k in sides}
            for _ in range(args.rounds):
                for k, step in sides.items():
                    rates[k].append(windows_per_second(step, args.seconds))
            ratio = statistics.median(h / t for h, t in zip(rates["h"], rates["t"]))
            hand, autograd = statistics.median(rates["h"]), statistics.median(rates["t"])
            share = flops_per_step(B, H, V, T, CELLS[name].GATES, L) * hand / 1e9 / peak
            rows.append([name, f"{H}x{L}", f"{B}x{T}", f"{hand * B * T / 1e3:.1f}", f"{autograd * B * T / 1e3:.1f}",
                         f"{ratio:.2f}", f"{share:.0%}"])  # fmt: skip
            spread = " ".join(f"{h / t:.2f}" for h, t in zip(rates["h"], rates["t"]))
            print("  " + " ".join(map(str, rows[-1])) + f"   h/t by round: {spread}", flush=True)
    print()
    print_table(["cell", "H x layers", "B x T", "(h) kchar/s", "(t) kchar/s", "h/t", "(h) of torch.mm"], rows)
    print(f"\ngradients alone, medians of {args.rounds} rounds of {args.seconds:g} CPU s each, dropout "
          f"{args.dropout:g}; one 2048x2048 torch.mm: {peak:.1f} GFLOP/s on {args.threads} thread(s)")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--shapes", nargs="+", type=shape, default=[(256, 1, 32, 50), (512, 2, 32, 100)],
                        help="HIDDENxLAYERSxSTREAMSxWINDOW")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating the variants; medians are printed")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per variant and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    parser.add_argument("--gradients", action="store_true", help="time the gradients alone: (h) against (t)")
    parser.add_argument("--dropout", type=float, default=0.0, help="with --gradients: dropout between the layers")
    args = parser.parse_args()
    start(args.threads)
    peak = mm_gflops()
    if args.gradients:
        return gradients(args, peak)
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        for H, L, B, T in args.shapes:
            for cell in args.cells:
                rates, V = measure(cell, H, L, B, T, args.rounds, args.seconds, tmp)
                median = {k: statistics.median(v) for k, v in rates.items()}
                ratio = {x: statistics.median(a / r for a, r in zip(rates["a"], rates[x])) for x in "bc"}
                gflops = flops_per_step(B, H, V, T, CELLS[cell].GATES, L) * median["a"] / (B * T) / 1e9
                rows.append([cell, f"{H}x{L}", f"{B}x{T}", *(f"{median[k] / 1e3:.1f}" for k in VARIANTS),
                             f"{ratio['c']:.2f}", f"{ratio['b']:.2f}", f"{gflops:.1f}",
                             f"{gflops / peak:.0%}"])  # fmt: skip
                spread = " ".join(f"{a / c:.2f}" for a, c in zip(rates["a"], rates["c"]))
                print("  " + " ".join(map(str, rows[-1])) + f"   a/c by round: {spread}", flush=True)
    print()
    print_table(["cell", "H x layers", "B x T", "(a) kchar/s", "(b) kchar/s", "(c) kchar/s", "a/c", "a/b",
                 "(a) GFLOP/s", "of torch.mm"], rows)  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds of {args.seconds:g} s each; one 2048x2048 torch.mm: {peak:.1f} GFLOP/s "
          f"on {args.threads} thread(s); goals: a/c >= 1.0 (1.3), a/b >= 0.9")  # fmt: skip


if __name__ == "__main__":
    main()
