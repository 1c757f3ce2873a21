"""The pieces every PyTorch candidate side is made of (parity.candidates.factory builds them): the spec of
``--candidate KIND:PATH``, GELU names by vocabulary, the adapter and hooks that publish a model's
tensors as contract taps, and ``CandidateSide``. Kept apart from the factory so that the kinds'
modules (candidates_hf, candidates_ppb, onnx_side) import these without importing the factory that
imports them (the harness has no import cycles: pyproject.toml, [tool.importlinter])."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from bert_torch._io import InputFileError
from bert_torch.commands import foreign
from bert_torch.modeling import ACTIVATIONS, BertConfig, gelu_erf, gelu_tanh
from bert_torch.taps import TapError, tap

from parity.candidates.options import one_candidate
from parity.inputs import sha256
from parity.sides.base import TorchSide

KINDS = ("bert_torch", "hf", "module", "ppb", "onnx")


class CandidateError(ValueError):
    """A candidate that cannot be used as given: exit 2, one line naming the spec at fault."""


class _HarnessError(Exception):
    """An error of the harness's own code (the consumer of streamed taps) raised inside a candidate's
    forward: carried through the candidate's boundary unchanged, then raised again as itself."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


# This tool's own bad-input errors, raised while a candidate's code runs (by the hooks, the tap map's
# checks, a file read): they name their culprit already, so ``foreign`` passes them through.
OWN_ERRORS = (CandidateError, InputFileError, TapError, _HarnessError)


@dataclass(frozen=True)
class CandidateSpec:
    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_candidate(text: str) -> CandidateSpec:
    """``KIND:PATH`` -> spec; an unknown kind or a missing path is a CandidateError (exit 2)."""
    kind, sep, path = (text or "").partition(":")
    if not sep or not kind:
        raise CandidateError(f"--candidate {text!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise CandidateError(f"--candidate {text!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not path:
        raise CandidateError(f"--candidate {text!r}: no path after {kind}:")
    if kind != "module" and not os.path.exists(path):
        raise CandidateError(f"--candidate {text!r}: {path!r}: no such file or directory")
    return CandidateSpec(kind, path)


def candidate_spec(candidate: Optional[str], torch_weights: Optional[str],
                   torch_bert_config: Optional[str] = None) -> CandidateSpec:
    """The candidate of a command line: exactly one of ``--candidate`` and ``--torch-weights`` (which means
    ``bert_torch:W``). A ``bert_torch`` candidate's ``path`` is its weights file, however it was given, so code
    that reads the weights file (diagnose's bit-for-bit check) takes it from the spec."""
    one_candidate(candidate, torch_weights)
    if not candidate:   # the weights loader names a missing or unreadable file itself
        return CandidateSpec("bert_torch", torch_weights)
    spec = parse_candidate(candidate)
    if spec.kind != "bert_torch" and torch_bert_config:
        raise CandidateError(f"--torch-bert-config applies to bert_torch candidates; {spec.kind}: candidates "
                             f"bring their own config")
    return spec


# ---------------------------------------------------------------------------------------------
# GELU by meaning: the same word names different functions in different vocabularies.

def official_gelu(hidden_act) -> Optional[str]:
    """``tanh``/``erf`` for a bert_config.json ``hidden_act`` read as the official graph and
    ``bert_torch`` read it (bert-tensorflow 1.0.4's ``gelu`` is the tanh form); None: no GELU."""
    fn = ACTIVATIONS.get(str(hidden_act).lower())
    return {gelu_tanh: "tanh", gelu_erf: "erf"}.get(fn)


# transformers' meanings (its ACT2FN): "gelu" is the exact erf form there.
HF_GELU = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
           "gelu_fast": "tanh", "gelu_accurate": "tanh"}
# What to write in each vocabulary to get each form (the gelu_variant hint speaks the user's words).
HF_GELU_NAMES = {"tanh": "gelu_new", "erf": "gelu", "file": "config.json"}
OFFICIAL_GELU_NAMES = {"tanh": "gelu", "erf": "gelu_erf", "file": "bert_config.json"}


@contextlib.contextmanager
def quiet_transformers():
    """transformers' loading progress bars and warnings off while a candidate loads (stderr is for
    the one-line error of bad input); its settings are restored after. A no-op without transformers."""
    if "transformers" not in sys.modules and importlib.util.find_spec("transformers") is None:
        yield
        return
    from transformers.utils import logging as hf_logging
    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(hf_logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# The adapter: any model called as bert_torch models are, taps published by hooks.

class _Adapter(torch.nn.Module):
    """``forward(input_ids, token_type_ids, attention_mask)`` -> ``call(model, ...)``; ``config``
    carries what TorchSide reads (num_hidden_layers, hidden_act)."""

    def __init__(self, model: torch.nn.Module, config, call: Callable):
        super().__init__()
        self.inner = model
        self.config = config
        self._call = call

    def forward(self, input_ids, token_type_ids, attention_mask):
        return self._call(self.inner, input_ids, token_type_ids, attention_mask)


def _keyword_call(model, input_ids, token_type_ids, attention_mask):
    return model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


def _tensor(name: str, module, x, what: str = "output"):
    """``x`` when it is a tensor; else a TypeError (raised inside the candidate's forward: bad input naming
    the candidate) saying which tap's module gave what instead."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"tap {name}: its module ({type(module).__name__}) has {type(x).__name__} as its {what}, "
                        f"not a tensor (or a tuple that starts with one)")
    return x


def output_hook(name: str):
    """A forward hook publishing a module's output (the first element of a tuple) as tap ``name``;
    an injected replacement becomes the module's output."""
    def hook(module, args, out):
        first = _tensor(name, module, out[0] if isinstance(out, tuple) and out else out)
        new = tap(name, first)
        if new is first:
            return None
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
    return hook


def input_hook(name: str):
    """A forward pre-hook publishing a module's first input as tap ``name`` (and replacing it)."""
    def hook(module, args):
        first = _tensor(name, module, args[0] if args else None, "first positional input")
        new = tap(name, first)
        return None if new is first else (new,) + tuple(args[1:])
    return hook


def position_hook(name: str):
    """Position-embedding lookups come out [1,T,H] (HF: one row of ids, broadcast) or [B,T,H] (the
    original port: the same ids in every row); the contract's layout is [T,H], the first row."""
    def hook(module, args, out):
        if _tensor(name, module, out).dim() != 3:
            return tap(name, out)
        new = tap(name, out[0])
        return None if new is out[0] else new.unsqueeze(0).expand_as(out)
    return hook


def squad_hook(module, args, out):
    """``qa_outputs`` gives [B,T,2]; the contract has start and end logits [B,T] each."""
    _tensor("squad/*", module, out)
    start, end = tap("squad/start_logits", out[..., 0]), tap("squad/end_logits", out[..., 1])
    if start is out[..., 0] and end is out[..., 1]:
        return None
    return torch.stack([start, end], dim=-1)


HOOKS = {"output": output_hook, "input": input_hook, "position": position_hook}


def install_hooks(model: torch.nn.Module, tap_map: Mapping[str, str], where: str) -> None:
    """``tap_map``: ``module path[#input|#position]`` -> contract tap. A path naming no module is
    a CandidateError (exit 2)."""
    modules = dict(model.named_modules())
    for spec, name in tap_map.items():
        path, _, how = spec.partition("#")
        if path not in modules:
            raise CandidateError(f"{where}: the tap map names module {path!r} (for {name}), "
                                 f"which the model does not have")
        if how not in ("", *HOOKS):
            raise CandidateError(f"{where}: tap map entry {spec!r}: unknown hook kind {how!r}; "
                                 f"expected #input or #position")
        if name == "squad/*":
            modules[path].register_forward_hook(squad_hook)
        elif how == "input":
            modules[path].register_forward_pre_hook(input_hook(name))
        else:
            modules[path].register_forward_hook(HOOKS[how or "output"](name))


class CandidateSide(TorchSide):
    """A TorchSide over an adapter, with the candidate's own description, record and GELU words."""

    def __init__(self, model: _Adapter, spec: CandidateSpec, description: str, *, device: str = "cpu",
                 head: Optional[str] = None, gelu: Optional[str] = None, gelu_names: Optional[dict] = None,
                 unobservable: Optional[Mapping[str, str]] = None, files: Optional[Mapping[str, str]] = None):
        super().__init__(model, device, head)
        self.spec = spec
        self.description = description
        self.gelu, self.gelu_names = gelu, gelu_names
        self.unobservable = dict(unobservable or {})
        self.tap_names = [t for t in self.tap_names if t not in self.unobservable]
        self.files = dict(files or {})

    def _forward(self, inputs) -> None:
        # The user's model (or transformers', or the port's) runs here: whatever it raises is bad input
        # naming the candidate, never an internal error of the tool, nor its exit code.
        with foreign(f"--candidate {self.spec}", ours=OWN_ERRORS):
            super()._forward(inputs)

    def _twin(self, dtype: torch.dtype) -> "CandidateSide":
        # A deep copy of the user's model (the precision ladder's float64 rung): its own code may refuse it.
        with foreign(f"--candidate {self.spec}: copying its model to {dtype}", ours=OWN_ERRORS):
            return super()._twin(dtype)

    def stream(self, inputs, consume, inject=None, computed: bool = False) -> None:
        """``TorchSide.stream``, with ``consume`` (the harness's code, called from inside the candidate's
        forward) failing as itself, not as the candidate."""
        def sink(name, value):
            try:
                consume(name, value)
            except Exception as e:   # noqa: BLE001 - carried through the boundary, raised again below
                raise _HarnessError(e) from None
        try:
            super().stream(inputs, sink, inject, computed)
        except _HarnessError as e:
            raise e.error from None

    def tensors(self) -> dict:
        """The model's tensors under weight-file names (diagnose's bit-for-bit check): the adapter's
        ``inner.`` and a task model's ``bert.`` prefix dropped; buffers that are no weights left out."""
        from bert_torch.weights import file_name
        return {file_name(k[len("inner."):]): v.detach().cpu().float().numpy()
                for k, v in self.model.state_dict().items() if not k.endswith("position_ids")}

    def record(self) -> dict:
        """The report's record of the candidate (CONTRACT.md: kind, path, sha256)."""
        return {"kind": self.spec.kind, "path": self.spec.path,
                "sha256": {label: sha256(p) for label, p in self.files.items() if os.path.isfile(p)},
                "gelu": self.gelu, "device": str(self.device), "not_observable": dict(self.unobservable)}



def check_sizes(values: Mapping[str, int], config: BertConfig, where: str) -> None:
    """The candidate's sizes against the reference's bert_config: a mismatch is bad input."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size")
    diff = [f"{k} {values.get(k)!r} (reference: {getattr(config, k)!r})" for k in keys
            if values.get(k) is not None and values.get(k) != getattr(config, k)]
    if diff:
        raise CandidateError(f"{where}: does not match the reference's bert_config: {', '.join(diff)}")
