"""charrnn: min-char-rnn's tanh RNN with hand-written BPTT, trained by PyTorch Lightning.

``charrnn.load(CHECKPOINT)`` is the Python API (charrnn/api.py, docs/api.md). Importing the package is cheap:
Lightning is imported only by the training modules (module, data, callbacks, resume, runlock, summary, cli), so
sample.py starts fast; the API's modules (torch and NumPy) are imported at the first ``charrnn.load``.
"""


def load(path):
    """The model of a checkpoint (a ``.ckpt`` file or a run directory): see charrnn.api.Model."""
    from .api import load

    return load(path)
