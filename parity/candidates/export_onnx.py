"""``--candidate onnx:FILE``: an ONNX export run by onnxruntime on CPU, taps as graph outputs (extra ``onnx``).

An ONNX graph keeps no module boundaries to hook, so the taps must be graph outputs named by their
contract names. ``python -m parity.candidates.export_onnx`` writes such a file from any PyTorch candidate:

    python -m parity.candidates.export_onnx --candidate hf:DIR --bert-config bert_config.json --out model.onnx

It traces the candidate (``torch.onnx.export``, TorchScript exporter) under ``bert_torch.taps.Taps``, so every
tap the candidate publishes becomes a graph output; batch and sequence stay dynamic. The file's
metadata (``bert_parity.taps``, ``bert_parity.gelu``, ``bert_parity.source``) says which taps it carries and
which GELU the source computed. A user's own ONNX file works when its inputs are ``input_ids``,
``token_type_ids`` and ``attention_mask`` and its taps are outputs named as the contract's.

``--onnx-optimization all|off`` (compare) picks onnxruntime's graph optimisation level: fusions are a
real source of mismatches, so both are worth a run. Taps as outputs keep their tensors alive, which can
block a fusion that would otherwise run (the comparison sees the graph with its taps, not without).
No injection: onnxruntime cannot replace an intermediate value, so ``diagnose`` refuses this kind.
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings
from typing import Optional

import torch

from bert_torch._io import atomic_output, check_not_input, note_input
from bert_torch.modeling import BertConfig
from bert_torch.commands import ArgumentParser, foreign, run_main
from bert_torch.flags import input_file, output_file
from bert_torch.taps import Taps

from parity.candidates.factory import OWN_ERRORS, CandidateError, CandidateSide, make_candidate, parse_candidate
from parity.candidates.onnx import INPUTS, OPTIMIZATION, OnnxSide  # noqa: F401  (re-exported)

class _TapsAsOutputs(torch.nn.Module):
    """The candidate's model, returning every published tap as an output, in forward order."""

    def __init__(self, side, names: list[str]):
        super().__init__()
        self.model, self.names = side.model, names
        self.pretraining = getattr(side, "head", None) == "pretraining"

    def forward(self, input_ids, token_type_ids, attention_mask):
        with Taps(record=True) as taps:
            (self.model.bert if self.pretraining else self.model)(input_ids, token_type_ids, attention_mask)
        return tuple(taps.values[n] for n in self.names)


def inline_shared_initializers(graph) -> int:
    """Replaces each ``Identity`` of an initializer by an initializer of its own (returns how many). torch's
    exporter merges parameters of equal value (a freshly initialised model's LayerNorm weights are all ones)
    into one initializer read through Identity nodes, and onnxruntime's graph optimisations (``ORT_ENABLE_ALL``)
    remove such an Identity while a node still reads its output: the file would not load. A trained model
    seldom has equal parameters, so this copies little."""
    from onnx import numpy_helper
    inits = {i.name: i for i in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits]
    for node in aliases:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0]))
        graph.node.remove(node)
    return len(aliases)


def export_onnx(side, path: str, vocab_size: int, batch: int = 2, seq: int = 16, opset: int = 17) -> list[str]:
    """Writes ``side``'s model to ``path`` with its taps as outputs; returns the tap names. The file is written
    aside and renamed into place: no part of it is left behind by a failure, SIGTERM or SIGINT."""
    import onnx
    names = list(side.tap_names)
    # The tracer records ops, not values: any id the embedding can look up will do (the smallest vocabulary
    # is the candidate's; 1000 is a plain word piece in BERT's own).
    ids = torch.full((batch, seq), min(1000, vocab_size - 1), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0   # a padded row, so the mask path is traced as it runs
    # Tracing runs the candidate's forward: someone else's code, unless it is bert_torch's own model.
    traced = (foreign(f"--candidate {side.spec}: cannot be exported to ONNX", ours=OWN_ERRORS)
              if isinstance(side, CandidateSide) else contextlib.nullcontext())
    with atomic_output(path, "--output") as tmp:
        # The tracer warns about Python conditions it freezes (e.g. transformers' "no padding, no mask"
        # shortcut); the traced row with padding takes the general path, right for every input.
        with traced, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TapsAsOutputs(side, names).eval(), (ids, torch.zeros_like(ids), mask), tmp,
                              dynamo=False, opset_version=opset, input_names=list(INPUTS), output_names=names,
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in INPUTS})
        model = onnx.load(tmp)
        inline_shared_initializers(model.graph)
        for key, value in (("bert_parity.taps", json.dumps(names)), ("bert_parity.gelu", side.gelu or ""),
                           ("bert_parity.source", side.description)):
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)
    return names


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="python -m parity.candidates.export_onnx",
                        description="Export a PyTorch candidate to ONNX with every tap as a graph output")
    ap.add_argument("--candidate", required=True, help="KIND:PATH (bert_torch:, hf:, ppb:, module:)")
    ap.add_argument("--bert-config", required=True, type=input_file("bert_config.json"),
                    help="the reference's bert_config.json (sizes, and "
                         "the GELU of a bert_torch candidate)")
    ap.add_argument("--output", "--out", dest="out", required=True, type=output_file("ONNX file"),
                    help="ONNX file to write")
    return run_main(lambda: _export(ap.parse_args(argv)))


def _export(args) -> int:
    spec = parse_candidate(args.candidate)
    if spec.kind == "onnx":
        raise CandidateError(f"--candidate {spec}: already ONNX")
    if spec.kind != "module":   # the candidate's own file or folder is an input, never the output
        note_input(spec.path)
    check_not_input(args.out, "--output")
    config = BertConfig.from_json_file(args.bert_config)
    side = make_candidate(spec, config=config)
    names = export_onnx(side, args.out, config.vocab_size)
    print(f"{args.out}: {len(names)} taps as graph outputs, from {side.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
