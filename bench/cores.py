"""Training on every core: train.py on 2 threads against 1, alone and next to a busy process, and against nn.LSTM /
nn.GRU / nn.RNN + autograd given the same threads.

    python -m bench.cores [--shapes lstm:256x1x32x50 gru:256x1x32x50 rnn:256x1x6x25 lstm:512x2x32x100]
                          [--threads 2] [--rounds 5] [--seconds 3] [--busy] [--no-torch]

For each cell and shape (the first three are configs/lstm.yaml's, configs/gru.yaml's and configs/default.yaml's),
characters per second of
(a1) charrnn's train.py ``--threads 1`` and (aN) ``--threads N`` (bench/throughput.py's ``charrnn_train_py``: the
     CharRNN LightningModule in a Trainer, logging and progress bar on, timed inside the run);
(c1), (cN) the same network as a PyTorch user writes it (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` + ``nn.Linear`` +
     cross-entropy + autograd in a LightningModule: bench/throughput.py's ``torch_rnn_lightning``) on 1 and N torch
     threads (``--no-torch`` leaves these out).
With ``--busy`` one more single-threaded process spins the whole time (a neighbour taking a core), and (c) is left
out. Each rate is that of the variant's median batch in its round; rounds alternate the variants, each first in
turn, so a drift of the machine's speed favours none; ratios are the medians of the per-round ratios. Last, the
machine's own ceiling: N processes of independent matrix products against one (hyperthreads sharing a core, or other
work, lower it from N). Goals on 2 cores: aN/a1 >= 1.6 for the LSTM and the GRU (1.85 hoped for), >= 0.95 next to a
busy process, aN/cN >= 1.0.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import torch

import bench.threads  # noqa: F401  (first: sizes the thread pools before NumPy and torch load)
from bench.common import print_table, shakespeare_path, start
from bench.throughput import charrnn_train_py, torch_rnn_lightning
from charrnn.cells import CELLS
from charrnn.data import CharDataModule


def shape(text: str) -> tuple[str, int, int, int, int]:
    cell, sizes = text.split(":")
    H, L, B, T = map(int, sizes.split("x"))
    return cell, H, L, B, T


def variants(n: int, with_torch: bool) -> dict:
    """name -> function(data, H, seconds, tmp, cell, num_layers) -> steps per second."""

    def charrnn(threads):
        return lambda *args, **kw: charrnn_train_py(*args, **kw, statistic="median", extra=("--threads", str(threads)))

    def autograd(threads):
        def run(*args, **kw):
            torch.set_num_threads(threads)
            return torch_rnn_lightning(*args, **kw, statistic="median")

        return run

    chosen = {"a1": charrnn(1), f"a{n}": charrnn(n)}
    if with_torch:
        chosen.update({"c1": autograd(1), f"c{n}": autograd(n)})
    return chosen


def measure(cell, H, L, B, T, runs: dict, rounds: int, seconds: float, tmp: str) -> dict:
    """``{variant: [chars/s in round 1, ...]}``, the variants in a rotated order each round."""
    data = CharDataModule(shakespeare_path(), T, B)
    rates, names = {k: [] for k in runs}, list(runs)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            rates[k].append(runs[k](data, H, seconds, tmp, cell=cell, num_layers=L) * B * T)
    return rates


PRODUCTS = """
import sys, time, torch
torch.set_num_threads(1)
a, b = torch.randn(512, 512), torch.randn(512, 512)
a @ b
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    a @ b
print(time.perf_counter() - start)
"""


def capacity(n: int, products: int = 300) -> float:
    """What the machine gives n processes of independent matrix products against one process doing all of them:
    the ceiling of any speed-up from n threads (n at most), which hyperthreads sharing a core, or other work on the
    machine, lower."""

    def seconds(processes: int) -> float:
        started = [subprocess.Popen([sys.executable, "-c", PRODUCTS, str(products // processes)],
                                    stdout=subprocess.PIPE, text=True) for _ in range(processes)]  # fmt: skip
        return max(float(p.communicate()[0]) for p in started)

    return statistics.median(seconds(1) / seconds(n) for _ in range(3))


def ratio(rates: dict, x: str, y: str) -> float:
    """The median over rounds of x's rate over y's in the same round."""
    return statistics.median(a / b for a, b in zip(rates[x], rates[y]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=shape, help="CELL:HIDDENxLAYERSxSTREAMSxWINDOW",
                        default=[("lstm", 256, 1, 32, 50), ("gru", 256, 1, 32, 50), ("rnn", 256, 1, 6, 25),
                                 ("lstm", 512, 2, 32, 100)])  # fmt: skip
    parser.add_argument("--cores", type=int, default=2, help="threads of (aN) and (cN)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating the variants; medians are printed")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per variant and round")
    parser.add_argument("--busy", action="store_true", help="a single-threaded busy process runs beside")
    parser.add_argument("--no-torch", action="store_true", help="leave out nn.* + autograd (c1, cN)")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)  # bench.threads reads it
    args = parser.parse_args()
    for cell, *_ in args.shapes:
        if cell not in CELLS:
            parser.error(f"unknown cell {cell}")
    os.environ.pop("OMP_NUM_THREADS", None)  # train.py then takes --threads
    start(1)
    n, runs = args.cores, variants(args.cores, not (args.no_torch or args.busy))
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
            for cell, H, L, B, T in args.shapes:
                rates = measure(cell, H, L, B, T, runs, args.rounds, args.seconds, tmp)
                median = {k: statistics.median(v) for k, v in rates.items()}
                row = [cell, f"{H}x{L}", f"{B}x{T}", f"{median['a1'] / 1e3:.1f}", f"{median[f'a{n}'] / 1e3:.1f}",
                       f"{ratio(rates, f'a{n}', 'a1'):.2f}"]  # fmt: skip
                if "c1" in rates:
                    row += [f"{median['c1'] / 1e3:.1f}", f"{median[f'c{n}'] / 1e3:.1f}",
                            f"{ratio(rates, f'a{n}', f'c{n}'):.2f}"]  # fmt: skip
                rows.append(row)
                spread = " ".join(f"{a / b:.2f}" for a, b in zip(rates[f"a{n}"], rates["a1"]))
                print("  " + " ".join(row) + f"   a{n}/a1 by round: {spread}", flush=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    headers = ["cell", "H x layers", "B x T", "(a1) kchar/s", f"(a{n}) kchar/s", f"a{n}/a1"]
    if "c1" in runs:
        headers += ["(c1) kchar/s", f"(c{n}) kchar/s", f"a{n}/c{n}"]
    print()
    print_table(headers, rows)
    beside = ", a busy process beside" if args.busy else ""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nmedians of {args.rounds} rounds of {args.seconds:g} s each{beside}; load average after: {load}; "
          f"{n} processes of matrix products did {capacity(n):.2f}x the work of one in the same time")  # fmt: skip


if __name__ == "__main__":
    main()
