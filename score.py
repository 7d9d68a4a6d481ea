"""How well a checkpoint predicts text files: nats and bits per character, perplexity.

``python score.py CHECKPOINT FILE... [--per-line] [--top N] [--json [--log-probs]] [--streams S]``

Every character after a file's first is predicted from the text before it, from the zero state, as validation
does (the first character is context, read but not scored). Characters not in the model's vocabulary are not
scored and are read as a zero input vector (layer 0's input is then its bias alone); they are counted as unknown.
With ``--streams 64`` a run's held-out text scores the ``val/loss`` the run logged. See docs/api.md.
"""

import json
import math
import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

from charrnn import api
from charrnn.command import ArgumentParser, exit_code
from charrnn.errors import UsageError
from charrnn.text import read_text

SHOWN = 100  # characters of a line shown by --per-line
TOP = 10  # lines shown by --per-line


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    p.add_argument("files", metavar="FILE", nargs="+",
                   help="UTF-8 text files, read as training reads its text. A file's first character is context, "
                        "not scored; characters not in the model's vocabulary are not scored either, and are read "
                        "as a zero input vector (layer 0's input is then its bias alone)")  # fmt: skip
    p.add_argument("--per-line", action="store_true",
                   help="also rank each file's lines by mean surprise (-log p per scored character, the newline "
                        "excluded), most surprising first")  # fmt: skip
    p.add_argument("--top", metavar="N", type=int, default=None, help=f"lines shown by --per-line (default {TOP})")
    p.add_argument("--json", action="store_true", help="one JSON object: every file's numbers and the total")
    p.add_argument("--log-probs", action="store_true",
                   help="with --json, each file's per-character natural log-probabilities too, one for each "
                        "character after its first (null where not in the vocabulary)")  # fmt: skip
    p.add_argument(
        "--streams",
        metavar="S",
        type=int,
        default=1,
        help="score S contiguous pieces in parallel, each from the zero state, laid out as validation "
        "lays out its text (faster; 64 gives a run's val/loss on its held-out text; default 1)",
    )
    return p


def _lines(text: str, log_probs, top: int) -> list[dict]:
    """The ``top`` lines with the highest mean surprise; a line's characters exclude its newline."""
    ranked, start = [], 0
    for number, line in enumerate(text.split("\n"), 1):
        # The line is text[start:start + len(line)]; log_probs[i - 1] is text[i]'s (text[0] is not scored).
        scored = [-x for x in log_probs[max(start, 1) - 1 : start + len(line) - 1] if not math.isnan(x)]
        if scored:
            ranked.append({"line": number, "nats": sum(scored) / len(scored), "chars": len(scored), "text": line})
        start += len(line) + 1
    ranked.sort(key=lambda row: -row["nats"])
    return ranked[:top]


def _numbers(chars: int, nats: float, unknown: int, unknown_chars) -> dict:
    return {"chars": chars, "nats": nats, "bits": nats / math.log(2), "perplexity": math.exp(nats),
            "unknown": unknown, "unknown_chars": "".join(sorted(unknown_chars))}  # fmt: skip


def _say(name: str, n: dict) -> str:
    unknown = f", {n['unknown']:,} unknown (not scored): {n['unknown_chars']!r}" if n["unknown"] else ", 0 unknown"
    return (f"{name}: {n['nats']:.4f} nats/char, {n['bits']:.4f} bits/char, perplexity {n['perplexity']:.3f}, "
            f"{n['chars']:,} characters scored{unknown}")  # fmt: skip


def run(argv) -> None:
    args = _parser().parse_args(argv)
    if args.top is not None and not args.per_line:
        raise UsageError("--top is the number of lines --per-line shows; add --per-line")
    top = TOP if args.top is None else args.top
    if top < 1:
        raise UsageError(f"--top must be 1 or more, got {top}")
    if args.log_probs and not args.json:
        raise UsageError("--log-probs is part of --json's output; add --json")
    if args.streams < 1:
        raise UsageError(f"--streams must be 1 or more, got {args.streams}")
    model = api.load(args.checkpoint)
    texts = []
    for path in args.files:  # every file read and checked before anything is printed
        text = read_text(path, "text file")
        if len(text) < 2:
            raise UsageError(f"text file {path} is {'empty' if not text else 'one character'}; "
                             "the first character is context, so scoring needs at least 2")  # fmt: skip
        texts.append(text)
    files, total = [], {"chars": 0, "nats_sum": 0.0, "unknown": 0, "unknown_chars": set()}
    for path, text in zip(args.files, texts):
        try:
            score = model.score(text, args.streams)
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
        row = {"file": path, **_numbers(score.chars, score.nats, score.unknown, score.unknown_chars)}
        if args.per_line:
            row["lines"] = _lines(text, score.log_probs, top)
        if args.log_probs:
            row["log_probs"] = [None if math.isnan(x) else x for x in score.log_probs.tolist()]
        files.append(row)
        total["chars"] += score.chars
        total["nats_sum"] += score.nats * score.chars
        total["unknown"] += score.unknown
        total["unknown_chars"] |= score.unknown_chars
    summed = _numbers(total["chars"], total["nats_sum"] / total["chars"], total["unknown"], total["unknown_chars"])
    if args.json:
        print(json.dumps({"checkpoint": model.path, "files": files, "total": summed}, ensure_ascii=False))
        return
    for row in files:
        print(_say(row["file"], row))
        for line in row.get("lines", []):
            shown = line["text"] if len(line["text"]) <= SHOWN else line["text"][:SHOWN] + "..."
            print(f"  {line['nats']:7.3f} nats/char  line {line['line']}: {shown}")
    if len(files) > 1:
        print(_say("total", summed))


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main, reader_may_leave=True))
