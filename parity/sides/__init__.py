"""The two sides of a comparison and what they share.

``base`` (the ``Side`` protocol: run inputs, return named taps, inject, close, say what it can do; the
official TF graph's side, our PyTorch model's side, a golden file's side), ``tf_worker`` (the TF side in a
process of its own, so that its memory is gone before PyTorch runs), ``tapstore`` (taps spilled to disk when
they do not fit in memory), ``refcache`` (the official graph's results kept and reused while everything that
determines them is unchanged).

Imports: ``numerics`` and the bottom modules; ``reference_tf`` and ``bert_torch``. The candidates, the
comparison and every command sit above.
"""
