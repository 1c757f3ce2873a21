"""``--candidate onnx:FILE``: an ONNX graph run by onnxruntime on CPU, its taps the graph outputs named as
contract taps (``parity.candidates_onnx`` writes such files; README, "Candidates")."""
from __future__ import annotations

import os

import numpy as np

from bert_torch.modeling import BertConfig
from bert_torch.taps import tap_names

from .candidate_side import CandidateError, CandidateSpec
from .sides import SideBase
from .inputs import sha256


INPUTS = ("input_ids", "token_type_ids", "attention_mask")
OPTIMIZATION = ("all", "off")


class OnnxSide(SideBase):
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
