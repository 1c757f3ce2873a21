"""The TensorFlow side of bert-parity: Google's official BERT graph (bert-tensorflow), unmodified.

This package is the only place in the project that imports TensorFlow. ``TFReference`` runs the
official graph from a checkpoint and exposes every contract tap (CONTRACT.md) for fetching and
injection; ``write_random_checkpoint`` writes test checkpoints in Google's format.

TensorFlow is imported when one of these names is first used (PEP 562 ``__getattr__``), not by
``import reference_tf``: ``python -m reference_tf dump`` only hands over to ``parity`` and should
not pay for a TensorFlow import it does not use.
"""
from ._errors import ReferenceError

_LAZY = {"BERT_VERSION": "._official", "TFReference": "._reference", "write_random_checkpoint": "._checkpoint"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BERT_VERSION", "ReferenceError", "TFReference", "write_random_checkpoint"]
