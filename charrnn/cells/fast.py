"""The cells' training loops on the CPU's fast paths, behind the cells' own ``forward(p, xw, state)`` and
``backward(p, acts, dh_out)``, and ``path``: the one place that chooses between them and the plain torch references
in rnn.py, lstm.py and gru.py (charrnn/stack.py asks it for every layer; train.py's start-up summary prints it).

From fastest: the LSTM's whole window loop in one C call, products by the packed Whh included (float32, AVX-512,
one thread: ``products_in_c``); its per-step elementwise work in one C call between oneDNN's products (any x86 CPU,
float32 or float64: native.c's ``lstm_forward_<dtype>``); the GRU's torch loop with each step's product in native.c
or oneDNN; the references. Why each one pays: charrnn/cells/native.py and BENCHMARKS.md, section 7. Every path
computes what the reference computes (tests/test_cells.py).
"""

import functools
from typing import Callable, NamedTuple

import torch

from . import gru, lstm, native, native_build


class Path(NamedTuple):
    name: str  # what runs, in the user's words
    why: str  # why not a faster path ("" when none is faster)
    forward: Callable
    backward: Callable

    def __str__(self) -> str:
        return f"{self.name} ({self.why})" if self.why else self.name


def _addresses(x: torch.Tensor) -> list[int]:
    """The address of each ``x[t]`` (``x`` contiguous): what native.c's step functions take."""
    step = x.stride(0) * x.element_size()
    return [x.data_ptr() + t * step for t in range(len(x))]


def _step_kernel(direction: str, dtype: torch.dtype):
    return native.kernel(f"lstm_{direction}_{native_build.DTYPES[dtype]}")


def lstm_window_forward(p: dict, xw: torch.Tensor, state: torch.Tensor):
    """lstm.forward as one C call (``lstm_forward_window_f32``), each step's product by the packed Whh included."""
    xw = xw.contiguous()
    T, B, GH = xw.shape
    hs, cs, tanh_c = lstm.new_activations(xw, state)
    packed, rec = native.pack_panels(p["Whh"]), torch.empty((B, GH), dtype=xw.dtype)  # rec: a step's product
    pointers = (t.data_ptr() for t in (xw, packed, hs, cs, tanh_c, rec))
    native.kernel("lstm_forward_window_f32")(*pointers, T, B, GH // lstm.GATES)
    return lstm.activations(xw, hs, cs, tanh_c)


def lstm_window_backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """lstm.backward as one C call (``lstm_backward_window_f32``), each step's product by the packed Whh^T included."""
    T, B, H = dh_out.shape
    dh_out = dh_out.contiguous()
    dpre = torch.empty((T, B, lstm.GATES * H), dtype=dh_out.dtype)
    dc, dh = torch.zeros_like(dh_out[0]), torch.empty_like(dh_out[0])  # (B, H): the carried gradients
    packed = native.pack_panels(p["Whh"].t())
    pointers = (t.data_ptr() for t in (dpre, dc, acts["gates"], acts["c"], acts["tanh_c"], dh_out, packed, dh))
    native.kernel("lstm_backward_window_f32")(*pointers, T, B, H)
    return dpre, lstm.recurrent_grads(dpre, acts["h"], native)


def lstm_step_forward(p: dict, xw: torch.Tensor, state: torch.Tensor):
    """lstm.forward with each step's elementwise work in one C call, after the step's product
    (native.weight_product)."""
    xw = xw.contiguous()
    T, B, GH = xw.shape
    H = GH // lstm.GATES
    hs, cs, tanh_c = lstm.new_activations(xw, state)
    step, recurrent = _step_kernel("forward", xw.dtype), native.weight_product(p["Whh"], B)
    gates, h, c, tc = map(_addresses, (xw, hs, cs, tanh_c))
    for t in range(T):
        rec = recurrent(hs[t])  # (B, 4H)
        step(gates[t], rec.data_ptr(), c[t], c[t + 1], tc[t], h[t + 1], B, H)
    return lstm.activations(xw, hs, cs, tanh_c)


def lstm_step_backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """lstm.backward with each step's elementwise work in one C call, after the step's product (dh = dh_out[t] +
    dpre[t + 1] @ Whh, native.weight_product)."""
    T, B, H = dh_out.shape
    dh_out = dh_out.contiguous()
    dpre, dc = torch.empty((T, B, lstm.GATES * H), dtype=dh_out.dtype), torch.zeros_like(dh_out[0])
    step, recurrent = _step_kernel("backward", dh_out.dtype), native.weight_product(p["Whh"].t(), B)
    gates, c, tc, d_out, d_pre = map(_addresses, (acts["gates"], acts["c"], acts["tanh_c"], dh_out, dpre))
    for t in range(T - 1, -1, -1):
        if t == T - 1:  # no later step: dc is 0, so any finite forget gate will do as the next one
            dh, next_gates = d_out[t], gates[t]
        else:
            dh_t = recurrent(dpre[t + 1], dh_out[t])  # (B, H), alive until the step has read it
            dh, next_gates = dh_t.data_ptr(), gates[t + 1]
        step(d_pre[t], dc.data_ptr(), gates[t], c[t], tc[t], dh, next_gates, B, H)
    return dpre, lstm.recurrent_grads(dpre, acts["h"], native)


LSTM_WINDOWS = (lstm_window_forward, lstm_window_backward)
LSTM_STEPS = (lstm_step_forward, lstm_step_backward)
GRU_PRODUCTS = (functools.partial(gru.forward, products=native), functools.partial(gru.backward, products=native))


def _obstacles(dtype: torch.dtype, device: torch.device) -> list[tuple[str, str]]:
    """What stands between a run and native.c, each as (what it rules out, why), in the order they are checked:
    ``"c"`` rules out every C loop, ``"windows"`` the window loops alone."""
    threads = torch.get_num_threads()
    checks = [
        ("c", device.type != "cpu", device.type),
        ("c", native._turned_off(), "CHARRNN_NATIVE=0"),
        ("c", dtype not in native_build.DTYPES, str(dtype).removeprefix("torch.")),
        ("c", device.type == "cpu" and native._library() is None, "native.c not built: no C compiler?"),
        ("windows", dtype != torch.float32, str(dtype).removeprefix("torch.")),
        ("windows", native.kernel("product_f32") is None, "no AVX-512"),
        ("windows", threads != 1, f"{threads} threads"),
    ]
    return [(rules_out, why) for rules_out, failed, why in checks if failed]


def _onednn(dtype: torch.dtype, device: torch.device) -> bool:
    return device.type == "cpu" and native._onednn_usable(torch.empty(0, dtype=dtype))


def path(cell, dtype: torch.dtype, device="cpu") -> Path:
    """How ``cell``'s layers train in ``dtype`` on ``device`` with torch's present thread count: the fastest path
    that runs here, and what rules out a faster one."""
    device = torch.device(device)
    obstacles = _obstacles(dtype, device)
    c_blocked = [why for rules_out, why in obstacles if rules_out == "c"]
    why = obstacles[0][1] if obstacles else ""
    onednn = _onednn(dtype, device)
    if cell is lstm and not obstacles:
        return Path("C window loops", "AVX-512, 1 thread", *LSTM_WINDOWS)
    if cell is lstm and not c_blocked:
        return Path(f"C steps with {'oneDNN' if onednn else 'torch'} products", why, *LSTM_STEPS)
    if cell is gru and onednn:
        in_c = native.products_in_c()
        return Path(f"{'C' if in_c else 'oneDNN'} step products, torch loop", why if not in_c else "", *GRU_PRODUCTS)
    if cell is lstm and onednn:  # no C: the reference's loops, its weight gradient through oneDNN
        return Path("torch loop, oneDNN products", why, lstm.forward, functools.partial(lstm.backward, products=native))
    if cell in (lstm, gru):
        return Path("plain torch", why, cell.forward, cell.backward)
    return Path("plain torch", "no C loop for this cell", cell.forward, cell.backward)

