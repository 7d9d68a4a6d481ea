"""One LSTM layer, hand-written forward and backward over a window: the plain torch reference of its math.

    i, f, o = sigmoid(pre_i), sigmoid(pre_f), sigmoid(pre_o);  g = tanh(pre_g);  pre = x Wxh^T + bh + h_{t-1} Whh^T
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The gates are stored in the order (o, i, f, g), so one sigmoid covers the three sigmoid gates and, backward, one
multiply gives the gradients of the three gates that ``dc`` reaches (i, f, g). Every factor of the backward that
does not depend on the incoming gradient (``o (1 - tanh^2 c)``, ``i (1 - i) g``, ...) is computed for all T steps
at once before the loop, which then holds one product and four small multiplies per step. native.c runs the same
loops on the CPU (charrnn/cells/fast.py chooses).

Initialisation: weights as common.init_weight; biases zero except the forget gate's, 1, as in char-rnn and
torch-rnn, so that the cell starts by remembering and gradients flow through c over the first windows.
"""

import math

import numpy as np
import torch

from . import common
from .common import init_weight, tanh

GATES = 4  # Wxh is (GATES * H, in), rows in gate order (o, i, f, g)
NUM_STATES = 2  # h, c
SIGMOID_GATES = 3  # the first gates that are sigmoids
O, I, F, G = range(4)
C_GENERATOR = "lstm_generate"  # native.c's sampling loop for this cell (charrnn/sampling.py)
TORCH_MODULE = "LSTM"  # the torch.nn class that computes this layer (export.py), its weights from torch_weights
# The layer's step in export.py's page (JavaScript): h and c from inp (the input pre-activation) and rec (Whh h).
JS_STEP = """for (let j = 0; j < H; j++) {
  const o = sigmoid(inp[j] + rec[j]), i = sigmoid(inp[H + j] + rec[H + j]);
  const f = sigmoid(inp[2 * H + j] + rec[2 * H + j]), g = Math.tanh(inp[3 * H + j] + rec[3 * H + j]);
  c[j] = f * c[j] + i * g;
  h[j] = o * Math.tanh(c[j]);
}"""


def layer_shapes(in_size: int, hidden_size: int) -> dict:
    GH = GATES * hidden_size
    return {"Wxh": (GH, in_size), "Whh": (GH, hidden_size), "bh": (GH, 1)}


def init_layer(in_size: int, hidden_size: int, generator=None, dtype=torch.float32) -> dict:
    H = hidden_size
    bh = torch.zeros(GATES * H, 1, dtype=dtype)
    bh[F * H : (F + 1) * H] = 1.0
    return {
        "Wxh": init_weight(GATES * H, in_size, H, generator, dtype),
        "Whh": init_weight(GATES * H, H, H, generator, dtype),
        "bh": bh,
    }


def forward(p: dict, xw: torch.Tensor, state: torch.Tensor):
    """Run the layer over ``xw`` (T, B, 4H) from ``state`` (B, 2, H) = (h, c); return ``(acts, new_state)``.

    ``acts``: ``h`` and ``c`` (T + 1, B, H), starting state first; ``gates`` (T, B, 4, H) in the order (o, i, f, g)
    (``xw``'s storage, overwritten); ``tanh_c`` (T, B, H).
    """
    T, B, GH = xw.shape
    H = GH // GATES
    hs, cs, tanh_c = new_activations(xw, state)  # (T + 1, B, H), (T + 1, B, H), (T, B, H)
    gates, Whh_t = xw, p["Whh"].t()
    pre, sig, tg = gates.unbind(0), gates[..., : 3 * H].unbind(0), gates[..., 3 * H :].unbind(0)
    o, i, f, g = (gates[..., k * H : (k + 1) * H].unbind(0) for k in range(GATES))
    h, c, tc = hs.unbind(0), cs.unbind(0), tanh_c.unbind(0)
    minus_one = torch.full((), -1.0, dtype=xw.dtype, device=xw.device)
    for t in range(T):
        pre[t].addmm_(h[t], Whh_t)  # (B, 4H)
        sig[t].sigmoid_()
        tanh(tg[t], tg[t], minus_one)
        torch.mul(f[t], c[t], out=c[t + 1]).addcmul_(i[t], g[t])
        torch.mul(o[t], tanh(c[t + 1], tc[t], minus_one), out=h[t + 1])
    return activations(gates, hs, cs, tanh_c)


def new_activations(xw: torch.Tensor, state: torch.Tensor):
    """The forward's outputs, ``hs`` and ``cs`` (T + 1, B, H) holding the starting state, and ``tanh_c`` (T, B, H)."""
    T, B, GH = xw.shape
    hs = torch.empty((T + 1, B, GH // GATES), dtype=xw.dtype, device=xw.device)
    cs, tanh_c = torch.empty_like(hs), torch.empty_like(hs[1:])
    hs[0], cs[0] = state[:, 0], state[:, 1]
    return hs, cs, tanh_c


def activations(gates, hs, cs, tanh_c):
    """``(acts, new_state)`` as ``forward`` returns them, from its filled buffers."""
    T, B, GH = gates.shape
    acts = {"h": hs, "c": cs, "gates": gates.view(T, B, GATES, GH // GATES), "tanh_c": tanh_c}
    return acts, torch.stack((hs[T], cs[T]), 1)


def backward(p: dict, acts: dict, dh_out: torch.Tensor, products=common):
    """Gradients from ``dh_out`` (T, B, H), the loss's gradient w.r.t. each output h_t (not through the recurrence).

    Returns ``(dxw, grads)``: the gradient w.r.t. the pre-activations (T, B, 4H) and ``{"Whh": ...}``. The
    window's last state gets no gradient from later windows (truncated backpropagation through time).
    ``products.gradient_product`` computes dWhh (charrnn/cells/fast.py passes oneDNN's).
    """
    hs, cs, gates, tc = acts["h"], acts["c"], acts["gates"], acts["tanh_c"]
    T, B, H = dh_out.shape
    o, i, f, g = gates.unbind(2)  # (T, B, H) each
    # dpre[t] starts as the gates' factors [tc o (1 - o), g i (1 - i), c_{t-1} f (1 - f), i (1 - g^2)] and into_c[t]
    # as o (1 - tc^2); the loop multiplies the first and into_c by dh, the other three by dc, in place, leaving the
    # gradients of the pre-activations (o, i, f, g) in one contiguous buffer (what the products after it want).
    dpre = torch.empty((T, B, GATES, H), dtype=dh_out.dtype, device=dh_out.device)
    into_c = torch.empty_like(dh_out)
    one = torch.ones((), dtype=dh_out.dtype, device=dh_out.device)
    sig = gates[:, :, :3]
    torch.addcmul(sig, sig, sig, value=-1.0, out=dpre[:, :, :3])  # s (1 - s) for o, i, f
    dpre[:, :, O].mul_(tc)
    dpre[:, :, I].mul_(g)
    dpre[:, :, F].mul_(cs[:-1])
    torch.addcmul(one, g, g, value=-1.0, out=dpre[:, :, G]).mul_(i)
    torch.addcmul(one, tc, tc, value=-1.0, out=into_c).mul_(o)
    dpre = dpre.view(T, B, GATES * H)
    dh, dc = torch.empty_like(dh_out[0]), torch.empty_like(dh_out[0])  # (B, H)
    dc1 = dc.unsqueeze(1)
    d_out, d_pre, f_t, into_c = dh_out.unbind(0), dpre.unbind(0), f.unbind(0), into_c.unbind(0)
    by_dh, by_dc = dpre[..., :H].unbind(0), dpre[..., H:].view(T, B, 3, H).unbind(0)
    by_dh[T - 1].mul_(d_out[T - 1])
    torch.mul(into_c[T - 1], d_out[T - 1], out=dc)
    by_dc[T - 1].mul_(dc1)
    for t in range(T - 2, -1, -1):
        torch.addmm(d_out[t], d_pre[t + 1], p["Whh"], out=dh)  # dh_t = dh_out[t] + dpre[t + 1] @ Whh
        by_dh[t].mul_(dh)
        torch.addcmul(into_c[t].mul_(dh), dc, f_t[t + 1], out=dc)  # dc_t = dh o (1 - tc^2) + dc_{t+1} f_{t+1}
        by_dc[t].mul_(dc1)
    return dpre, recurrent_grads(dpre, hs, products)


def recurrent_grads(dpre: torch.Tensor, hs: torch.Tensor, products=common) -> dict:
    """``{"Whh": dpre^T h_{t-1}}`` summed over the window, from ``dpre`` (T, B, 4H) and ``hs`` (T + 1, B, H)."""
    T, B, GH = dpre.shape
    return {"Whh": products.gradient_product(dpre.reshape(T * B, GH), hs[:-1].reshape(T * B, -1))}


def torch_weights(p: dict) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of the ``nn.LSTM`` layer that computes this one: nn.LSTM's gates
    are (i, f, g, o)."""
    H = p["Whh"].shape[1]
    in_torch_order = lambda w: torch.cat([w[k * H : (k + 1) * H] for k in (I, F, G, O)])  # noqa: E731
    bh = in_torch_order(p["bh"].view(-1))
    return in_torch_order(p["Wxh"]), in_torch_order(p["Whh"]), bh, torch.zeros_like(bh)


def recurrent_bias(p: dict):
    """The bias inside the recurrent pre-activation; none: the LSTM's one bias bh is in ``xw``."""
    return None


def page_groups(acts: dict) -> dict:
    """What visualize.py shows of a layer besides h: name -> ((T, B, H) values, (lo, hi) range). c is unbounded:
    the smallest whole bound that holds it."""
    c, gates = acts["c"][1:], acts["gates"]
    bound = max(1.0, math.ceil(float(c.abs().max())))
    return {
        "c": (c, (-bound, bound)),
        "input gate": (gates[:, :, I], (0.0, 1.0)),
        "forget gate": (gates[:, :, F], (0.0, 1.0)),
        "output gate": (gates[:, :, O], (0.0, 1.0)),
        "candidate": (gates[:, :, G], (-1.0, 1.0)),
    }


def numpy_step(hidden_size: int, dtype=np.float64):
    """The layer's update for one character in NumPy: ``(h, c)`` in place from ``inp`` (the input pre-activation,
    bh included) and ``rec`` (``Whh h``), both with the sigmoid gates' rows halved by the caller, so that one tanh
    gives every gate: ``sigmoid(x) = (tanh(x / 2) + 1) / 2``."""
    H = hidden_size
    pre, ig = np.empty(GATES * H, dtype), np.empty(H, dtype)
    sig = pre[: 3 * H]
    o, i, f, g = (pre[k * H : (k + 1) * H] for k in range(GATES))

    def step(inp: np.ndarray, rec: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        np.add(inp, rec, out=pre)
        np.tanh(pre, out=pre)
        np.multiply(sig, 0.5, out=sig)
        np.add(sig, 0.5, out=sig)
        c *= f
        c += np.multiply(i, g, out=ig)
        np.tanh(c, out=h)
        h *= o

    return step
