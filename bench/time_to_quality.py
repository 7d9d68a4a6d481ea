"""Time to quality: training seconds until the validation loss first reaches 2.0 and 1.8 nats/char on
tiny-shakespeare (last 10% held out), charrnn's configs/default.yaml against NumPy min-char-rnn.

    python -m bench.time_to_quality [--numpy-seconds 150] [--threads 1] [--targets 2.0 1.8] [--train-args FLAGS]

``--train-args "--data.batch_size 8 --model.hidden_size 100" --numpy-seconds 0`` measures one point of a config
sweep with train.py itself.

Both are measured the same way: the clock runs only while training (it is paused during validation) and the loss is
charrnn's own full validation (every validation character, per character). charrnn runs ``train.py`` with the
default config and validates every ``--val-every`` steps; min-char-rnn is validated about every ``--numpy-eval``
seconds of training. min-char-rnn needs minutes to reach 2.0 (465 s in the run of record, BENCHMARKS.md), so it is
stopped after ``--numpy-seconds`` of training; when it has not reached a target by then, the table gives a bound
("> X s", ratio ">= Y").
"""

import bench.threads  # noqa: F401  (first: sizes the thread pools before NumPy and torch load)

import argparse
import json
import os
import shlex
import tempfile
import time

from bench.baselines import MinCharRNN, validation_loss
from bench.common import SEQ_LENGTH, first_reaching, print_table, run_train, shakespeare_path, start
from charrnn.data import CharDataModule


def charrnn_curve(targets, val_every, max_seconds, train_args, tmp):
    out = os.path.join(tmp, "curve.json")
    run_train(
        ["--data.path", shakespeare_path(), "--trainer.val_check_interval", str(val_every), *train_args,
         "--trainer.default_root_dir", tmp, "--trainer.callbacks+=bench.common.QualityClock",
         "--trainer.callbacks.out", out, "--trainer.callbacks.stop_at", str(min(targets)),
         "--trainer.callbacks.max_seconds", str(max_seconds)],
        os.path.join(tmp, "train.log"),
    )  # fmt: skip
    with open(out) as f:
        return json.load(f)


def numpy_curve(targets, max_seconds, eval_seconds):
    data = CharDataModule(shakespeare_path(), SEQ_LENGTH, 1)
    model = MinCharRNN(data.vocab_size)
    curve, elapsed, since_eval = [], 0.0, 0.0
    t0 = time.perf_counter()
    for n, _, _ in model.train(data.train_ids.numpy()):
        now = time.perf_counter()
        elapsed, since_eval, t0 = elapsed + now - t0, since_eval + now - t0, now
        if since_eval >= eval_seconds or elapsed >= max_seconds:
            loss = validation_loss(model.params, data, data.vocab_size)
            curve.append({"seconds": round(elapsed, 3), "step": n, "val_loss": loss})
            since_eval = 0.0
            if loss <= min(targets) or elapsed >= max_seconds:
                return curve
            t0 = time.perf_counter()  # validation is not training time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 1.8])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    parser.add_argument("--val-every", type=int, default=2000, help="charrnn: steps between validations")
    parser.add_argument("--max-seconds", type=float, default=180, help="charrnn: stop after this much training")
    parser.add_argument("--train-args", default="", help="more train.py flags, e.g. '--data.batch_size 8' (a sweep)")
    parser.add_argument("--numpy-seconds", type=float, default=150, help="min-char-rnn: stop after this much training (0: skip)")
    parser.add_argument("--numpy-eval", type=float, default=5, help="min-char-rnn: seconds between validations")
    args = parser.parse_args()
    start(args.threads)
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        ours = charrnn_curve(args.targets, args.val_every, args.max_seconds, shlex.split(args.train_args), tmp)
    theirs = numpy_curve(args.targets, args.numpy_seconds, args.numpy_eval) if args.numpy_seconds > 0 else []
    rows = []
    for target in args.targets:
        a, d = first_reaching(ours, target), first_reaching(theirs, target)
        if a is None:
            rows.append([target, f"> {ours[-1]['seconds']:.0f}", "-", "-"])
        elif not theirs:
            rows.append([target, f"{a:.1f}", "-", "-"])
        elif d is None:
            rows.append([target, f"{a:.1f}", f"> {theirs[-1]['seconds']:.0f}", f">= {theirs[-1]['seconds'] / a:.0f}"])
        else:
            rows.append([target, f"{a:.1f}", f"{d:.1f}", f"{d / a:.1f}"])
    print_table(["val loss (nats/char)", "charrnn default s", "NumPy min-char-rnn s", "NumPy / charrnn"], rows)
    print("\ncharrnn configs/default.yaml curve (training seconds, step, val loss):")
    print("  " + ", ".join(f"{p['seconds']:.1f}s/{p['step']}: {p['val_loss']:.3f}" for p in ours))
    if theirs:
        print(f"NumPy min-char-rnn curve (stopped after {args.numpy_seconds:.0f} s of training or at the last target):")
        print("  " + ", ".join(f"{p['seconds']:.0f}s/{p['step']}: {p['val_loss']:.3f}" for p in theirs))


if __name__ == "__main__":
    main()
