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

import argparse
import json
import os
import sys
import warnings
from typing import Optional

import numpy as np
import torch

from bert_torch.modeling import BertConfig
from bert_torch.taps import Taps, tap_names

from .candidates import CandidateError, CandidateSpec, make_candidate, parse_candidate
from .inputs import sha256

INPUTS = ("input_ids", "token_type_ids", "attention_mask")
OPTIMIZATION = ("all", "off")


class OnnxSide:
    """A Side over an onnxruntime session; taps are the graph outputs named as contract taps."""

    name = "onnx"

    def __init__(self, spec: CandidateSpec, config: BertConfig, optimization: str = "all"):
        import onnxruntime as ort
        where = f"--candidate {spec}"
        if optimization not in OPTIMIZATION:
            raise CandidateError(f"--onnx-optimization {optimization!r}: expected one of {', '.join(OPTIMIZATION)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == "all"
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        try:
            self.session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:   # onnxruntime raises its own types for unreadable or invalid graphs
            raise CandidateError(f"{where}: onnxruntime cannot load it ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        given = {i.name: i for i in self.session.get_inputs()}
        if set(given) != set(INPUTS):
            raise CandidateError(f"{where}: graph inputs {sorted(given)}; expected {', '.join(INPUTS)}")
        self.input_types = {n: np.int64 if "int64" in given[n].type else np.int32 for n in INPUTS}
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = [o.name for o in self.session.get_outputs()]
        head = "classifier" if "classifier/logits" in outputs else "squad" if "squad/start_logits" in outputs else None
        contract = tap_names(config.num_hidden_layers, head)
        self.tap_names = [t for t in contract if t in outputs]
        if not self.tap_names:
            raise CandidateError(f"{where}: no graph output is named as a contract tap (e.g. layer_0/output); "
                                 f"write the file with python -m parity.candidates_onnx")
        self.unobservable = {t: f"not a graph output of {os.path.basename(spec.path)}"
                             for t in contract if t not in outputs}
        self.spec, self.optimization, self.gelu = spec, optimization, meta.get("bert_parity.gelu")
        self.gelu_names = None
        self.description = (f"onnxruntime {ort.__version__} CPU, graph optimisation {optimization}, {spec.path} "
                            f"({meta.get('bert_parity.source', 'source not recorded')}; GELU {self.gelu or 'unknown'})")

    def run(self, inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        if inject:
            raise CandidateError(f"--candidate {self.spec}: onnxruntime cannot replace an intermediate value "
                                 f"({sorted(inject)[0]}): onnx candidates are compared, not diagnosed")
        names = self.tap_names if fetch is None else [n for n in fetch if n in self.tap_names]
        feed = {n: np.asarray(a, self.input_types[n]) for n, a in
                zip(INPUTS, (inputs.input_ids, inputs.token_type_ids, inputs.input_mask))}
        return {n: np.asarray(v, np.float32) for n, v in zip(names, self.session.run(names, feed))}

    def close(self) -> None:
        self.session = None

    def record(self) -> dict:
        return {"kind": "onnx", "path": self.spec.path, "sha256": {"onnx": sha256(self.spec.path)},
                "gelu": self.gelu, "device": "cpu", "onnx_optimization": self.optimization,
                "not_observable": dict(self.unobservable)}


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
    ap = argparse.ArgumentParser(prog="python -m parity.candidates_onnx",
                                 description="Export a PyTorch candidate to ONNX with every tap as a graph output")
    ap.add_argument("--candidate", required=True, help="KIND:PATH (bert_torch:, hf:, ppb:, module:)")
    ap.add_argument("--bert-config", required=True, help="the reference's bert_config.json (sizes, and "
                    "the GELU of a bert_torch candidate)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
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
