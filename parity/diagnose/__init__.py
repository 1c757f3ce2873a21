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
5. **Hints** (``parity.hints``: shared with compare, so it lives in the harness core), checked for
   every locally failing block.
6. **Structure**: per tap, statistics over real and over padded positions; attention per head.
7. **Repro**: ``repro/`` with the failing block's TF inputs and outputs, its weights, and a
   standalone ``repro.py`` that shows the error with ``bert_torch`` alone.

The modules: ``blocks`` (the block graph and the local runs), ``algorithm`` (stages 1-6), ``render``
(diagnosis.json/.md/.html), ``repro`` (stage 7), ``calibrate`` (noise floors, ``python -m
parity.diagnose.calibrate``), ``command`` (``python -m parity diagnose`` and the release report's section).
"""
from __future__ import annotations

from .algorithm import LADDER_FACTOR, Diagnosis, ReproArrays, check, diagnose, merge_hints, structured
from .blocks import Block, blocks, float64_twin, local_taps, schedule
from .command import add_diagnose_args, bert_torch_side, calibration_floors, release_check, run_diagnose
from .render import DIAGNOSIS_FILES, DIAGNOSIS_PICTURES, public, render_markdown, write_diagnosis
from .repro import write_repro

__all__ = ["Block", "DIAGNOSIS_FILES", "Diagnosis", "ReproArrays", "DIAGNOSIS_PICTURES", "LADDER_FACTOR", "add_diagnose_args", "bert_torch_side",
           "blocks", "calibration_floors", "check", "diagnose", "float64_twin", "local_taps",
           "merge_hints", "public", "release_check", "render_markdown", "run_diagnose", "schedule", "structured",
           "write_diagnosis", "write_repro"]
