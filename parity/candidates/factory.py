"""Any PyTorch BERT as the candidate side: ``--candidate KIND:PATH`` (CONTRACT.md).

    side = make_candidate(parse_candidate("hf:out/my-bert"), config=reference_config)
    side.run(inputs, fetch=None, inject=None)   # the Side protocol of parity.sides.base

Kinds:

* ``bert_torch:W``: this project's model (what ``--torch-weights W`` always meant).
* ``hf:DIR``: a transformers ``save_pretrained`` directory (``config.json`` and ``model.safetensors`` or
  ``pytorch_model.bin``); the class comes from ``architectures``. Taps are read by forward hooks on
  transformers' own modules and by an attention function registered in HF's attention-function
  registry (``AttentionInterface``), which observes query/key/value/scores/probs and delegates the
  attention itself to the implementation the model was loaded with (sdpa, eager, ...).
* ``module:pkg.mod:factory``: a user's ``nn.Module``; ``factory()`` returns ``{"model": module,
  "taps": {module path: contract tap}, ...}`` (see ``parity/examples/my_bert.py``).

Every candidate side is a ``parity.sides.base.TorchSide`` over an adapter module whose
``forward(input_ids, token_type_ids, attention_mask)`` calls the user's model: the hooks publish
their tensors through ``bert_torch.taps.tap``, so recording, injection and ``computed`` (diagnose's
local-vs-inherited analysis) are those of ``bert_torch.taps.Taps``, with nothing re-implemented.
A candidate declares the contract taps it cannot observe in ``unobservable`` (tap -> reason);
``parity.compare.core`` lists them as not observable and says how many taps the verdict rests on.

``make_candidate(..., transform="compile" | "int8-dynamic")`` wraps the side of any kind backed by a PyTorch module
in ``parity.candidates.transforms`` (torch.compile, dynamic int8 of the Linear layers).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Callable, Mapping, Optional

import torch

from bert_torch.commands import foreign
from bert_torch.modeling import BertConfig
from bert_torch.taps import tap_names

from parity.inputs import sha256
from parity.numerics.precision import Tier
from parity.sides.base import TAP_HEADS, TorchSide

from parity.candidates.spec import (  # noqa: F401  (re-exported: the public names of the candidates)
    HF_GELU, HF_GELU_NAMES, HOOKS, KINDS, OFFICIAL_GELU_NAMES, OWN_ERRORS, CandidateError, CandidateSide,
    CandidateSpec, _Adapter, _keyword_call, candidate_spec, check_sizes, input_hook, install_hooks, official_gelu,
    output_hook, parse_candidate, position_hook, quiet_transformers, squad_hook)

# ---------------------------------------------------------------------------------------------
# The factory.

def make_candidate(spec: CandidateSpec, *, config: BertConfig, torch_config: Optional[BertConfig] = None,
                   device: str = "cpu", onnx_optimization: str = "all", tier: Tier = Tier(),
                   transform: Optional[str] = None):
    """The candidate side for ``spec``; ``config`` is the reference's (shapes are checked against
    it), ``torch_config`` the config a ``bert_torch`` candidate is built with (default ``config``);
    ``onnx_optimization``: onnxruntime's graph optimisation for an ``onnx`` candidate (all, off);
    ``tier``: the precision the candidate runs in (``--precision``; parity.numerics.precision);
    ``transform``: ``compile`` or ``int8-dynamic`` (``--transform``; parity.candidates.transforms), applied to the
    side built as without it. A transform that cannot apply (an onnx file, a reduced tier, int8 off the CPU) is a
    CandidateError before anything loads."""
    if transform is not None:
        from parity.candidates.transforms import apply_transform, check_transform
        check_transform(transform, spec.kind, device, tier)
        side = make_candidate(spec, config=config, torch_config=torch_config, device=device, tier=tier)
        return apply_transform(side, transform, f"--candidate {spec}")
    if spec.kind == "onnx":
        if device != "cpu":
            raise CandidateError(f"--candidate {spec}: onnx candidates run on onnxruntime's CPU provider; "
                                 f"--device {device} does not apply")
        if tier.reduced:
            raise CandidateError(f"--candidate {spec}: --precision {tier.name} applies to PyTorch candidates; "
                                 f"an onnx file carries its own precision")
        from parity.candidates.onnx import OnnxSide
        return OnnxSide(spec, config, onnx_optimization)
    if spec.kind == "bert_torch":   # this project's own model and loader: an error there is ours to report
        side = bert_torch_candidate(spec, torch_config or config, device)
        return side.with_tier(tier) if tier.reduced else side
    # Someone else's code builds the model (a user's factory, transformers, the port) and the tier's copy
    # of it: whatever it raises or exits with is bad input naming the candidate.
    with foreign(f"--candidate {spec}", ours=OWN_ERRORS):
        side = _make_foreign_candidate(spec, config, device)
        return side.with_tier(tier) if tier.reduced else side


def _make_foreign_candidate(spec: CandidateSpec, config: BertConfig, device: str):
    with quiet_transformers():
        if spec.kind == "hf":
            from parity.candidates.hf import hf_candidate
            return hf_candidate(spec, config, device)
        if spec.kind == "ppb":
            from parity.candidates.ppb import ppb_candidate
            return ppb_candidate(spec, config, device)
        return module_candidate(spec, config, device)


def bert_torch_candidate(spec: CandidateSpec, config: BertConfig, device: str) -> TorchSide:
    side = TorchSide.from_weights(spec.path, config, device=device)
    side.gelu, side.gelu_names = official_gelu(config.hidden_act), OFFICIAL_GELU_NAMES
    side.unobservable = {}
    side.record = lambda: {"kind": "bert_torch", "path": spec.path, "sha256": {"weights": sha256(spec.path)},
                           "gelu": side.gelu, "device": device, "not_observable": {}}
    return side


def import_factory(target: str) -> Callable:
    """``pkg.mod:factory`` -> the callable; anything that does not import is a CandidateError."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise CandidateError(f"--candidate module:{target}: expected module:pkg.mod:factory")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:   # a user's module may raise anything at import; one line says what
        raise CandidateError(f"--candidate module:{target}: cannot import {mod_name} "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CandidateError(f"--candidate module:{target}: {mod_name} has no callable {attr!r}")
    return fn


def module_candidate(spec: CandidateSpec, config: BertConfig, device: str) -> CandidateSide:
    """``module:pkg.mod:factory``: ``factory(config)`` returns a dict with ``model`` (an nn.Module),
    ``taps`` (module path -> contract tap; ``path#input`` taps a module's input, ``path#position``
    a [1,T,H] position lookup, tap ``squad/*`` a [B,T,2] QA output), and optionally ``forward``
    (``forward(model, input_ids, token_type_ids, attention_mask)``; default: keyword call),
    ``head``, ``gelu`` ("tanh"/"erf") and ``unobservable`` (tap -> reason)."""
    where = f"--candidate {spec}"
    built = import_factory(spec.path)(config)
    if not isinstance(built, Mapping) or not isinstance(built.get("model"), torch.nn.Module) \
            or not isinstance(built.get("taps"), Mapping):
        raise CandidateError(f"{where}: the factory must return a dict with 'model' (an nn.Module) and 'taps'")
    head = built.get("head")
    if head not in (None, *TAP_HEADS):
        raise CandidateError(f"{where}: head {head!r}; expected one of None, {', '.join(TAP_HEADS)}")
    ordered = tap_names(config.num_hidden_layers, TAP_HEADS.get(head))
    known = set(ordered) | {"squad/*"}
    unknown = sorted(set(built["taps"].values()) - known)
    if unknown:
        raise CandidateError(f"{where}: the tap map names {unknown[0]!r}, which is no contract tap of this model")
    model = built["model"]
    install_hooks(model, built["taps"], where)
    mapped = set(built["taps"].values())
    if "squad/*" in mapped:
        mapped |= {"squad/start_logits", "squad/end_logits"}
    declared = {**{t: "not in the tap map of " + spec.path for t in known - mapped}, **(built.get("unobservable") or {})}
    unobservable = {t: declared[t] for t in ordered if t in declared}   # in forward order
    adapter = _Adapter(model, config, built.get("forward") or _keyword_call)
    src = getattr(sys.modules.get(spec.path.partition(":")[0]), "__file__", None)
    return CandidateSide(adapter, spec, f"module {spec.path} ({type(model).__name__}, "
                         f"{len(mapped - {'squad/*'})} taps mapped)", device=device, head=head,
                         gelu=built.get("gelu"), unobservable=unobservable, files={"module": src} if src else {})
