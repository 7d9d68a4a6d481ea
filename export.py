"""Export a checkpoint written by train.py for use outside charrnn: ONNX, TorchScript, or a page that samples.

``python export.py CHECKPOINT --format onnx|torchscript|html --out FILE``

``onnx`` and ``torchscript``: the network as PyTorch's standard ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and
``nn.Linear``, taking input ids (B, T) int64 and a state (B, L * K, H), returning logits (B, T, V) and the new
state; the vocabulary travels inside the file. ``html``: one self-contained page (weights inside, nothing fetched)
that generates text in the browser. An existing ``--out`` is replaced only if export.py wrote it. See docs/export.md.
"""

import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

from charrnn import checkpoint, files
from charrnn.command import ArgumentParser, exit_code
from charrnn.export import FORMATS, export, written_by_charrnn


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", metavar="FILE", required=True,
                   help="the file to write; an existing file is replaced only if export.py wrote it")  # fmt: skip
    return p


def run(argv) -> None:
    args = _parser().parse_args(argv)
    path = checkpoint.resolve(args.checkpoint)
    net = checkpoint.load_network(path)
    files.check_out(args.out, written_by_charrnn, "export.py")
    data = export(net.arch, net.params, net.vocab, args.format, title=path)
    files.write_out(args.out, data)
    print(f"wrote {args.out}: {args.format}, {len(data)} bytes")


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main))
