"""What a run trains, said twice: a few lines printed when it starts, and the settings TensorBoard's HPARAMS tab
compares runs by.

Both read the model's ``Architecture`` field by field, so every field of it (cell, depth, sizes, dropout) is shown
without being named here.
"""

import dataclasses
import math


def lines(model, data, processes: int) -> list[str]:
    """The model, its parameters per tensor and in total, the stream layout and the text."""
    arch = dataclasses.asdict(model.arch)
    shapes = model.arch.param_shapes()
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    streams, window = processes * data.batch_size, data.seq_length
    on = f" on {processes} processes" if processes > 1 else ""
    return [
        "model: " + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in arch.items()),
        f"parameters: {sum(sizes.values()):,} in total: "
        + ", ".join(f"{name} {'x'.join(map(str, shape))} = {sizes[name]:,}" for name, shape in shapes.items()),
        f"training: {streams} streams x {window} characters = {streams * window:,} characters per step{on}",
        f"text: {data.source}: {len(data.train_ids):,} characters for training, {len(data.val_ids):,} for validation",
    ]
