"""Every benchmark, one after the other (``make bench``): throughput, time to quality, data scale, memory.

    python bench/run_all.py [--threads 1] [--quick]

Each one prints its own table; see BENCHMARKS.md for the numbers of record and what they mean. Time to quality is
shortened to fit a few minutes: charrnn trains for 60 s and NumPy min-char-rnn for 150 s, which gives a bound for
min-char-rnn's time to 2.0 nats/char (it takes about 465 s). ``--quick`` is a smoke run of every script.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    threads = ["--threads", str(args.threads)]
    runs = [
        ("throughput.py", threads + (["--hidden", "100", "--batch", "1", "32", "--rounds", "1"] if args.quick else [])),
        ("throughput.py", threads + ["--hidden", "128", "--batch", "4"]),  # configs/default.yaml's shape
        # min-char-rnn is capped at 150 s here (a bound); BENCHMARKS.md's run of record gives it 1200 s.
        ("time_to_quality.py", threads + ["--max-seconds", "30" if args.quick else "60",
                                          "--numpy-seconds", "20" if args.quick else "150"]),
        ("data_scale.py", ["--mb", "10"] if args.quick else []),
        ("memory.py", ["--max-steps", "50"] if args.quick else []),
    ]
    started = time.perf_counter()
    for script, script_args in runs:
        print(f"\n## {script} {' '.join(script_args)}\n", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(HERE, script), *script_args], check=True)
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
