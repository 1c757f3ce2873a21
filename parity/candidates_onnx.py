"""``--candidate onnx:FILE``: an ONNX export run by onnxruntime on CPU, taps as graph outputs (extra ``onnx``).

An ONNX graph keeps no module boundaries to hook, so the taps must be graph outputs named by their
contract names. ``python -m parity.candidates_onnx`` writes such a file from any PyTorch candidate:

    python -m parity.candidates_onnx --candidate hf:DIR --bert-config bert_config.json --out model.onnx

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

import json
import os
import sys
import warnings
from typing import Optional

import torch

from bert_torch.modeling import BertConfig
from bert_torch.commands import ArgumentParser
from bert_torch.taps import Taps

from .candidates import CandidateError, make_candidate, parse_candidate
from .onnx_side import INPUTS, OPTIMIZATION, OnnxSide  # noqa: F401  (re-exported)

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


def export_onnx(side, path: str, batch: int = 2, seq: int = 16, opset: int = 17) -> list[str]:
    """Writes ``side``'s model to ``path`` with its taps as outputs; returns the tap names."""
    import onnx
    names = list(side.tap_names)
    ids = torch.full((batch, seq), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0   # a padded row, so the mask path is traced as it runs
    tmp = path + ".tmp"
    # The tracer warns about Python conditions it freezes (e.g. transformers' "no padding, no mask"
    # shortcut); the traced row with padding takes the general path, right for every input.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TapsAsOutputs(side, names).eval(), (ids, torch.zeros_like(ids), mask), tmp,
                          dynamo=False, opset_version=opset, input_names=list(INPUTS), output_names=names,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in INPUTS})
    model = onnx.load(tmp)
    for key, value in (("bert_parity.taps", json.dumps(names)), ("bert_parity.gelu", side.gelu or ""),
                       ("bert_parity.source", side.description)):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, tmp)
    os.replace(tmp, path)   # never a partial file at the final name
    return names


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="python -m parity.candidates_onnx",
                        description="Export a PyTorch candidate to ONNX with every tap as a graph output")
    ap.add_argument("--candidate", required=True, help="KIND:PATH (bert_torch:, hf:, ppb:, module:)")
    ap.add_argument("--bert-config", required=True, help="the reference's bert_config.json (sizes, and "
                    "the GELU of a bert_torch candidate)")
    ap.add_argument("--output", "--out", dest="out", required=True, help="ONNX file to write")
    args = ap.parse_args(argv)
    try:
        spec = parse_candidate(args.candidate)
        if spec.kind == "onnx":
            raise CandidateError(f"--candidate {spec}: already ONNX")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise CandidateError(f"--out {args.out}: its directory does not exist")
        side = make_candidate(spec, config=BertConfig.from_json_file(args.bert_config))
        names = export_onnx(side, args.out)
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(names)} taps as graph outputs, from {side.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
