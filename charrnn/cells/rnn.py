"""One layer of min-char-rnn's tanh RNN: ``h_t = tanh(x_t Wxh^T + bh + h_{t-1} Whh^T)``.

A layer sees its input only as ``xw``, the input projection of all T steps (computed by charrnn/stack.py), so
the loop over time holds just ``h @ Whh^T`` and the tanh forward, ``dpre @ Whh`` and one multiply backward.
The operations are those of charrnn's earlier single-layer model in the same order, so the one-layer network
trains bit-identically to it.
"""

import numpy as np
import torch

GATES = 1  # Wxh is (GATES * H, in)
NUM_STATES = 1  # h
SIGMOID_GATES = 0  # the first gates that are sigmoids
TORCH_MODULE = "RNN"  # the torch.nn class that computes this layer (export.py), its weights from torch_weights
# The layer's step in export.py's page (JavaScript): h from inp (the input pre-activation, bh included) and rec (Whh h).
JS_STEP = "for (let j = 0; j < H; j++) h[j] = Math.tanh(inp[j] + rec[j]);"
C_GENERATOR = None  # no native.c sampling loop: generation runs in NumPy


def init_weight(rows: int, cols: int, hidden_size: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    """min-char-rnn's ``randn * 0.01`` (also the output layer's)."""
    return torch.randn(rows, cols, generator=generator, dtype=dtype) * 0.01


def layer_shapes(in_size: int, hidden_size: int) -> dict:
    H = hidden_size
    return {"Wxh": (H, in_size), "Whh": (H, H), "bh": (H, 1)}


def init_layer(in_size: int, hidden_size: int, generator=None, dtype=torch.float32) -> dict:
    H = hidden_size
    return {
        "Wxh": init_weight(H, in_size, H, generator, dtype),
        "Whh": init_weight(H, H, H, generator, dtype),
        "bh": torch.zeros(H, 1, dtype=dtype),
    }


def forward(p: dict, xw: torch.Tensor, state: torch.Tensor):
    """Run the layer over ``xw`` (T, B, H) from ``state`` (B, 1, H); return ``(acts, new_state)``.

    ``acts["h"]`` is (T + 1, B, H) with the starting state first; ``xw`` is overwritten.
    """
    T, B, H = xw.shape
    Whh_t = p["Whh"].t()  # (H, H)
    hs = torch.empty((T + 1, B, H), dtype=xw.dtype, device=xw.device)
    hs[0] = state[:, 0]
    h, x = hs.unbind(0), xw.unbind(0)  # per-step views made once
    for t in range(T):
        torch.addmm(x[t], h[t], Whh_t, out=h[t + 1]).tanh_()  # (B, H)
    return {"h": hs}, hs[T].unsqueeze(1)


def backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """Gradients from ``dh_out`` (T, B, H), the loss's gradient w.r.t. each output h_t (not through the recurrence).

    Returns ``(dxw, grads)``: the gradient w.r.t. the input projection (T, B, H) and ``{"Whh": ...}``.
    The window's last state gets no gradient from later windows (truncated backpropagation through time).
    """
    hs, Whh = acts["h"], p["Whh"]
    T, B, H = dh_out.shape
    # dpre[t] = (dh_out[t] + dpre[t + 1] @ Whh) * (1 - h_t^2)
    dtanh = 1.0 - hs[1:] * hs[1:]
    dpre = torch.empty_like(dh_out)
    d_out, d_tanh, d_pre = dh_out.unbind(0), dtanh.unbind(0), dpre.unbind(0)
    torch.mul(d_out[T - 1], d_tanh[T - 1], out=d_pre[T - 1])
    for t in range(T - 2, -1, -1):
        torch.addmm(d_out[t], d_pre[t + 1], Whh, out=d_pre[t]).mul_(d_tanh[t])
    dWhh = dpre.view(T * B, -1).t() @ hs[:-1].reshape(T * B, -1)
    return dpre, {"Whh": dWhh}


def torch_weights(p: dict) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of the ``nn.RNN`` layer that computes this one."""
    bh = p["bh"].view(-1)
    return p["Wxh"], p["Whh"], bh, torch.zeros_like(bh)


def recurrent_bias(p: dict):
    """The bias inside the recurrent pre-activation (GRU's b_hn); none here: min-char-rnn's bh is in ``xw``."""
    return None


def page_groups(acts: dict) -> dict:
    """What visualize.py shows of a layer besides h: nothing, h is all there is."""
    return {}


def numpy_step(hidden_size: int, dtype=np.float64):
    """The layer's update for one character in NumPy: ``h = tanh(inp + rec)`` in place, where ``inp`` is the
    input pre-activation (bh included) and ``rec`` is ``Whh h``."""

    def step(inp: np.ndarray, rec: np.ndarray, h: np.ndarray, c=None) -> None:
        np.add(rec, inp, out=h)
        np.tanh(h, out=h)

    return step
