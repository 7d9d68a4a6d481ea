"""CPU seconds of one ``network.train_step`` per cell, for comparing two checkouts of charrnn on a busy machine.

``python -m bench.train_step [--charrnn DIR]``, alternately with and without ``--charrnn`` (another checkout, whose
package is then the one measured): one torch thread, the median over many steps of the
process's CPU time (not wall time), which other processes on the machine disturb far less. Shapes are the presets':
LSTM and GRU 256 at 32 x 50 (configs/lstm.yaml, gru.yaml), the tanh RNN 256 at 6 x 25 (default.yaml), LSTM 2 x 512.
"""

import os
import statistics
import sys
import time

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load
if "--charrnn" in sys.argv:  # measure another checkout's package: it must be found before this one's
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--charrnn") + 1]))

import torch  # noqa: E402

from bench.common import machine_line  # noqa: E402
from charrnn import network  # noqa: E402
from charrnn.optim import Adagrad  # noqa: E402

SHAPES = (("lstm", 256, 1, 32, 50, 40), ("gru", 256, 1, 32, 50, 40), ("rnn", 256, 1, 6, 25, 200),
          ("lstm", 512, 2, 32, 50, 6))  # fmt: skip


def cpu_ms(cell: str, hidden: int, layers: int, B: int, T: int, steps: int) -> float:
    arch = network.Architecture(65, hidden, cell, layers)
    params = {k: torch.nn.Parameter(v) for k, v in arch.init_params(torch.Generator().manual_seed(0)).items()}
    optimizer, g = Adagrad(params.values(), lr=0.01), torch.Generator().manual_seed(1)
    x, y, h = torch.randint(65, (B, T), generator=g), torch.randint(65, (B, T), generator=g), arch.zero_state(B)
    for _ in range(3):  # warm-up: the C library, oneDNN's packing, the allocator
        network.train_step(arch, params, optimizer, x, y, h)
    times = []
    for _ in range(steps):
        start = time.process_time()
        network.train_step(arch, params, optimizer, x, y, h)
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    import charrnn

    print(machine_line(), " charrnn from", os.path.dirname(os.path.dirname(charrnn.__file__)))
    print("  ".join(f"{c} {L}x{H}: {cpu_ms(c, H, L, B, T, n):.2f} ms" for c, H, L, B, T, n in SHAPES))


if __name__ == "__main__":
    main()
