"""One LSTM layer, hand-written forward and backward over a window.

    i, f, o = sigmoid(pre_i), sigmoid(pre_f), sigmoid(pre_o);  g = tanh(pre_g);  pre = x Wxh^T + bh + h_{t-1} Whh^T
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The gates are stored in the order (o, i, f, g), so one sigmoid covers the three sigmoid gates and, backward, one
multiply gives the gradients of the three gates that ``dc`` reaches (i, f, g). Every factor of the backward that
does not depend on the incoming gradient (``o (1 - tanh^2 c)``, ``i (1 - i) g``, ...) is computed for all T steps
at once before the loop, which then holds one product and four small multiplies per step.

Initialisation: weights uniform in (-1/sqrt(H), 1/sqrt(H)), PyTorch's choice for nn.LSTM, which keeps the
pre-activations' scale independent of H (char-rnn's fixed (-0.08, 0.08) is that of H ~ 150 and grows relatively
too large for H = 512); biases zero except the forget gate's, 1, as in char-rnn and torch-rnn, so that the cell
starts by remembering and gradients flow through c over the first windows.
"""

import numpy as np
import torch

from . import native

GATES = 4  # Wxh is (GATES * H, in), rows in gate order (o, i, f, g)
NUM_STATES = 2  # h, c
SIGMOID_GATES = 3  # the first gates that are sigmoids
O, I, F, G = range(4)


def init_weight(rows: int, cols: int, hidden_size: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    bound = hidden_size**-0.5
    return (torch.rand(rows, cols, generator=generator, dtype=dtype) * 2 - 1) * bound


def tanh(x: torch.Tensor, out: torch.Tensor, minus_one: torch.Tensor) -> torch.Tensor:
    """tanh(x) into ``out`` (which may be ``x``) as 2 sigmoid(2x) - 1: torch's CPU tanh kernel costs about five times
    its sigmoid, and every LSTM step runs two tanh on its critical path. ``minus_one`` is a 0-d tensor of x's dtype
    (a Python number would be converted to a tensor at every call)."""
    torch.add(x, x, out=out).sigmoid_()
    return torch.add(minus_one, out, alpha=2, out=out)


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
    hs = torch.empty((T + 1, B, H), dtype=xw.dtype, device=xw.device)
    cs, tanh_c = torch.empty_like(hs), torch.empty_like(hs[1:])
    hs[0], cs[0] = state[:, 0], state[:, 1]
    gates = xw
    windows, steps = native.lstm_windows(gates, hs), native.lstm_steps(gates, hs)
    if windows is not None:  # the whole loop in one C call, its products included
        packed, rec = native.pack_panels(p["Whh"]), torch.empty((B, GH), dtype=xw.dtype)
        pointers = (gates, packed, hs, cs, tanh_c, rec)
        windows[0](*(t.data_ptr() for t in pointers), T, B, H)
    elif steps is not None:  # the elementwise work of a step in one C call, on addresses computed here
        h, recurrent = hs.unbind(0), native.weight_product(p["Whh"], B)
        step, size = steps[0], xw.element_size()
        g0, h0, c0, tc0, g_step, h_step = gates.data_ptr(), hs.data_ptr(), cs.data_ptr(), tanh_c.data_ptr(), B * GH * size, B * H * size
        for t in range(T):
            rec = recurrent(h[t])
            step(g0 + t * g_step, rec.data_ptr(), c0 + t * h_step, c0 + (t + 1) * h_step, tc0 + t * h_step, h0 + (t + 1) * h_step, B, H)
    else:
        _forward_steps(gates, p["Whh"].t(), hs, cs, tanh_c)
    acts = {"h": hs, "c": cs, "gates": gates.view(T, B, GATES, H), "tanh_c": tanh_c}
    return acts, torch.stack((hs[T], cs[T]), 1)


def _forward_steps(gates, Whh_t, hs, cs, tanh_c):
    """The forward's loop in torch operations (GPUs, and CPUs without the C kernel)."""
    T, B, GH = gates.shape
    H = GH // GATES
    pre, sig, tg = gates.unbind(0), gates[..., : 3 * H].unbind(0), gates[..., 3 * H :].unbind(0)
    o, i, f, g = (gates[..., k * H : (k + 1) * H].unbind(0) for k in range(GATES))
    h, c, tc = hs.unbind(0), cs.unbind(0), tanh_c.unbind(0)
    minus_one = torch.full((), -1.0, dtype=gates.dtype, device=gates.device)
    for t in range(T):
        pre[t].addmm_(h[t], Whh_t)
        sig[t].sigmoid_()
        tanh(tg[t], tg[t], minus_one)
        torch.mul(f[t], c[t], out=c[t + 1]).addcmul_(i[t], g[t])
        torch.mul(o[t], tanh(c[t + 1], tc[t], minus_one), out=h[t + 1])


def backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """Gradients from ``dh_out`` (T, B, H), the loss's gradient w.r.t. each output h_t (not through the recurrence).

    Returns ``(dxw, grads)``: the gradient w.r.t. the pre-activations (T, B, 4H) and ``{"Whh": ...}``. The
    window's last state gets no gradient from later windows (truncated backpropagation through time).
    """
    hs, cs, gates, tc = acts["h"], acts["c"], acts["gates"], acts["tanh_c"]
    T, B, H = dh_out.shape
    windows, steps = native.lstm_windows(gates, cs, tc, dh_out), native.lstm_steps(gates, cs, tc, dh_out)
    if steps is not None:
        dpre, dc = torch.empty((T, B, GATES * H), dtype=dh_out.dtype), torch.zeros_like(dh_out[0])
    if windows is not None:  # the whole loop in one C call, its products included
        dh, packed = torch.empty_like(dh_out[0]), native.pack_panels(p["Whh"].t())
        pointers = (dpre, dc, gates, cs, tc, dh_out, packed, dh)
        windows[1](*(t.data_ptr() for t in pointers), T, B, H)
    elif steps is not None:  # the elementwise work of a step in one C call, on addresses computed here
        step, size = steps[1], dh_out.element_size()
        d_out, d_pre, recurrent = dh_out.unbind(0), dpre.unbind(0), native.weight_product(p["Whh"].t(), B)
        g0, p0, c0, tc0, out0 = gates.data_ptr(), dpre.data_ptr(), cs.data_ptr(), tc.data_ptr(), dh_out.data_ptr()
        dc_p, g_step, h_step = dc.data_ptr(), B * GATES * H * size, B * H * size
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh_t, next_gates = out0 + t * h_step, g0 + t * g_step  # dc is 0: any finite forget gate will do
            else:
                dh = recurrent(d_pre[t + 1], d_out[t])
                dh_t, next_gates = dh.data_ptr(), g0 + (t + 1) * g_step
            step(p0 + t * g_step, dc_p, g0 + t * g_step, c0 + t * h_step, tc0 + t * h_step, dh_t, next_gates, B, H)
    else:
        dpre = _backward_steps(p, acts, dh_out)
    dWhh = native.gradient_product(dpre.reshape(T * B, -1), hs[:-1].reshape(T * B, -1))
    return dpre, {"Whh": dWhh}


def _backward_steps(p, acts, dh_out):
    """The backward's loop in torch operations (GPUs, and CPUs without the C kernel): the gradient w.r.t. the
    pre-activations (T, B, 4H)."""
    cs, gates, tc = acts["c"], acts["gates"], acts["tanh_c"]
    T, B, H = dh_out.shape
    o, i, f, g = gates.unbind(2)
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
    dh, dc = torch.empty_like(dh_out[0]), torch.empty_like(dh_out[0])
    dc1 = dc.unsqueeze(1)
    d_out, d_pre, f_t, into_c = dh_out.unbind(0), dpre.unbind(0), f.unbind(0), into_c.unbind(0)
    by_dh, by_dc = dpre[..., :H].unbind(0), dpre[..., H:].view(T, B, 3, H).unbind(0)
    by_dh[T - 1].mul_(d_out[T - 1])
    torch.mul(into_c[T - 1], d_out[T - 1], out=dc)
    by_dc[T - 1].mul_(dc1)
    for t in range(T - 2, -1, -1):
        torch.addmm(d_out[t], d_pre[t + 1], p["Whh"], out=dh)
        by_dh[t].mul_(dh)
        torch.addcmul(into_c[t].mul_(dh), dc, f_t[t + 1], out=dc)
        by_dc[t].mul_(dc1)
    return dpre


def recurrent_bias(p: dict):
    """The bias inside the recurrent pre-activation; none: the LSTM's one bias bh is in ``xw``."""
    return None


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
