"""``bert-parity evaluate``: task-level parity of a fine-tuned checkpoint. The official graph with the checkpoint's own
head (run_classifier's ``output_weights``, run_squad's ``cls/squad/output_weights``) and a candidate run on the same
dev features, made by the official feature code; their predictions compared example by example and scored by the
task's metric (MRPC accuracy and F1, SQuAD exact match and F1).

- ``options``: the command's flags (light: no torch, no TensorFlow)
- ``data``: the dev set, its official features, predictions and metrics
- ``judge``: agreement, margins against rounding noise, McNemar, the verdict's rule, hints
- ``render``: report.md and the printed summary
- ``command``: ``run_evaluate``, which runs both sides and writes the report folder
"""
