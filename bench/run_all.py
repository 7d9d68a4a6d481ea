"""Every benchmark, one after the other (``make bench``): throughput, time to quality, data scale, memory.

    python bench/run_all.py [--threads 1] [--quick]

Each one prints its own table; see BENCHMARKS.md for the numbers of record and what they mean. ``--quick`` runs a
smaller throughput grid and caps min-char-rnn's time-to-quality run lower (a smoke run of the scripts).
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
        ("time_to_quality.py", threads + (["--numpy-seconds", "20", "--max-seconds", "30"] if args.quick else [])),
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
