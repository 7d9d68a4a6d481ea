"""charrnn: min-char-rnn's tanh RNN with hand-written BPTT, trained by PyTorch Lightning.

Importing the package is cheap: Lightning is imported only by the training modules (module, data, callbacks,
resume, runlock, summary, cli), so sample.py starts fast.
"""
