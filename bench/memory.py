"""Memory: peak RSS of a ``train.py`` run on tiny-shakespeare with the default config.

    python -m bench.memory [--max-steps 300]

Runs ``python train.py --data.path tinyshakespeare.txt --trainer.max_steps N`` (configs/default.yaml, including
validation, TensorBoard logging and the checkpoint) and reads the child's peak RSS from the kernel
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). For scale, the same for a process that only imports torch and
Lightning.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import resource
import subprocess
import tempfile

from bench.common import PYTHON, machine_line, print_table, run_train, shakespeare_path


def peak_rss_mb(run) -> float:
    """Peak RSS (MB) of the child process started by ``run()``, run in a fresh grandchild so children don't mix."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        run()
        os.write(write, str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        kib = int(f.read() or 0)
    os.waitpid(pid, 0)
    return kib / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=300)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        imports = peak_rss_mb(lambda: subprocess.run([PYTHON, "-c", "import torch, lightning"], check=True))
        train_args = ["--data.path", shakespeare_path(), "--trainer.max_steps", str(args.max_steps),
                      "--trainer.default_root_dir", tmp]  # fmt: skip
        train = peak_rss_mb(lambda: run_train(train_args, os.path.join(tmp, "train.log")))
    print_table(
        ["process", "peak RSS MB"],
        [[f"python train.py --data.path tinyshakespeare.txt --trainer.max_steps {args.max_steps}", f"{train:.0f}"],
         ["python -c 'import torch, lightning' (for scale)", f"{imports:.0f}"]],
    )  # fmt: skip


if __name__ == "__main__":
    main()
