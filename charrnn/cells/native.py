"""CPU fast paths: C kernels (native.c: the LSTM's per-step elementwise work in training, on AVX-512 CPUs the LSTM's
and the GRU's whole window loops with the recurrent products, sampling's loop for the LSTM and its products by large
float32 or float16 matrices) compiled with the system's C compiler on first use, and float32 matrix products through
oneDNN with the weight packed once per window; a window's products in blocks of rows on charrnn's threads
(parallel.py).

Why C: on the CPU one LSTM step is one matrix product and about ten small elementwise operations, and each torch
operation costs several microseconds of dispatch however small its tensors, so at 32 streams of 256 units the
elementwise operations took a third of a window (BENCHMARKS.md, section 7). One C loop does them in one pass. On
CPUs with AVX-512, float32 windows go further: one C call runs the window's loop, each step's product by the packed
recurrent weight included (fast.py's ``LSTM_WINDOWS``, ``GRU_WINDOWS``), at the core's peak rate where oneDNN's call
reaches 90-94% of it: 2 x 512 LSTM windows 5% faster, 256-unit ones 15%; and each thread runs it over its own
streams. (Built for AVX2 alone, the same kernel with 8-lane vectors reached 59-81 GFLOP/s where oneDNN reaches
95-103, so other CPUs keep oneDNN's products: BENCHMARKS.md, section 7.)

The library is built once per source, compiler, flags and CPU (``-march=native``, and ``CHARRNN_CFLAGS`` from the
environment: ``-mno-avx512f`` builds what a CPU without AVX-512 runs) into a directory only this user can write and
loaded with ctypes after its checksum is verified (native_build.py says where, and what it refuses). Without a C
compiler, or with ``CHARRNN_NATIVE=0`` in the environment, the LSTM trains with its plain torch loop instead (lstm.py,
the same math, the one used on GPUs, proven against autograd like this one: tests/test_cells.py) and samples in NumPy
(the same text: tests/test_sampling.py).

Why oneDNN: torch sends a CPU float32 ``mm`` to MKL, which repacks the weight at every call. oneDNN, which torch
also ships (it runs ``nn.LSTM`` on the CPU), multiplies by a weight packed once into its blocked layout. One AMD
EPYC core, 100 products of 32 x 512 by 512 x 2048: 64 ms against MKL's 85; backward (32 x 2048 by 2048 x 512)
64 against 89; the input projection of a window (3200 x 512 by 512 x 2048) 61 against 77 (BENCHMARKS.md,
section 7). ``CHARRNN_NATIVE=0`` turns this off too.
"""

import functools

import torch

from . import parallel
from .native_build import library as _library
from .native_build import turned_off as _turned_off


@functools.cache
def _onednn_ops() -> bool:
    """Whether this torch build registers the two oneDNN operations used here (x86 builds do)."""
    try:
        return bool(torch.ops.mkldnn._reorder_linear_weight and torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


def _onednn_usable(*tensors: torch.Tensor) -> bool:
    return (
        not _turned_off()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and _onednn_ops()
    )


def weight_product(W: torch.Tensor, rows: int, bias: torch.Tensor = None):
    """A function ``(x, add=None) -> x @ W^T + bias (+ add)`` for many products by one weight ``W`` (out, in),
    each with ``rows`` rows: through oneDNN with W packed once on the CPU in float32, else ``torch.addmm``; the rows
    of a window's product in blocks on charrnn's threads. ``bias`` is (out,) or None; ``add`` is (rows, out).
    Returns a new tensor."""
    if not _onednn_usable(W):
        W_t = W.t()

        def block_product(x, add=None):
            if add is None:
                return torch.mm(x, W_t) if bias is None else torch.addmm(bias, x, W_t)
            return torch.addmm(add if bias is None else add + bias, x, W_t)

    else:
        packed = torch.ops.mkldnn._reorder_linear_weight(W.detach(), rows)  # a transposed view packs faster
        linear = torch.ops.mkldnn._linear_pointwise

        def block_product(x, add=None):
            if add is None:
                return linear(x, packed, bias, "none", [], "")
            return linear.binary(x, add, packed, bias, "add")

    if len(parallel.row_blocks(rows, W.device)) == 1:
        return block_product

    def product(x, add=None):
        out = x.new_empty((len(x), W.shape[0]))

        def run(part):
            first, end = part
            out[first:end] = block_product(x[first:end], None if add is None else add[first:end])

        parallel.run(run, parallel.row_blocks(len(x)))
        return out

    return product


def gradient_product(D: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``D^T @ X`` (N, K), a weight's gradient summed over a window's rows ``D`` (rows, N) and ``X`` (rows, K): in
    blocks of the result's rows (D's columns, read in place) on charrnn's threads, each block a whole sum that no
    other block adds to. torch's ``mm`` (MKL): on an Intel Xeon core it ran faster than oneDNN's ``(X^T D)^T``, which
    an AMD EPYC core had preferred by 9%, and split by rows oneDNN's partial sums cost a serial sum of each block's
    whole result (BENCHMARKS.md, sections 7 and 13)."""
    out = D.new_empty((D.shape[1], X.shape[1]))

    def run(part):
        first, end = part
        torch.mm(D[:, first:end].t(), X, out=out[first:end])

    parallel.run(run, parallel.row_blocks(D.shape[1], D.device))
    return out


def kernel(name: str):
    """native.c's function ``name`` (e.g. sampling's ``lstm_generate``, ``matvec_f32_f64``, ``matvec_f16``, or
    training's ``product_f32``), or None where it is not built (see native.c for which CPUs get which)."""
    return getattr(_library(), name, None)


def half_available() -> bool:
    """Whether ``sample.py --half`` can run: native.c built with its float16 product, which needs a compiler
    targeting F16C, AVX2 and FMA (x86-64-v3)."""
    return kernel("matvec_f16") is not None


PANEL = 32  # native.c's packed weights: panels of 32 rows


def large(W: torch.Tensor) -> bool:
    """Whether a weight is worth packing on several threads (256 KiB and more: a GRU's Whh at 256 units, 0.8 MB, on
    2 threads 0.14 -> 0.07 ms; at 192 KB no faster)."""
    return W.numel() * W.element_size() >= 2**18


def pack_panels(W: torch.Tensor) -> torch.Tensor:
    """``W`` (N, K) float32 (any strides: a transposed view packs as fast) in native.c's panel layout for
    ``product_f32``, as a flat float32 buffer."""
    N, K = W.shape
    panels = -(-N // PANEL)
    packed = torch.empty(panels * PANEL * K, dtype=torch.float32)
    (sn, sk), size = W.stride(), W.element_size()

    def args(panels):  # panels first .. end - 1, on charrnn's threads
        first, end = panels
        to = packed.data_ptr() + first * PANEL * K * packed.element_size()
        return [W.data_ptr() + first * PANEL * sn * size, sn, sk, to, min(N, end * PANEL) - first * PANEL, K]

    blocks = parallel.blocks(panels) if large(packed) else [(0, panels)]
    parallel.run_parts(kernel("pack_panels_f32_part"), args, blocks, rowwise=True)
    return packed
