"""A PyTorch BERT that matches Google's official TensorFlow graph, tap for tap. No TensorFlow here.

The model's names are imported on first use (PEP 562), so that a light submodule (``bert_torch.commands``, the
command line's front door) does not load torch: ``bert-parity --help`` answers without it."""
import importlib

_EXPORTS = {"BertConfig": "modeling", "BertModel": "modeling", "BertForSequenceClassification": "modeling",
            "BertForQuestionAnswering": "modeling", "BertForPreTraining": "modeling", "Taps": "taps",
            "tap_names": "taps"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bert_torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value   # once: later lookups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
