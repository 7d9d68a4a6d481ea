"""Training throughput (characters per second), charrnn against the baselines, all measured in this one run.

    python bench/throughput.py [--seconds 3] [--threads 1] [--hidden 100 512] [--batch 1 32 128]

(a) charrnn as users run it: ``train.py`` (Lightning, logging and progress bar on; configs/min-char-rnn.yaml at
    B = 1, configs/default.yaml otherwise), timed inside the run by bench.common.Stopwatch.
(b) the same math in a bare loop: rnn.loss_and_grads + clip + charrnn's Adagrad, no Lightning (our ceiling).
(c) nn.RNN + nn.Linear + autograd + torch.optim.Adagrad + value clipping, automatic optimization in Lightning.
(d) B = 1 only: NumPy min-char-rnn.
Also: GFLOP/s of (a) at the largest configuration against one large torch.mm.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from bench.baselines import MinCharRNN, TorchRNN  # noqa: E402
from bench.common import SEQ_LENGTH, Stopwatch, machine_line, print_table, run_train, set_threads, shakespeare_path  # noqa: E402
from charrnn import optim, rnn  # noqa: E402
from charrnn.data import CharDataModule, TrainBatches  # noqa: E402

T = SEQ_LENGTH


def charrnn_train_py(B, H, seconds, tmp):
    """(a): steps per second of ``train.py`` itself."""
    config = "configs/min-char-rnn.yaml" if B == 1 else "configs/default.yaml"
    out = os.path.join(tmp, f"a-{B}-{H}.json")
    run_train(
        [
            "--config", config, "--data.path", shakespeare_path(),
            "--data.batch_size", str(B), "--model.hidden_size", str(H),
            "--trainer.max_steps", "-1", "--trainer.val_check_interval", str(10**9),
            "--trainer.default_root_dir", os.path.join(tmp, f"a-{B}-{H}"),
            "--trainer.callbacks+=bench.common.Stopwatch",
            "--trainer.callbacks.seconds", str(seconds), "--trainer.callbacks.out", out,
        ],
        os.path.join(tmp, f"a-{B}-{H}.log"),
    )  # fmt: skip
    with open(out) as f:
        result = json.load(f)
    return result["steps"] / result["seconds"]


def bare_loop(data, H, seconds, warmup_seconds=0.5):
    """(b): the same math with nothing around it."""
    params = rnn.init_params(data.vocab_size, H)
    opt = optim.Adagrad(params.values(), lr=0.1)
    batches = TrainBatches(data.train_inputs, data.train_targets, T)
    started, t0, steps = time.perf_counter(), None, 0
    while True:
        for inputs, targets, window in batches:
            if window == 0:
                h = torch.zeros(inputs.shape[0], H)
            loss, grads, h = rnn.loss_and_grads(params, inputs, targets, h)
            for name, p in params.items():
                p.grad = grads[name]
            torch.nn.utils.clip_grad_value_(params.values(), 5.0)
            opt.step()
            now = time.perf_counter()
            if t0 is None and now - started >= warmup_seconds:
                t0 = now
            elif t0 is not None:
                steps += 1
                if now - t0 >= seconds:
                    return steps / (now - t0)


def torch_rnn_lightning(data, H, seconds, tmp):
    """(c): what a PyTorch user would write, trained by Lightning with the same logging and progress bar."""
    stopwatch = Stopwatch(seconds=seconds)
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
        trainer.fit(TorchRNN(data.vocab_size, H), datamodule=data)
    return stopwatch.result["steps"] / stopwatch.result["seconds"]


def numpy_min_char_rnn(data, H, seconds, warmup_seconds=0.5):
    """(d): min-char-rnn.py's loop, iterations per second."""
    model = MinCharRNN(data.vocab_size, H)
    started, t0, steps = time.perf_counter(), None, 0
    for _ in model.train(data.train_ids.numpy()):
        now = time.perf_counter()
        if t0 is None and now - started >= warmup_seconds:
            t0 = now
        elif t0 is not None:
            steps += 1
            if now - t0 >= seconds:
                return steps / (now - t0)


def flops_per_step(B, H, V):
    """Matrix-product FLOPs of one training step: forward recurrence and output layer, their backward, dWhh."""
    return 2 * T * B * (3 * H * H + 3 * H * V)


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
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per entry (after warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--skip", default="", help="variants to leave out, e.g. 'cd'")
    args = parser.parse_args()
    set_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(machine_line())
    rows, largest = [], None
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        for H in args.hidden:
            for B in args.batch:
                data = CharDataModule(shakespeare_path(), T, B)
                chars = B * T
                rate = {"a": charrnn_train_py(B, H, args.seconds, tmp) * chars}
                if "b" not in args.skip:
                    rate["b"] = bare_loop(data, H, args.seconds) * chars
                if "c" not in args.skip:
                    rate["c"] = torch_rnn_lightning(data, H, args.seconds, tmp) * chars
                if B == 1 and "d" not in args.skip:
                    rate["d"] = numpy_min_char_rnn(data, H, args.seconds) * chars
                ratio = lambda x: f"{rate['a'] / rate[x]:.2f}" if x in rate else "-"
                kchars = lambda x: f"{rate[x] / 1e3:.1f}" if x in rate else "-"
                rows.append([H, B, *map(kchars, "abcd"), ratio("b"), ratio("c"), ratio("d")])
                print(f"  H={H} B={B}: " + ", ".join(f"({k}) {v / 1e3:.1f}k" for k, v in rate.items()), flush=True)
                largest = (B, H, data.vocab_size, rate["a"] / chars)
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
