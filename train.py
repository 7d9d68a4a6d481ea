"""Train a character-level RNN: ``python train.py --help`` lists every flag; see README.md."""

import sys

from charrnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
