"""Training throughput (characters per second), charrnn against the baselines, all measured in this one run.

    python -m bench.throughput [--seconds 1] [--rounds 3] [--threads 1] [--hidden 100 512] [--batch 1 32 128]

Each entry is the best of ``--rounds`` rounds that alternate the variants, so load from other users of the machine
hits them alike; ratios are only compared within one run.

(a) charrnn as users run it: train.py's ``main`` with its command-line flags (Lightning, logging and progress bar
    on; configs/min-char-rnn.yaml at B = 1, configs/default.yaml otherwise), timed inside the run by
    bench.common.Stopwatch passed as ``--trainer.callbacks+=bench.common.Stopwatch``.
(b) the same math in a bare loop: network.train_step (BPTT, clip, charrnn's Adagrad), no Lightning (our ceiling).
(c) nn.RNN + nn.Linear + autograd + torch.optim.Adagrad + value clipping, automatic optimization in Lightning.
(d) B = 1 only: NumPy min-char-rnn.
Also: GFLOP/s of (a) at the largest configuration against one large torch.mm.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import contextlib
import json
import sys
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bench.baselines import TorchRNN
from bench.common import ROOT, SEQ_LENGTH, RateMeter, Stopwatch, print_table, shakespeare_path, start
from bench.min_char_rnn import MinCharRNN
from charrnn import network, optim
from charrnn.cli import main as train_main
from charrnn.data import CharDataModule, TrainBatches, choose_windows_per_batch

T = SEQ_LENGTH


def charrnn_train_py(data, H, seconds, tmp, cell="rnn", num_layers=1, statistic="best", extra=()):
    """(a): steps per second of train.py's ``main`` (what ``python train.py ARGS`` runs), called in this process so
    it alternates with the other variants; its console output goes to a log file. ``statistic``: RateMeter's
    ``best`` or ``median``, here and in (b) and (c); ``extra``: more flags (e.g. ``--threads 2``)."""
    B = data.batch_size
    config = "min-char-rnn.yaml" if B == 1 else "default.yaml"
    out = os.path.join(tmp, f"a-{B}-{H}.json")
    args = [
        "--config", os.path.join(ROOT, "configs", config), "--data.path", shakespeare_path(),
        "--data.batch_size", str(B), "--data.seq_length", str(data.seq_length), "--model.hidden_size", str(H),
        "--model.cell", cell, "--model.num_layers", str(num_layers),
        "--trainer.max_steps", "-1", "--trainer.val_check_interval", str(10**9),
        "--trainer.default_root_dir", os.path.join(tmp, f"a-{B}-{H}-{cell}-{num_layers}"),
        "--trainer.callbacks+=bench.common.Stopwatch",
        "--trainer.callbacks.seconds", str(seconds), "--trainer.callbacks.windows", "1",
        "--trainer.callbacks.out", out, *extra,
    ]  # fmt: skip
    with open(os.path.join(tmp, "a.log"), "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = train_main(args)
    if code != 0:
        sys.exit(f"train.py {' '.join(args)} failed with exit code {code}; see its output above")
    with open(out) as f:
        return json.load(f)[{"best": "steps_per_second", "median": "median_steps_per_second"}[statistic]]


def bare_loop(data, H, seconds, tmp=None, cell="rnn", num_layers=1, statistic="best"):
    """(b): the same math with nothing around it."""
    arch = network.Architecture(data.vocab_size, H, cell, num_layers)
    params = arch.init_params()
    opt = optim.Adagrad(params.values(), lr=0.1)
    per_batch = choose_windows_per_batch(data.batch_size * data.seq_length)
    batches = TrainBatches(data.train_inputs, data.train_targets, data.seq_length, per_batch=per_batch)
    meter = RateMeter(seconds, windows=1)
    while True:
        for batch in batches:
            for inputs, targets, window in zip(*batch):
                if window == 0:
                    h = arch.zero_state(inputs.shape[0])
                _, h = network.train_step(arch, params, opt, inputs, targets, h)
                if meter.tick():
                    return getattr(meter, statistic)


def torch_rnn_lightning(data, H, seconds, tmp, cell="rnn", num_layers=1, statistic="best"):
    """(c): what a PyTorch user would write, trained by Lightning with the same logging and progress bar."""
    stopwatch = Stopwatch(seconds=seconds, windows=1)
    data.windows_per_batch = 1  # TorchRNN trains one window per batch
    trainer = L.Trainer(
        max_steps=-1,
        max_epochs=-1,
        logger=TensorBoardLogger(tmp, name=f"c-{data.batch_size}-{H}"),
        log_every_n_steps=50,
        gradient_clip_val=5.0,
        gradient_clip_algorithm="value",
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[stopwatch],
    )
    with open(os.path.join(tmp, "c.log"), "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        trainer.fit(TorchRNN(data.vocab_size, H, cell=cell, num_layers=num_layers), datamodule=data)
    return getattr(stopwatch.meter, statistic)


def numpy_min_char_rnn(data, H, seconds, tmp=None):
    """(d): min-char-rnn.py's loop, iterations per second."""
    meter = RateMeter(seconds, windows=1)
    for _ in MinCharRNN(data.vocab_size, H).train(data.train_ids.numpy()):
        if meter.tick():
            return meter.best


def flops_per_step(B, H, V, T=T, gates=1, layers=1):
    """Matrix-product FLOPs of one training step: per layer the recurrence forward, its backward and dWhh (3 products
    of G*H x H); above the first layer also the input projection, its backward and dWxh; the output layer, its
    backward and dWhy (the first layer's input is a gather, no product)."""
    return 2 * T * B * ((2 * layers - 1) * 3 * gates * H * H + 3 * H * V)


def mm_gflops(n=2048, seconds=2.0):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="measured seconds per round and entry, after warm-up"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants; each entry is its best round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--skip", default="", help="variants to leave out, e.g. 'cd'")
    args = parser.parse_args()
    start(args.threads)
    rows, largest = [], None
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        for H in args.hidden:
            for B in args.batch:
                data = CharDataModule(shakespeare_path(), T, B)
                variants = {"a": charrnn_train_py, "b": bare_loop, "c": torch_rnn_lightning}
                if B == 1:
                    variants["d"] = numpy_min_char_rnn
                variants = {k: f for k, f in variants.items() if k not in args.skip}
                rate = {k: 0.0 for k in variants}
                for _ in range(args.rounds):  # alternate, so a busy moment on the machine hits every variant alike
                    for k, measure in variants.items():
                        rate[k] = max(rate[k], measure(data, H, args.seconds, tmp) * B * T)
                ratio = lambda x: f"{rate['a'] / rate[x]:.2f}" if x in rate else "-"
                kchars = lambda x: f"{rate[x] / 1e3:.1f}" if x in rate else "-"
                rows.append([H, B, *map(kchars, "abcd"), ratio("b"), ratio("c"), ratio("d")])
                print(f"  H={H} B={B}: " + ", ".join(f"({k}) {v / 1e3:.1f}k" for k, v in rate.items()), flush=True)
                largest = (B, H, data.vocab_size, rate["a"] / (B * T))
    print()
    print_table(["H", "B", "(a) kchar/s", "(b) kchar/s", "(c) kchar/s", "(d) kchar/s", "a/b", "a/c", "a/d"], rows)
    B, H, V, steps_per_s = largest
    achieved, peak = flops_per_step(B, H, V) * steps_per_s / 1e9, mm_gflops()
    print(
        f"\n(a) at B={B}, H={H}: {achieved:.1f} GFLOP/s in matrix products; one 2048x2048 torch.mm: {peak:.1f} GFLOP/s "
        f"-> {achieved / peak:.0%} of it"
    )


if __name__ == "__main__":
    main()
