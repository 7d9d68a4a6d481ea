"""The LSTM's per-step products on the CPU: native.c's kernel against oneDNN and MKL, and what it gives a window.

    python -m bench.step_products [--shapes 256x1x32x50 512x2x32x100] [--rounds 7] [--steps 6]

Per shape (hidden size x layers x streams x window), one thread:
1. one step's products, forward (B x H by H x 4H) and backward (B x 4H by 4H x H), as charrnn can run them:
   ``product_f32`` by a weight packed into native.c's panels (called through ctypes, as a loop of 100 would be
   called from C, so the time includes the call), oneDNN by a weight packed once (``weight_product``, charrnn's
   per-step path elsewhere) and torch's ``mm`` (MKL); the best of ``--rounds`` rounds of 100 products, GFLOP/s;
2. ``network.train_step`` of the LSTM with the window loops in C (``fast.LSTM_WINDOWS``) against the per-step path
   (C steps between oneDNN products), alternating step by step; the median of the per-pair ratios of process time.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import statistics
import time

import torch

from bench.cell_training import shape
from bench.common import machine_line, print_table, set_threads
from charrnn import cli, network, optim
from charrnn.cells import fast, lstm, native

V = 65


def product_times(M: int, K: int, N: int, rounds: int, reps: int = 100) -> dict:
    """Seconds per product ``x (M x K) @ W^T`` (W is N x K) of each implementation, best of ``rounds``."""
    x, W = torch.randn(M, K), torch.randn(N, K) * K**-0.5
    out, packed = torch.empty(M, N), native.pack_panels(W)
    ours, onednn = native.kernel("product_f32"), native.weight_product(W, M)
    runs = {
        "C kernel": lambda: ours(x.data_ptr(), K, packed.data_ptr(), out.data_ptr(), N, None, 0, M, N, K),
        "oneDNN": lambda: onednn(x),
        "MKL": lambda: torch.mm(x, W.t()),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(reps):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / reps)
    return best


def step_ratio(H: int, L: int, B: int, T: int, steps: int) -> tuple[float, float, float]:
    """Median process seconds of a training step with the C window loops and with the per-step path, and the
    median of per-pair ratios (per-step / window)."""
    arch = network.Architecture(V, H, "lstm", L)
    params = arch.init_params()
    opt = optim.Adagrad(params.values(), lr=0.02, initial_accumulator_value=0.03)
    g = torch.Generator().manual_seed(0)
    inputs, targets = torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)
    state, windows = arch.zero_state(B), fast.path
    per_step = lambda *args: fast.Path("C steps", "", *fast.LSTM_STEPS)  # noqa: E731
    times = {"window": [], "per step": []}
    try:
        for k in range(steps * 2 + 2):  # two warm-up steps, then pairs in alternating order
            for name in ("window", "per step") if k % 2 else ("per step", "window"):
                fast.path = windows if name == "window" else per_step
                start = time.process_time()
                _, state = network.train_step(arch, params, opt, inputs, targets, state)
                if k >= 2:
                    times[name].append(time.process_time() - start)
    finally:
        fast.path = windows
    ratios = [p / w for p, w in zip(times["per step"], times["window"])]
    return statistics.median(times["window"]), statistics.median(times["per step"]), statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=shape, default=[(256, 1, 32, 50), (512, 2, 32, 100)],
                        help="HIDDENxLAYERSxSTREAMSxWINDOW")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=6, help="training steps of each kind per shape")
    args = parser.parse_args()
    set_threads(1)
    cli.keep_freed_memory()  # as train.py: no page faults on each window's buffers
    flags = os.environ.get("CHARRNN_CFLAGS")
    print(machine_line() + (f"  CHARRNN_CFLAGS={flags}" if flags else ""))
    if fast.path(lstm, torch.float32).name != "C window loops":
        print("nothing to measure: native.c's float32 products need a C compiler and an AVX-512 CPU")
        return
    products, steps = [], []
    for H, L, B, T in args.shapes:
        for direction, (K, N) in (("forward", (H, 4 * H)), ("backward", (4 * H, H))):
            best = product_times(B, K, N, args.rounds)
            rate = {name: 2 * B * K * N / t / 1e9 for name, t in best.items()}
            cells = [f"{t * 1e6:.0f} us, {rate[name]:.0f}" for name, t in best.items()]
            products.append([f"{B}x{K} by {K}x{N} ({direction})", *cells, f"{best['oneDNN'] / best['C kernel']:.2f}"])
        window, per_step, ratio = step_ratio(H, L, B, T, args.steps)
        steps.append([f"lstm {H}x{L}, {B}x{T}", f"{window * 1e3:.1f}", f"{per_step * 1e3:.1f}", f"{ratio:.3f}"])
    print_table(["product", "C kernel (GFLOP/s)", "oneDNN", "MKL", "oneDNN / C"], products)
    print()
    print_table(["training step", "C window loops (ms)", "per-step path (ms)", "per-step / window"], steps)


if __name__ == "__main__":
    main()
