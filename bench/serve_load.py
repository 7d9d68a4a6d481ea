"""Load on serve.py: concurrent clients generating, against one sample.py process on the same machine.

``python -m bench.serve_load [--clients 32] [--length 200] [--duration 60] [--requests 10000]
[--server-threads N] [--checkpoint CKPT]``

The model is a 1 x 256 LSTM with tinyshakespeare's vocabulary, randomly initialised (bench/sample_speed.py's; speed
does not depend on what the weights learned), unless --checkpoint names one. First the baseline: ``sample.py
--length 200000`` timed as a whole process and, less its start-up (``--length 0``), as generation alone. Then
serve.py on a free loopback port, and --clients threads, each with its own keep-alive connection, posting
``{"length": --length}`` to /generate back to back for --duration seconds: requests and characters per second,
p50 and p99 latency, errors, and the server's CPU time per character against sample.py's (robust to other jobs on
the machine, where rates are not). The server's memory (VmRSS) is read after a warm-up and again once --requests
requests have been served since (the load goes on past --duration until then). Whether batching sessions would
pay: the time per row of a layer's product, one row (as each session's character is computed now) against
--clients rows in one product. Ends with a one-line summary.
"""

import bench.threads  # noqa: F401, I001  (first: one BLAS thread here, in sample.py and in serve.py)

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from bench.common import ROOT
from bench.sample_speed import vocabulary
from charrnn import checkpoint
from charrnn.network import Architecture


def write_lstm(path: str, hidden: int = 256) -> None:
    vocab = vocabulary()
    arch = Architecture(len(vocab), hidden, "lstm")
    state = {"state_dict": arch.init_params(generator=torch.Generator().manual_seed(0))}
    checkpoint.write_metadata(state, arch, vocab, hidden_state=None)
    checkpoint.save_atomic(state, path)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} logical CPUs"


def wall(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command (the CPU time is robust to other jobs on a shared machine)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a running process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class Load:
    """Client threads posting generate requests until ``until()`` says stop; what each request took."""

    def __init__(self, host: str, port: int, length: int):
        self.host, self.port, self.body = host, port, json.dumps({"length": length}).encode()
        self.latencies, self.chars, self.errors, self.lock = [], 0, [], threading.Lock()

    def client(self, until) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not until():
            start = time.perf_counter()
            try:
                connection.request("POST", "/generate", self.body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                reply = response.read()
                ok = response.status == 200
                chars = len(json.loads(reply)["text"]) if ok else 0
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, reply, chars = False, repr(e).encode(), 0
                connection.close()
                connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            elapsed = time.perf_counter() - start
            with self.lock:
                if ok:
                    self.latencies.append(elapsed)
                    self.chars += chars
                else:
                    self.errors.append(reply[:200])
        connection.close()

    def run(self, clients: int, until) -> float:
        threads = [threading.Thread(target=self.client, args=(until,)) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)


def product_row_seconds(hidden: int, vocab: int, rows: int, seconds: float = 1.0) -> float:
    """Seconds per row of a 1-layer LSTM's per-character product ``[Whh | b; Why | by] @ [h; 1]``, (4H + V, H + 1)
    in float64 (NumPy, one thread), for ``rows`` states in one product."""
    W, X = np.random.rand(4 * hidden + vocab, hidden + 1), np.random.rand(hidden + 1, rows)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        W @ X
        n += 1
    return (time.perf_counter() - start) / n / rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--length", type=int, default=200, help="characters each request generates (default 200)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load measured (default 60)")
    parser.add_argument(
        "--requests", type=int, default=10_000, help="requests served between the two memory readings (default 10000)"
    )
    parser.add_argument("--server-threads", type=int, default=None, help="serve.py --threads (default: its default)")
    parser.add_argument("--baseline-length", type=int, default=200_000, help="sample.py --length of the baseline")
    parser.add_argument("--checkpoint", help="a checkpoint to serve instead of the random 1 x 256 LSTM")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or os.path.join(tmp, "lstm256.ckpt")
        if not args.checkpoint:
            write_lstm(ckpt)
        print(f"machine: {cpu_model()}; model: {ckpt}")

        sample = [sys.executable, "sample.py", ckpt, "--seed", "1", "--length"]
        wall(sample + ["0"])  # warm the file cache
        startup, startup_cpu = min(wall(sample + ["0"]) for _ in range(3))
        whole, whole_cpu = wall(sample + [str(args.baseline_length)])
        alone = args.baseline_length / (whole - startup)
        alone_cpu = args.baseline_length / (whole_cpu - startup_cpu)
        print(
            f"baseline: sample.py --length {args.baseline_length} {whole:.2f} s, {args.baseline_length / whole:,.0f} "
            f"chars/s as a whole process; start-up {startup:.2f} s; generation alone {alone:,.0f} chars/s, "
            f"{alone_cpu:,.0f} chars per CPU second"
        )

        flags = [] if args.server_threads is None else ["--threads", str(args.server_threads)]
        log = open(os.path.join(tmp, "serve.stderr"), "w+")
        proc = subprocess.Popen([sys.executable, "serve.py", ckpt, "--port", "0", *flags], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
        try:
            line = proc.stdout.readline()
            if not line.startswith("serving "):
                sys.exit(f"serve.py did not start: {line!r}")
            host, port = line.split()[-1].removeprefix("http://").rstrip("/").rsplit(":", 1)
            warm = Load(host, int(port), args.length)
            warm.run(args.clients, lambda: warm.requests >= 4 * args.clients)
            rss_before = rss_mb(proc.pid)

            load = Load(host, int(port), args.length)
            end, cpu_before = time.perf_counter() + args.duration, cpu_seconds(proc.pid)
            seconds = load.run(args.clients, lambda: time.perf_counter() >= end)
            server_cpu = cpu_seconds(proc.pid) - cpu_before
            measured = (load.requests, len(load.latencies), load.chars, list(load.latencies), len(load.errors))
            load.run(args.clients, lambda: load.requests >= args.requests)  # the rest of --requests, if any
            rss_after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.seek(0)
            stderr = log.read().replace("interrupted by SIGTERM\n", "")
        if stderr:
            print(f"serve.py's stderr:\n{stderr[-3000:]}")
        net = checkpoint.load_network(ckpt)
        one, many = (product_row_seconds(net.arch.hidden_size, len(net.vocab), rows) for rows in (1, args.clients))
    requests, served, chars, latencies, errors = measured
    rate = chars / seconds
    print(
        f"load: {args.clients} clients x {args.length} characters for {seconds:.1f} s: {served / seconds:,.1f} "
        f"requests/s, {rate:,.0f} chars/s, latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, errors {errors} of {requests}"
    )
    if load.errors:
        print(f"first error: {load.errors[0]!r}")
    print(
        f"CPU: the server used {server_cpu / seconds:.2f} cores, {chars / server_cpu:,.0f} chars per CPU second "
        f"({chars / server_cpu / alone_cpu:.2f}x sample.py's; the clients' own CPU not counted)"
    )
    print(
        f"memory: server RSS {rss_before:.1f} MB after warm-up, {rss_after:.1f} MB after {load.requests:,} more "
        f"requests ({rss_after - rss_before:+.1f} MB)"
    )
    print(
        f"batching: a layer's product (NumPy, float64) {one * 1e6:.1f} us per row alone, {many * 1e6:.1f} us per "
        f"row with {args.clients} rows in one product ({one / many:.1f}x less); one sample.py character, all "
        f"included, {1e6 / alone_cpu:.1f} us of CPU"
    )
    print(
        f"summary: {rate:,.0f} chars/s served = {rate / alone:.2f}x one sample.py's generation ({alone:,.0f}; "
        f"{rate / (args.baseline_length / whole):.2f}x its whole process), {served / seconds:,.1f} req/s, "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
        f"errors {len(load.errors)}, RSS {rss_before:.1f} -> {rss_after:.1f} MB"
    )


if __name__ == "__main__":
    main()
