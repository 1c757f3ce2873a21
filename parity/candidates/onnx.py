"""``--candidate onnx:FILE``: an ONNX graph run by onnxruntime on CPU, its taps the graph outputs named as
contract taps (``parity.candidates.export_onnx`` writes such files; README, "Candidates")."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from bert_torch.commands import foreign, verbose
from bert_torch._io import regular_file
from bert_torch.modeling import BertConfig
from bert_torch.taps import tap_names

from parity.candidates.spec import CandidateError, CandidateSpec
from parity.sides.base import SideBase
from parity.inputs import sha256


INPUTS = ("input_ids", "token_type_ids", "attention_mask")
INPUT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}   # the graph's input type -> what is fed
# An input's axes: what a fixed size is called, the axis's name, and the flag that sets it.
AXES = (("batch size", "batch", "--batch-size"), ("sequence length", "sequence", "--seq-len"))
OPTIMIZATION = ("all", "off")
# Operators of a quantized graph (onnxruntime's dynamic and static quantization, as files hold them).
QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention",
                           "QLinearMatMul", "QGemm", "QuantizeLinear", "DequantizeLinear", "ConvInteger",
                           "QEmbedLayerNormalization", "DynamicQuantizeLSTM"})
WEIGHT_TYPES = {2: "QUInt8", 3: "QInt8"}   # onnx TensorProto UINT8, INT8


def quantization_info(path: str, meta: dict) -> Optional[dict]:
    """How the file is quantized, or None: its metadata when ``export-onnx --quantize`` wrote it
    (``bert_parity.quantize``, ``bert_parity.weight_type``), else read off its graph: the quantized operators
    and the element type of the MatMulInteger weights (int8: QInt8, the U8S8 kernels; uint8: QUInt8, U8U8).
    Names which lookups (Gather) were quantized too: the embedding tables."""
    info = {"method": meta.get("bert_parity.quantize"), "weight_type": meta.get("bert_parity.weight_type")}
    try:
        import onnx
        model = onnx.load(path, load_external_data=False)
    except Exception:   # noqa: BLE001 - onnxruntime loaded it; this second look only adds detail
        return info if info["method"] else None
    graph = model.graph
    ops = sorted({n.op_type for n in graph.node} & QUANTIZED_OPS)
    if not ops and not info["method"]:
        return None
    inits = {i.name: i.data_type for i in graph.initializer}
    types = sorted({WEIGHT_TYPES.get(inits.get(n.input[1]), "other") for n in graph.node
                    if n.op_type == "MatMulInteger" and len(n.input) > 1 and n.input[1] in inits})
    info["method"] = info["method"] or "quantized operators " + ", ".join(ops)
    info["weight_type"] = info["weight_type"] or ("/".join(types) if types else None)
    info["operators"] = ops
    # a Gather whose table is an 8-bit initializer: onnxruntime's quantize_dynamic quantizes lookups by default
    info["quantized_lookups"] = sum(1 for n in graph.node if n.op_type == "Gather" and n.input
                                    and inits.get(n.input[0]) in WEIGHT_TYPES)
    return info


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
        # onnxruntime logs a failing node to stderr itself, then raises what the one error line reports;
        # its own lines (2: warnings and up) come with --verbose only.
        options.log_severity_level = 2 if verbose() else 4
        if not os.path.isdir(spec.path):   # a folder is onnxruntime's to refuse, in its words
            regular_file(spec.path, "ONNX file")   # a FIFO would block onnxruntime's open
        # onnxruntime raises its own types for unreadable or invalid graphs
        with foreign(f"{where}: onnxruntime cannot load it", ours=(CandidateError,)):
            self.session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
        given = {i.name: i for i in self.session.get_inputs()}
        if set(given) != set(INPUTS):
            raise CandidateError(f"{where}: graph inputs {sorted(given)}; expected {', '.join(INPUTS)}")
        for name in INPUTS:   # what run() feeds: [batch, sequence] integer ids
            if given[name].type not in INPUT_TYPES:
                raise CandidateError(f"{where}: the graph's {name} is {given[name].type}; expected "
                                     f"{' or '.join(INPUT_TYPES)} (token ids)")
            if given[name].shape is not None and len(given[name].shape) != 2:
                raise CandidateError(f"{where}: the graph's {name} has shape {given[name].shape}; expected "
                                     f"[batch, sequence]")
        self.input_types = {n: INPUT_TYPES[given[n].type] for n in INPUTS}
        # Axes the graph fixed at export (an int, where a dynamic axis has a name): the inputs must match them.
        self.fixed = {n: [d if isinstance(d, int) else None for d in (given[n].shape or (None, None))]
                      for n in INPUTS}
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = [o.name for o in self.session.get_outputs()]
        head = "classifier" if "classifier/logits" in outputs else "squad" if "squad/start_logits" in outputs else None
        contract = tap_names(config.num_hidden_layers, head)
        self.tap_names = [t for t in contract if t in outputs]
        if not self.tap_names:
            raise CandidateError(f"{where}: no graph output is named as a contract tap (e.g. layer_0/output); "
                                 f"write the file with python -m parity.candidates.export_onnx")
        # export-onnx --optimize records why each tap it lost is gone (fused away); other files' absent taps are
        # simply not outputs. A tap is never taken for observable on a file's word: only graph outputs are.
        reasons = _json_dict(meta.get("bert_parity.unobservable"))
        self.unobservable = {t: str(reasons.get(t) or f"not a graph output of {os.path.basename(spec.path)}")
                             for t in contract if t not in outputs}
        self.spec, self.optimization, self.gelu = spec, optimization, meta.get("bert_parity.gelu")
        self.gelu_names = None
        self.optimize = meta.get("bert_parity.optimize") or None
        self.quantization = quantization_info(spec.path, meta)
        q = self.quantization or {}
        form = "".join([f"; transformer fusions ({self.optimize}: {meta.get('bert_parity.fusions', 'not recorded')})"
                        if self.optimize else "",
                        f"; int8: {q['method']}, weights {q['weight_type'] or 'unknown'}" if q else ""])
        self.description = (f"onnxruntime {ort.__version__} CPU, graph optimisation {optimization}, {spec.path} "
                            f"({meta.get('bert_parity.source', 'source not recorded')}; GELU {self.gelu or 'unknown'}"
                            f"{form})")

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Inputs of ``shape`` [B, T] fit the graph's fixed axes, else a CandidateError saying which flag to change."""
        where = f"--candidate {self.spec}"
        for name in INPUTS:
            for axis, (size, given) in enumerate(zip(self.fixed[name], shape)):
                if size is not None and size != given:
                    what, axis_name, flag = AXES[axis]
                    raise CandidateError(f"{where}: the graph's {name} has a fixed {what} {size}; {flag} {given} "
                                         f"cannot run: re-export with a dynamic {axis_name} axis or pass {flag} {size}")

    def run(self, inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        if inject:
            raise CandidateError(f"--candidate {self.spec}: onnxruntime cannot replace an intermediate value "
                                 f"({sorted(inject)[0]}): onnx candidates are compared, not diagnosed")
        self.check_shape(np.shape(inputs.input_ids))
        names = self.tap_names if fetch is None else [n for n in fetch if n in self.tap_names]
        feed = {n: np.asarray(a, self.input_types[n]) for n, a in
                zip(INPUTS, (inputs.input_ids, inputs.token_type_ids, inputs.input_mask))}
        # The graph is someone else's: what onnxruntime raises running it names the candidate.
        with foreign(f"--candidate {self.spec}", ours=(CandidateError,)):
            return {n: np.asarray(v, np.float32) for n, v in zip(names, self.session.run(names, feed))}

    def close(self) -> None:
        self.session = None

    def record(self) -> dict:
        return {"kind": "onnx", "path": self.spec.path, "sha256": {"onnx": sha256(self.spec.path)},
                "gelu": self.gelu, "device": "cpu", "onnx_optimization": self.optimization,
                "optimize": self.optimize, "quantization": self.quantization,
                "not_observable": dict(self.unobservable)}


def _json_dict(text: Optional[str]) -> dict:
    """A metadata value holding a JSON object, or {} (absent, or written by someone else in another form)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
