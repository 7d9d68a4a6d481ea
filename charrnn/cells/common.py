"""What more than one cell uses: the gated cells' initialisation, the fast tanh, and the plain torch products that
the reference loops take by default (charrnn/cells/fast.py passes oneDNN's or native.c's instead)."""

import torch


def init_weight(rows: int, cols: int, hidden_size: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform in (-1/sqrt(H), 1/sqrt(H)), PyTorch's choice for nn.LSTM and nn.GRU: the pre-activations' scale stays
    independent of H (char-rnn's fixed (-0.08, 0.08) is that of H ~ 150 and grows relatively too large at 512)."""
    bound = hidden_size**-0.5
    return (torch.rand(rows, cols, generator=generator, dtype=dtype) * 2 - 1) * bound


def tanh(x: torch.Tensor, out: torch.Tensor, minus_one: torch.Tensor) -> torch.Tensor:
    """tanh(x) into ``out`` (which may be ``x``) as 2 sigmoid(2x) - 1: torch's CPU tanh kernel costs about five times
    its sigmoid, and every gated step runs one or two tanh on its critical path. ``minus_one`` is a 0-d tensor of
    x's dtype (a Python number would be converted to a tensor at every call)."""
    torch.add(x, x, out=out).sigmoid_()
    return torch.add(minus_one, out, alpha=2, out=out)


def weight_product(W: torch.Tensor, rows: int):
    """``(x, add=None) -> x @ W^T (+ add)``, a new tensor: the recurrent product of a step (``rows`` is unused here;
    native.weight_product, the fast one, packs W for products of that many rows)."""
    W_t = W.t()
    return lambda x, add=None: torch.mm(x, W_t) if add is None else torch.addmm(add, x, W_t)


def gradient_product(D: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``D^T @ X``: a weight's gradient from the window's rows (T * B, out) and (T * B, in)."""
    return D.t() @ X
