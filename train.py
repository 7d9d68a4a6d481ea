"""Train a character-level RNN: ``python train.py --help`` lists every flag; see README.md."""

import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py
    from charrnn.cli import main

    sys.exit(entry.run(main))
