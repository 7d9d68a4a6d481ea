"""See inside a trained network: one self-contained HTML page of its activations, feature units and surprise.

``python visualize.py CHECKPOINT|RUN_DIR [--text FILE | --prime TEXT] [--length N] [--seed S] [--out FILE.html]``

The page shows a text with each character coloured by a chosen unit's activation (``FILE.html#unit=N`` or
``#group=NAME&unit=N`` opens one), the units that best follow simple features of the text, and how surprised the
model was by each character. It has inline CSS and script only and fetches nothing, so it opens offline from disk.
"""

import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

from charrnn import api, files
from charrnn.command import ArgumentParser, exit_code
from charrnn.errors import UsageError
from charrnn.sampling import encode_prime, generate
from charrnn.text import read_start
from charrnn.visualize import GENERATOR, page, trace

MAX_CHARS = 5000  # more makes a page of several megabytes per hundred units that browsers colour slowly
DEFAULT_OUT = "visualize.html"


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="show the start of this UTF-8 text file")
    source.add_argument(
        "--prime",
        metavar="TEXT",
        default="",
        help="show this text followed by the model's continuation (default: its own sample)",
    )
    p.add_argument(
        "--length",
        metavar="N",
        type=int,
        default=2000,
        help=f"characters of --text, or generated after --prime (default 2000; at most {MAX_CHARS} shown)",
    )
    p.add_argument("--seed", metavar="S", type=int, default=0, help="seed of the generated text (default 0)")
    p.add_argument("--out", metavar="FILE", default=DEFAULT_OUT,
                   help=f"the page to write (default {DEFAULT_OUT}); an existing file is replaced only if "
                        "visualize.py wrote it")  # fmt: skip
    return p


def _check(args) -> None:
    if args.length < 1:
        raise UsageError(f"--length must be 1 or more, got {args.length}")
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")


def _ours(path: str) -> bool:
    """Whether ``path`` is a page visualize.py wrote (its generator tag is in the first kilobyte)."""
    with open(path, "rb") as f:
        return f'<meta name="generator" content="{GENERATOR}">'.encode() in f.read(1024)


def _read_text(path: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` characters of --text as training reads it, and whether it has more."""
    files.regular_file(path, "--text")
    text, more = read_start(path, limit, "--text")
    if not text:
        raise UsageError(f"--text {path} is empty")
    return text, more


def _text_ids(args, net) -> list[int]:
    """The characters the page shows, as ids: the start of --text, or --prime and the model's continuation."""
    vocab = net.vocab
    limit = min(args.length, MAX_CHARS)
    if args.length > MAX_CHARS:
        print(f"note: --length {args.length} is more than a page shows; it shows {MAX_CHARS} characters",
              file=sys.stderr)  # fmt: skip
    if args.text is not None:
        text, cut = _read_text(args.text, limit)
        missing = sorted(set(text) - set(vocab))
        if missing:
            raise UsageError(
                f"--text {args.text} has characters not in the model's vocabulary: {''.join(missing)!r}; "
                "use a text of the characters it was trained on"
            )
        if cut:
            print(f"note: showing the first {len(text)} characters of {args.text}; the rest is cut", file=sys.stderr)
        return encode_prime(vocab, text)
    prime_ids = encode_prime(vocab, args.prime)
    if len(prime_ids) >= MAX_CHARS:
        print(f"note: showing the first {MAX_CHARS} characters of --prime; the rest is cut", file=sys.stderr)
        return prime_ids[:MAX_CHARS]
    new = min(args.length, MAX_CHARS - len(prime_ids))
    return prime_ids + list(generate(net.arch.cell, net.params, new, prime_ids=prime_ids, seed=args.seed))


def run(argv) -> None:
    args = _parser().parse_args(argv)
    _check(args)
    model = api.load(args.checkpoint)
    files.check_out(args.out, _ours, "visualize.py")
    ids = _text_ids(args, model)
    text = "".join(model.vocab[i] for i in ids)
    log_probs = model.score(text).log_probs if len(text) > 1 else []  # the first character is not predicted
    html = page(trace(model.arch, model.params, ids), ids, model.vocab, model.path, log_probs)
    files.write_out(args.out, html.encode())
    print(f"wrote {args.out}: {len(ids)} characters; open it in a browser")


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main))
