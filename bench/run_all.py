"""Every benchmark, one after the other (``make bench``): throughput, time to quality, data scale, memory, every
cell's training speed, the LSTM's per-step products, sampling speed and GPU throughput (which says so and measures
nothing on a machine without CUDA).

    python -m bench.run_all [--threads 1] [--quick]

Each one prints its own table; see BENCHMARKS.md for the numbers of record and what they mean. Time to quality is
shortened to fit a few minutes: charrnn trains for 60 s and NumPy min-char-rnn for 150 s, which gives a bound for
min-char-rnn's time to 2.0 nats/char (it takes about 465 s). ``--quick`` is a smoke run of every script.
"""

import argparse
import subprocess
import sys
import time

from bench.common import ROOT


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    threads = ["--threads", str(args.threads)]
    quick = args.quick
    runs = [
        ("throughput", threads + (["--hidden", "100", "--batch", "1", "32", "--rounds", "1"] if quick else [])),
        # configs/default.yaml's size
        ("throughput", threads + ["--hidden", "256", "--batch", "6"] + (["--rounds", "1"] if quick else [])),
        # min-char-rnn is capped at 150 s here (a bound); BENCHMARKS.md's run of record gives it 1200 s.
        (
            "time_to_quality",
            threads + ["--max-seconds", "30" if quick else "60", "--numpy-seconds", "20" if quick else "150"],
        ),
        ("data_scale", ["--mb", "10"] if quick else []),
        ("memory", ["--max-steps", "50"] if quick else []),
        ("cell_training", threads + (["--rounds", "1", "--seconds", "1"] if quick else [])),
        ("step_products", ["--rounds", "2", "--steps", "2"] if quick else []),
        ("sample_speed", ["--repeats", "2", "--chars", "20000"] if quick else []),
        ("gpu_throughput", ["--steps", "20"] if quick else []),
    ]
    started = time.perf_counter()
    for script, script_args in runs:
        print(f"\n## python -m bench.{script} {' '.join(script_args)}\n", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"bench.{script}", *script_args], cwd=ROOT, check=True)
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
