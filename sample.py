"""Generate text from a checkpoint written by train.py.

``python sample.py CHECKPOINT [--length N] [--prime TEXT] [--temperature T] [--top-k K] [--greedy] [--seed S]
[--device cpu|cuda|auto] [--half] [--verbose]``

Prints the prime text, then exactly ``--length`` new characters as UTF-8, streamed while they are generated.
Imports torch and NumPy but not Lightning, so it starts about as fast as ``import torch``.
"""

import math
import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

import torch

from charrnn import checkpoint
from charrnn.cells import native
from charrnn.command import ArgumentParser, exit_code
from charrnn.errors import UsageError
from charrnn.sampling import Sampler, encode_prime

FLUSH_EVERY = 64  # characters per write: streamed to a reader, yet few enough system calls to cost nothing
# --device auto uses CUDA from this hidden size up. The CPU's product costs ~13 us per character at 256 and
# ~170 us at 1024 (float64, measured); a GPU pays a host round trip of some tens of us per character.
AUTO_CUDA_HIDDEN = 1024


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    p.add_argument("--length", metavar="N", type=int, default=1000,
                   help="new characters after the prime (default 1000; 0 prints the prime only)")
    p.add_argument("--prime", metavar="TEXT", default="", help="text fed through the network first, and printed")
    p.add_argument("--temperature", metavar="T", type=float, default=1.0,
                   help="divides the logits (default 1; 0 is --greedy)")
    p.add_argument("--top-k", metavar="K", type=int, default=None, help="draw only among the K most likely characters")
    p.add_argument("--greedy", action="store_true", help="always the most likely character")
    p.add_argument("--seed", metavar="S", type=int, default=None, help="same checkpoint, flags and seed: the same text")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help=f"where the network runs (default auto: cuda from hidden size {AUTO_CUDA_HIDDEN} if available)")
    p.add_argument("--half", action="store_true",
                   help="on the CPU, weights in float16 and float32 sums: 1.5-3x faster, each probability within "
                        "about 0.01 of the exact one (default: exact, float64 sums)")
    p.add_argument("--verbose", action="store_true",
                   help="say on stderr which loop generates (native.c's or NumPy's), in which precision, and why")
    return p


def _check(args) -> None:
    if args.length < 0:
        raise UsageError(f"--length must be 0 or more, got {args.length}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 means greedy), got {args.temperature}")
    if args.temperature > 0 and not math.isfinite(1 / args.temperature):
        raise UsageError(f"--temperature {args.temperature} is too small to divide the logits by; use 0 for greedy")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be 1 or more, got {args.top_k}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    if args.half and args.device == "cuda":
        raise UsageError("--half is for the CPU; use --device cpu, or drop --half")


def _device(choice: str, hidden_size: int, half: bool):
    """``None`` (NumPy on this CPU) or a torch CUDA device for the per-character matrix-vector product (``auto``
    stays on the CPU with ``--half``)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    large = hidden_size >= AUTO_CUDA_HIDDEN and not half
    use_cuda = choice == "cuda" or (choice == "auto" and large and torch.cuda.is_available())
    return "cuda" if use_cuda else None


def _stream(out, vocab: list[str], prime: str, ids) -> None:
    out.write(prime.encode())
    out.flush()
    chunk = []
    for x in ids:
        chunk.append(vocab[x])
        if len(chunk) == FLUSH_EVERY:
            out.write("".join(chunk).encode())
            out.flush()
            chunk.clear()
    out.write("".join(chunk).encode())
    out.flush()


def run(argv) -> None:
    args = _parser().parse_args(argv)
    _check(args)
    net = checkpoint.load_network(args.checkpoint)
    prime_ids = encode_prime(net.vocab, args.prime)
    temperature = 0.0 if args.greedy else args.temperature
    device = _device(args.device, net.arch.hidden_size, args.half)
    if args.half and not native.half_available():
        print("sample.py: --half needs charrnn's C kernels (a C compiler, an x86-64 CPU with AVX2, FMA and F16C, "
              "CHARRNN_NATIVE not 0); sampling exactly instead", file=sys.stderr)  # fmt: skip
    sampler = Sampler(net.arch.cell, net.params, temperature=temperature, top_k=args.top_k, seed=args.seed,
                      device=device, half=args.half)  # fmt: skip
    if args.verbose:
        print(f"sampling: {sampler.path}", file=sys.stderr)
    _stream(sys.stdout.buffer, net.vocab, args.prime, sampler.generate(args.length, prime_ids))


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main, reader_may_leave=True))  # | head: the reader has what it wanted
