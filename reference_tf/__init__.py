"""The TensorFlow side of bert-parity: Google's official BERT graph (bert-tensorflow), unmodified.

This package is the only place in the project that imports TensorFlow. ``TFReference`` runs the
official graph from a checkpoint and exposes every contract tap (CONTRACT.md) for fetching and
injection; ``write_random_checkpoint`` writes test checkpoints in Google's format.
"""
from ._errors import ReferenceError
from ._official import BERT_VERSION
from ._reference import TFReference
from ._checkpoint import write_random_checkpoint

__all__ = ["BERT_VERSION", "ReferenceError", "TFReference", "write_random_checkpoint"]
