"""GPU training throughput: charrnn's hand-written BPTT against nn.RNN (cuDNN) + autograd, same shapes, same run.

    python -m bench.gpu_throughput                      # H=512, T=25, B=256, float32 without TF32
    python -m bench.gpu_throughput --tf32 --steps 200   # let cuBLAS and cuDNN use TF32 tensor cores (both sides)

Every variant runs whole training steps (forward, backward, clip to [-5, 5], min-char-rnn's Adagrad) with the
hidden state carried across steps:

- ``nn.RNN (cuDNN) + autograd``: the same tanh RNN as torch modules (one-hot input, linear output), the baseline;
- ``charrnn eager``: ``network.train_step`` (BPTT, clip, ``charrnn.optim.Adagrad``), the step train.py runs;
- ``charrnn CUDA graph``: the same step captured once and replayed, which removes the per-kernel launch cost;
- ``charrnn Lightning``: train.py's whole loop (``Trainer`` + ``CharRNN`` + data) on a real text.

Achieved GFLOP/s counts the matrix products both models share, ``6 * T * B * H * (H + V)`` per step (forward,
input-gradient and weight-gradient products of the recurrence and of the output layer). The input projection is
left out: charrnn does it as a gather, cuDNN as a (T * B, V) x (V, H) product. A profile of a few steps gives the
kernels launched per step and how much of the step the GPU is busy; a low fraction means launches dominate.
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import find_shakespeare
from charrnn import network
from charrnn.optim import Adagrad

CLIP = 5.0


def random_batches(n, V, B, T, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(V, (2, B, T), generator=generator).to(device)) for _ in range(n)]


def cycle(batches):
    while True:
        yield from batches


def charrnn_step(V, H, B, dtype, device, batches):
    """One training step of charrnn's own math, as ``CharRNN.training_step`` does it."""
    arch = network.Architecture(V, H)
    params = {k: torch.nn.Parameter(v.to(device)) for k, v in arch.init_params(dtype=dtype).items()}
    opt = Adagrad(params.values(), lr=0.1)
    state = {"h": arch.zero_state(B, dtype, device)}
    data = cycle(batches)

    def step(inputs=None, targets=None):
        inputs, targets = next(data) if inputs is None else (inputs, targets)
        _, state["h"] = network.train_step(arch, params, opt, inputs, targets, state["h"], CLIP)

    return step, state


def charrnn_graph_step(V, H, B, dtype, device, batches):
    """charrnn's step captured as a CUDA graph: one launch per step instead of one per kernel."""
    step, state = charrnn_step(V, H, B, dtype, device, batches)
    static_x, static_y = (t.clone() for t in batches[0])
    static_h = state["h"]

    def body():
        step(static_x, static_y)
        static_h.copy_(state["h"])
        state["h"] = static_h

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (Adagrad allocates its state) outside the capture
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    data = cycle(batches)

    def replay():
        x, y = next(data)
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    return replay


def cudnn_step(V, H, B, dtype, device, batches):
    """The baseline: torch's RNN module (cuDNN on a GPU) and a linear output layer, gradients by autograd."""
    torch.manual_seed(0)
    recurrent = torch.nn.RNN(V, H, nonlinearity="tanh").to(device=device, dtype=dtype)
    output = torch.nn.Linear(H, V).to(device=device, dtype=dtype)
    params = [*recurrent.parameters(), *output.parameters()]
    opt = Adagrad(params, lr=0.1)
    state = {"h": torch.zeros(1, B, H, dtype=dtype, device=device)}
    data = cycle(batches)

    def step():
        inputs, targets = next(data)
        hs, h_last = recurrent(F.one_hot(inputs.t(), V).to(dtype), state["h"])
        loss = F.cross_entropy(output(hs).view(-1, V), targets.t().reshape(-1), reduction="sum") / B
        for p in params:
            p.grad = None
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, CLIP)
        opt.step()
        state["h"] = h_last.detach()

    return step


def seconds_per_step(step, steps, warmup):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def kernel_profile(step, steps=5):
    """(kernels launched per step, GPU-busy milliseconds per step) from the profiler, or None."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels) / steps, sum(e.time_range.elapsed_us() for e in kernels) / steps / 1e3
    except Exception as e:  # the profiler is a diagnostic: its absence must not lose the timings
        print(f"(profiler unavailable: {type(e).__name__}: {e})")
        return None


def lightning_seconds_per_step(path, H, T, B, dtype, steps, warmup):
    """train.py's loop: Trainer, CharRNN and CharDataModule on the GPU, timed between two device syncs."""
    import lightning as L

    from charrnn.data import CharDataModule
    from charrnn.module import CharRNN

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == warmup:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start

    data = CharDataModule(path, seq_length=T, batch_size=B, val_fraction=0)
    data.windows_per_batch = 1  # the clock starts at a step's batch
    clock = Clock()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="64-true" if dtype == torch.float64 else "32-true",
        max_steps=warmup + steps,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(CharRNN(data.vocab_size, H, vocab=data.chars), datamodule=data)
    return clock.seconds / steps, data.vocab_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seq", type=int, default=25)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=65, help="characters (tinyshakespeare has 65)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores in cuBLAS and cuDNN (both sides)")
    parser.add_argument("--text", default=None, help="text for the Lightning variant (default: tinyshakespeare)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); nothing measured")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    H, T, B, V = args.hidden, args.seq, args.batch, args.vocab
    dtype, device = getattr(torch, args.dtype), torch.device("cuda")
    batches = random_batches(8, V, B, T, device)
    flops = 6 * T * B * H * (H + V)
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()} | H={H} T={T} B={B} V={V} {args.dtype}"
        f"{' TF32' if args.tf32 else ' (TF32 off)'} | {flops / 1e9:.2f} GFLOP per step"
    )

    variants = {
        "nn.RNN (cuDNN) + autograd": lambda: cudnn_step(V, H, B, dtype, device, batches),
        "charrnn eager": lambda: charrnn_step(V, H, B, dtype, device, batches)[0],
        "charrnn CUDA graph": lambda: charrnn_graph_step(V, H, B, dtype, device, batches),
    }
    results = {}
    for name, make in variants.items():
        try:
            step = make()
            results[name] = seconds_per_step(step, args.steps, args.warmup), kernel_profile(step)
        except Exception as e:  # e.g. a capture that fails on this torch build: report it, keep the others
            print(f"{name}: failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    text = args.text or find_shakespeare()
    if text is not None:
        seconds, vocab = lightning_seconds_per_step(text, H, T, B, dtype, args.steps, args.warmup)
        if vocab == V:
            results["charrnn Lightning (train.py loop)"] = seconds, None
        else:
            print(f"(Lightning variant skipped: {text} has {vocab} characters, not --vocab {V})")

    base = results.get("nn.RNN (cuDNN) + autograd", (None,))[0]
    print(f"{'variant':36} {'ms/step':>8} {'chars/s':>11} {'GFLOP/s':>8} {'x cuDNN':>8} {'kernels':>8} {'GPU busy':>8}")
    for name, (seconds, profile) in results.items():
        kernels, busy = ("", "") if profile is None else (f"{profile[0]:.0f}", f"{profile[1] / (seconds * 1e3):.0%}")
        ratio = f"{base / seconds:.2f}" if base else ""
        print(
            f"{name:36} {seconds * 1e3:8.3f} {B * T / seconds:11.3g} {flops / seconds / 1e9:8.0f} {ratio:>8} "
            f"{kernels:>8} {busy:>8}"
        )
    print("x cuDNN > 1 is faster than the baseline; GPU busy is kernel time / wall time over a profiled step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
