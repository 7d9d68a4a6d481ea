"""The recurrent cells, one module each, by the name ``--model.cell`` takes: ``CELLS``, the one list of them that
the command line, the network, sampling and visualisation ask. Adding a cell touches this package alone.

A cell module is the plain torch reference of one layer's math over a window, for charrnn/stack.py to stack:

- ``GATES``: Wxh is (GATES * H, in) and Whh (GATES * H, H); ``NUM_STATES``: tensors carried per layer (h, c);
  ``SIGMOID_GATES``: the leading gates that are sigmoids (the sampler evaluates them with its one tanh);
- ``init_weight(rows, cols, H, generator, dtype)`` (also used for the output layer) and ``init_layer(in, H, ...)``:
  the layer's parameters ``Wxh``, ``Whh``, ``bh`` and any extra (GRU's ``bhn``), drawn in that order;
  ``layer_shapes(in, H)``: their shapes, in that order, without drawing anything;
- ``forward(p, xw, state) -> (acts, new_state)``: ``xw`` (T, B, GATES * H) is the input projection of all T steps
  (bh included), ``state`` (B, NUM_STATES, H); ``acts["h"]`` (T + 1, B, H) starts with the given state;
- ``backward(p, acts, dh_out) -> (dxw, grads)``: from the gradient w.r.t. each output h_t, the gradient w.r.t.
  ``xw`` and the gradients of the recurrent parameters (``Whh`` and any extra);
- ``recurrent_bias(p)`` and ``numpy_step(H, dtype)``: what the NumPy sampler needs; ``C_GENERATOR``: the name of
  native.c's sampling loop for the cell, or None;
- ``page_groups(acts)``: what visualize.py shows of a layer besides h (name -> values and their range).

fast.py holds the CPU fast paths behind the same ``forward``/``backward`` and chooses between them and the
references (``fast.path``); native.py and native.c the C and oneDNN code they call; parallel.py the threads they
run on.
"""

from . import gru, lstm, rnn

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}
