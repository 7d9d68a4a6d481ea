"""Training speed of every cell: charrnn's train.py against the same network in autograd, and against a bare loop.

    python -m bench.cell_training [--cells rnn lstm gru] [--shapes 256x1x32x50 512x2x32x100] [--rounds 5]
                                  [--seconds 3] [--threads 1]

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
"""

import bench.threads  # noqa: F401  (first: sizes the thread pools before NumPy and torch load)

import argparse
import statistics
import tempfile

from bench.common import print_table, shakespeare_path, start
from bench.throughput import bare_loop, charrnn_train_py, flops_per_step, mm_gflops, torch_rnn_lightning
from charrnn.cells import CELLS
from charrnn.data import CharDataModule

VARIANTS = {"a": charrnn_train_py, "b": bare_loop, "c": torch_rnn_lightning}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--shapes", nargs="+", type=shape, default=[(256, 1, 32, 50), (512, 2, 32, 100)],
                        help="HIDDENxLAYERSxSTREAMSxWINDOW")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating the variants; medians are printed")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per variant and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    args = parser.parse_args()
    start(args.threads)
    peak = mm_gflops()
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        for H, L, B, T in args.shapes:
            for cell in args.cells:
                rates, V = measure(cell, H, L, B, T, args.rounds, args.seconds, tmp)
                median = {k: statistics.median(v) for k, v in rates.items()}
                ratio = {x: statistics.median(a / r for a, r in zip(rates["a"], rates[x])) for x in "bc"}
                gflops = flops_per_step(B, H, V, T, CELLS[cell].GATES, L) * median["a"] / (B * T) / 1e9
                rows.append([cell, f"{H}x{L}", f"{B}x{T}", *(f"{median[k] / 1e3:.1f}" for k in VARIANTS),
                             f"{ratio['c']:.2f}", f"{ratio['b']:.2f}", f"{gflops:.1f}", f"{gflops / peak:.0%}"])  # fmt: skip
                spread = " ".join(f"{a / c:.2f}" for a, c in zip(rates["a"], rates["c"]))
                print("  " + " ".join(map(str, rows[-1])) + f"   a/c by round: {spread}", flush=True)
    print()
    print_table(["cell", "H x layers", "B x T", "(a) kchar/s", "(b) kchar/s", "(c) kchar/s", "a/c", "a/b",
                 "(a) GFLOP/s", "of torch.mm"], rows)  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds of {args.seconds:g} s each; one 2048x2048 torch.mm: {peak:.1f} GFLOP/s "
          f"on {args.threads} thread(s); goals: a/c >= 1.0 (1.3), a/b >= 0.9")  # fmt: skip


if __name__ == "__main__":
    main()
