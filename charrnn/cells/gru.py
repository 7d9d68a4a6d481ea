"""One GRU layer in PyTorch's formulation, hand-written forward and backward over a window.

    r, z = sigmoid(x W_xr + b_r + h_{t-1} W_hr),  sigmoid(x W_xz + b_z + h_{t-1} W_hz)
    n = tanh(x W_xn + b_n + r * (h_{t-1} W_hn + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

The reset gate multiplies the recurrent product *with its bias* b_hn, as in nn.GRU (and cuDNN), so nn.GRU with
copied weights is an exact reference; ``bh`` holds b_r, b_z, b_n (nn.GRU's two biases summed where they can be)
and ``bhn`` is b_hn. char-rnn's GRU differs: it resets h before the product, ``tanh(x W_xn + (r * h) W_hn)``.

Gates are stored (r, z, n). Backward, every factor that does not depend on the incoming gradient is computed for
all T steps before the loop, which then holds one product and two small elementwise operations per step. Weights
are initialised as common.init_weight; biases zero. The recurrent products come from ``products``: plain torch
here, oneDNN's or native.c's on the CPU (charrnn/cells/fast.py chooses).
"""

import numpy as np
import torch

from . import common
from .common import init_weight, tanh

GATES = 3  # Wxh is (GATES * H, in), rows in gate order (r, z, n)
NUM_STATES = 1  # h
SIGMOID_GATES = 2  # the first gates that are sigmoids
C_GENERATOR = None  # no native.c sampling loop: generation runs in NumPy
R, Z, N = range(3)
TORCH_MODULE = "GRU"  # the torch.nn class that computes this layer (export.py), its weights from torch_weights
# The layer's step in export.py's page (JavaScript): h from inp (the input pre-activation) and rec (Whh h), p.bhn.
JS_STEP = """for (let j = 0; j < H; j++) {
  const r = sigmoid(inp[j] + rec[j]), z = sigmoid(inp[H + j] + rec[H + j]);
  const n = Math.tanh(inp[2 * H + j] + r * (rec[2 * H + j] + p.bhn[j]));
  h[j] = (1 - z) * n + z * h[j];
}"""


def layer_shapes(in_size: int, hidden_size: int) -> dict:
    GH = GATES * hidden_size
    return {"Wxh": (GH, in_size), "Whh": (GH, hidden_size), "bh": (GH, 1), "bhn": (hidden_size, 1)}


def init_layer(in_size: int, hidden_size: int, generator=None, dtype=torch.float32) -> dict:
    H = hidden_size
    return {
        "Wxh": init_weight(GATES * H, in_size, H, generator, dtype),
        "Whh": init_weight(GATES * H, H, H, generator, dtype),
        "bh": torch.zeros(GATES * H, 1, dtype=dtype),
        "bhn": torch.zeros(H, 1, dtype=dtype),
    }


def forward(p: dict, xw: torch.Tensor, state: torch.Tensor, products=common):
    """Run the layer over ``xw`` (T, B, 3H) from ``state`` (B, 1, H); return ``(acts, new_state)``.

    ``acts``: ``h`` (T + 1, B, H), starting state first; ``gates`` (T, B, 3, H) = (r, z, ``h W_hn + b_hn``) in
    ``xw``'s storage (overwritten); ``n`` (T, B, H); ``h_minus_n`` (T, B, H) = h_{t-1} - n_t.
    """
    T, B, GH = xw.shape
    H = GH // GATES
    hs = torch.empty((T + 1, B, H), dtype=xw.dtype, device=xw.device)
    hs[0] = state[:, 0]
    x_n = xw[..., 2 * H :].clone()
    gates = xw
    gates[..., 2 * H :] = p["bhn"].view(-1)  # gates[t] += h Whh^T gives (pre_r, pre_z, h W_hn + b_hn)
    ns, h_minus_n = torch.empty_like(hs[1:]), torch.empty_like(hs[1:])
    pre, rz = gates.unbind(0), gates[..., : 2 * H].unbind(0)
    r, z, hn = (gates[..., k * H : (k + 1) * H].unbind(0) for k in range(GATES))
    h, n, d, xn = hs.unbind(0), ns.unbind(0), h_minus_n.unbind(0), x_n.unbind(0)
    minus_one = torch.full((), -1.0, dtype=xw.dtype, device=xw.device)
    recurrent = products.weight_product(p["Whh"], B)
    for t in range(T):
        pre[t].add_(recurrent(h[t]))  # (B, 3H): pre_r, pre_z, h W_hn + b_hn
        rz[t].sigmoid_()
        tanh(torch.addcmul(xn[t], r[t], hn[t], out=n[t]), n[t], minus_one)
        torch.addcmul(n[t], z[t], torch.sub(h[t], n[t], out=d[t]), out=h[t + 1])
    return activations(gates, hs, ns, h_minus_n)


def activations(gates, hs, ns, h_minus_n):
    """``(acts, new_state)`` as ``forward`` returns them, from its filled buffers."""
    T, B, GH = gates.shape
    acts = {"h": hs, "gates": gates.view(T, B, GATES, GH // GATES), "n": ns, "h_minus_n": h_minus_n}
    return acts, hs[T].unsqueeze(1)


def backward(p: dict, acts: dict, dh_out: torch.Tensor, products=common):
    """Gradients from ``dh_out`` (T, B, H), the loss's gradient w.r.t. each output h_t (not through the recurrence).

    Returns ``(dxw, grads)``: the gradient w.r.t. the input projection (T, B, 3H) and ``{"Whh": ..., "bhn": ...}``.
    The window's last state gets no gradient from later windows (truncated backpropagation through time).
    """
    hs, gates, n = acts["h"], acts["gates"], acts["n"]
    T, B, H = dh_out.shape
    r, z, hn = gates.unbind(2)
    # With dh the gradient w.r.t. h_t: d pre_n = dh (1 - z)(1 - n^2), d pre_r = d pre_n * hn * r (1 - r),
    # d pre_z = dh (h_{t-1} - n) z (1 - z), and the recurrent n product gets d pre_n * r.
    dn = (1.0 - z) * (1.0 - n * n)
    # drec[t] starts as the factors [dn hn r (1 - r), (h_{t-1} - n) z (1 - z), dn r] and the loop multiplies them by
    # dh_t in place: dh_{t-1} = dh_out[t-1] + dh_t z_t + drec_t @ Whh.
    drec = torch.empty((T, B, GATES, H), dtype=dh_out.dtype, device=dh_out.device)
    torch.mul(dn, hn, out=drec[:, :, R]).mul_(r).mul_(1.0 - r)
    torch.mul(acts["h_minus_n"], z, out=drec[:, :, Z]).mul_(1.0 - z)
    torch.mul(dn, r, out=drec[:, :, N])
    dh = torch.empty_like(dh_out)
    dh[T - 1] = dh_out[T - 1]
    d_out, d_h, dh1, z_t = dh_out.unbind(0), dh.unbind(0), dh.unsqueeze(2).unbind(0), z.unbind(0)
    d_rec, by_dh = drec.view(T, B, -1).unbind(0), drec.unbind(0)
    by_dh[T - 1].mul_(dh1[T - 1])
    recurrent = products.weight_product(p["Whh"].t(), B)
    for t in range(T - 2, -1, -1):  # dh_{t-1} = dh_out[t-1] + drec_t @ Whh + dh_t z_t
        torch.addcmul(recurrent(d_rec[t + 1], d_out[t]), d_h[t + 1], z_t[t + 1], out=d_h[t])
        by_dh[t].mul_(dh1[t])
    grads = recurrent_grads(drec.view(T, B, -1), hs, products)
    dxw = drec  # r and z: the input and recurrent pre-activations are one sum; n: d pre_n = dh (1 - z)(1 - n^2)
    torch.mul(dh, dn, out=dxw[:, :, N])
    return dxw.view(T, B, -1), grads


def torch_weights(p: dict) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of the ``nn.GRU`` layer that computes this one: the same gate
    order, and b_hn inside the recurrent bias (0, 0, b_hn)."""
    return p["Wxh"], p["Whh"], p["bh"].view(-1), recurrent_bias(p)


def recurrent_grads(drec: torch.Tensor, hs: torch.Tensor, products=common) -> dict:
    """``{"Whh": drec^T h_{t-1}, "bhn": drec_n}`` summed over the window, from the recurrent pre-activations'
    gradients ``drec`` (T, B, 3H) and ``hs`` (T + 1, B, H)."""
    T, B, GH = drec.shape
    return {
        "Whh": products.gradient_product(drec.reshape(T * B, GH), hs[:-1].reshape(T * B, -1)),
        "bhn": drec[..., N * (GH // GATES) :].sum((0, 1)).unsqueeze(1),
    }


def recurrent_bias(p: dict) -> torch.Tensor:
    """The bias inside the recurrent pre-activation (GATES * H,): (0, 0, b_hn)."""
    b_hn = p["bhn"].view(-1)
    return torch.cat((b_hn.new_zeros(2 * len(b_hn)), b_hn))


def page_groups(acts: dict) -> dict:
    """What visualize.py shows of a layer besides h: name -> ((T, B, H) values, (lo, hi) range). The gates' third
    row is h W_hn + b_hn, not a gate: the candidate n is shown instead."""
    gates = acts["gates"]
    return {
        "reset gate": (gates[:, :, R], (0.0, 1.0)),
        "update gate": (gates[:, :, Z], (0.0, 1.0)),
        "candidate": (acts["n"], (-1.0, 1.0)),
    }


def numpy_step(hidden_size: int, dtype=np.float64):
    """The layer's update for one character in NumPy: ``h`` in place from ``inp`` (the input pre-activation, bh
    included) and ``rec`` (``Whh h + (0, 0, b_hn)``), both with the sigmoid gates' rows halved by the caller, so
    that a tanh gives them: ``sigmoid(x) = (tanh(x / 2) + 1) / 2``."""
    H = hidden_size
    rz, n = np.empty(2 * H, dtype), np.empty(H, dtype)
    r, z = rz[:H], rz[H:]

    def step(inp: np.ndarray, rec: np.ndarray, h: np.ndarray, c=None) -> None:
        np.add(inp[: 2 * H], rec[: 2 * H], out=rz)
        np.tanh(rz, out=rz)
        np.multiply(rz, 0.5, out=rz)
        np.add(rz, 0.5, out=rz)
        np.multiply(r, rec[2 * H :], out=n)
        np.add(n, inp[2 * H :], out=n)
        np.tanh(n, out=n)
        h -= n
        h *= z
        h += n

    return step
