"""Generate text from a checkpoint written by train.py.

``python sample.py CHECKPOINT [--length N] [--prime TEXT | --prime-file FILE] [--temperature T] [--top-k K] [--greedy]
[--seed S] [--stop STR]... [--num-samples N] [--beam K] [--json] [--device cpu|cuda|auto] [--half] [--verbose]``

Prints the prime text, then ``--length`` new characters as UTF-8 (fewer when a ``--stop`` string ends the sample),
streamed while they are generated. A thin layer over the Python API (charrnn/api.py); docs/sampling-control.md
describes the flags. Imports torch and NumPy but not Lightning, so it starts about as fast as ``import torch``.
"""

import json
import re
import secrets
import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

import torch

from charrnn import api
from charrnn.cells import native
from charrnn.command import ArgumentParser, exit_code
from charrnn.errors import UsageError
from charrnn.sampling import encode_prime
from charrnn.text import read_text

# --device auto uses CUDA from this hidden size up. The CPU's product costs ~13 us per character at 256 and
# ~170 us at 1024 (float64, measured); a GPU pays a host round trip of some tens of us per character.
AUTO_CUDA_HIDDEN = 1024
SEPARATOR = "\x1e"  # ASCII's record separator, alone on a line between --num-samples samples
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt\\]|.?)", re.DOTALL)
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    p.add_argument(
        "--length",
        metavar="N",
        type=int,
        default=1000,
        help="new characters after the prime, at most (default 1000; 0 prints the prime only)",
    )
    prime = p.add_mutually_exclusive_group()
    prime.add_argument("--prime", metavar="TEXT", default="", help="text fed through the network first, and printed")
    prime.add_argument(
        "--prime-file",
        metavar="FILE",
        help="the prime from a UTF-8 file, read as training reads text (BOM dropped, CRLF as LF)",
    )
    p.add_argument(
        "--temperature", metavar="T", type=float, default=None, help="divides the logits (default 1; 0 is --greedy)"
    )
    p.add_argument("--top-k", metavar="K", type=int, default=None, help="draw only among the K most likely characters")
    p.add_argument("--greedy", action="store_true", help="always the most likely character")
    p.add_argument(
        "--seed",
        metavar="S",
        type=int,
        default=None,
        help="same checkpoint, flags and seed: the same text (sample i of --num-samples: S + i)",
    )
    p.add_argument("--stop", metavar="STR", action="append", default=[],
                   help="end a sample right after STR (repeatable; the first to occur wins; it may start in the "
                        "prime). Backslash escapes \\n \\t \\r \\\\ \\xNN \\uNNNN \\UNNNNNNNN are "
                        "decoded: '\\n\\n' is a blank line")  # fmt: skip
    p.add_argument("--num-samples", metavar="N", type=int, default=1,
                   help="N samples, each from the prime, separated by a line holding only the ASCII record "
                        "separator \\x1e (with --json: one line each)")  # fmt: skip
    p.add_argument("--beam", metavar="K", type=int, default=None,
                   help="beam search of width K for the most likely --length characters instead of sampling "
                        "(deterministic: no --temperature, --top-k, --greedy, --seed, --stop, --half)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help='one JSON object per sample and line: {"text": the new text, "log_prob": its natural '
                        'log-probability given the prime, "nats_per_char", "seed"}')  # fmt: skip
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help=f"where the network runs (default auto: cuda from hidden size {AUTO_CUDA_HIDDEN} if available)",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="on the CPU, weights in float16 and float32 sums: 1.5-3x faster, each probability within "
        "about 0.01 of the exact one (default: exact, float64 sums)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="say on stderr which loop generates (native.c's or NumPy's), in which precision, and why",
    )
    return p


def decode_escapes(text: str) -> str:
    """``--stop``'s backslash escapes decoded; any other backslash is a UsageError."""

    def one(match):
        code = match.group(1)
        if code in _SIMPLE:
            return _SIMPLE[code]
        if code[:1] in ("x", "u", "U") and len(code) > 1:
            point = int(code[1:], 16)
            if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF:
                return chr(point)
            raise UsageError(f"--stop {text!r}: \\{code} is not a Unicode character")
        raise UsageError(f"--stop {text!r}: unknown escape \\{code}; use \\n, \\t, \\r, \\\\, \\xNN, \\uNNNN "
                         "or \\UNNNNNNNN")  # fmt: skip

    return _ESCAPE.sub(one, text)


def _check(args) -> None:
    temperature = 1.0 if args.temperature is None else args.temperature
    api.check_sampling(args.length, temperature, args.top_k, args.seed)
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be 1 or more, got {args.num_samples}")
    if args.half and args.device == "cuda":
        raise UsageError("--half is for the CPU; use --device cpu, or drop --half")
    if args.beam is not None:
        if args.beam < 1:
            raise UsageError(f"--beam must be 1 or more, got {args.beam}")
        given = {"--temperature": args.temperature is not None, "--top-k": args.top_k is not None,
                 "--greedy": args.greedy, "--seed": args.seed is not None, "--stop": bool(args.stop),
                 "--half": args.half, "--num-samples": args.num_samples > 1}  # fmt: skip
        for flag, present in given.items():
            if present:
                raise UsageError(f"--beam is deterministic and finds one text: drop {flag}")
        if args.device == "cuda":
            raise UsageError("--beam runs on the CPU; drop --device cuda")


def _device(choice: str, hidden_size: int, half: bool):
    """``None`` (NumPy on this CPU) or a torch CUDA device for the per-character matrix-vector product (``auto``
    stays on the CPU with ``--half``)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    large = hidden_size >= AUTO_CUDA_HIDDEN and not half
    use_cuda = choice == "cuda" or (choice == "auto" and large and torch.cuda.is_available())
    return "cuda" if use_cuda else None


def _json_line(out, model, prime: str, text: str, log_prob=None, seed=None) -> None:
    log_prob = model.log_prob(text, prime) if log_prob is None else log_prob
    nats = -log_prob / len(text) if text else None
    record = {"text": text, "log_prob": log_prob, "nats_per_char": nats, "seed": seed}
    out.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    out.flush()


def run(argv) -> None:
    args = _parser().parse_args(argv)
    _check(args)
    stops = [decode_escapes(s) for s in args.stop]
    model = api.load(args.checkpoint)
    prime = args.prime if args.prime_file is None else read_text(args.prime_file, "--prime-file")
    source = "--prime" if args.prime_file is None else f"--prime-file {args.prime_file}"
    encode_prime(model.vocab, prime, source)  # its characters checked before anything is printed
    if args.num_samples > 1 and not args.json and SEPARATOR in model.vocab:
        raise UsageError(
            "the model's vocabulary holds \\x1e, the line that separates --num-samples samples; use --json"
        )
    out = sys.stdout.buffer
    if args.beam is not None:
        found = model.beam(prime, args.length, args.beam)
        if args.json:
            return _json_line(out, model, prime, found.text, found.log_prob)
        out.write((prime + found.text).encode())
        return out.flush()
    device = _device(args.device, model.arch.hidden_size, args.half)
    if args.half and not native.half_available():
        print("sample.py: --half needs charrnn's C kernels (a C compiler, an x86-64 CPU with AVX2, FMA and F16C, "
              "CHARRNN_NATIVE not 0); sampling exactly instead", file=sys.stderr)  # fmt: skip
    temperature = 0.0 if args.greedy else 1.0 if args.temperature is None else args.temperature
    for i in range(args.num_samples):
        seed = args.seed + i if args.seed is not None else secrets.randbits(63) if args.json else None
        session = model.session(seed, device, args.half)
        session.feed(prime)
        chunks = session.stream(args.length, temperature, args.top_k, stops)
        if args.verbose and i == 0:
            print(f"sampling: {session.path}", file=sys.stderr)
        if args.json:
            _json_line(out, model, prime, "".join(chunks), seed=seed)
            continue
        if i:
            out.write(f"\n{SEPARATOR}\n".encode())
        out.write(prime.encode())
        out.flush()
        for chunk in chunks:
            out.write(chunk.encode())
            out.flush()


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main, reader_may_leave=True))  # | head: the reader has what it wanted
