"""``python -m parity diagnose``: which block is wrong, why, and a repro that shows it.

    diagnosis = diagnose(reference, candidate, inputs, profile, config=..., tf_weights=..., torch_weights=...)

Stages, each in ``diagnosis.json`` (CONTRACT.md, ``diagnose``):

1. **Weights first**: every TF variable (mapped to its PyTorch name and layout) against the
   PyTorch tensor, expecting bit equality; every difference named, with a hint.
2. **Local versus inherited error**: each block (embeddings; per layer the attention and the
   feed-forward sub-blocks; pooler; head) is fed the *other* side's input to it. PyTorch gets
   TensorFlow's block inputs in ONE run (``Taps.computed`` keeps each injected block output as
   the model computed it); TensorFlow gets PyTorch's in two (a fed tensor cannot also be
   fetched as computed, so blocks alternate between runs). The culprit is the first block whose
   local error is over its budget (the profile's tolerance); later failing blocks only inherit.
3. **Precision ladder**: PyTorch in float64 as well; per tap |TF32 - PT64| beside |PT32 - PT64|.
4. **Noise floors**: per tap, max(|PT32 - PT64|, a calibration file's TF floors, float32's
   resolution of the tap); every tap shows error / floor.
5. **Hints** (``parity.numerics.hints``: shared with compare, so it lives in the harness core), checked for
   every locally failing block.
6. **Structure**: per tap, statistics over real and over padded positions; attention per head.
7. **Repro**: ``repro/`` with the failing block's TF inputs and outputs, its weights, and a
   standalone ``repro.py`` that shows the error with ``bert_torch`` alone.

The modules: ``blocks`` (the block graph and the local runs), ``algorithm`` (stages 1-6), ``render``
(diagnosis.json/.md/.html), ``repro`` (stage 7), ``calibrate`` (noise floors, ``python -m
parity.diagnose.calibrate``), ``command`` (``python -m parity diagnose`` and the release report's section).
"""
