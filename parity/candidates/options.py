"""The flags of ``bert-parity export-onnx``, declared once as the typed options it runs on
(``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``bert-parity export-onnx --help`` builds its parser from here
without importing torch or onnx (``parity.candidates.export_onnx`` imports both).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import input_file, output_file
from bert_torch.options import Options, flag

from parity.inputs import BadInput


@dataclasses.dataclass(frozen=True)
class ExportOnnxOptions(Options):
    """``bert-parity export-onnx`` (``python -m parity.candidates.export_onnx``)."""
    PROG: ClassVar[str] = "bert-parity export-onnx"
    DESCRIPTION: ClassVar[str] = "Export a PyTorch candidate to ONNX with every tap as a graph output"

    candidate: str = flag("--candidate", required=True, help="KIND:PATH (bert_torch:, hf:, ppb:, module:)")
    bert_config: str = flag("--bert-config", required=True, type=input_file("bert_config.json"),
                            help="the reference's bert_config.json (sizes, and the GELU of a bert_torch candidate)")
    out: str = flag("--output", "--out", required=True, type=output_file("ONNX file"), help="ONNX file to write")
    optimize: bool = flag("--optimize", action="store_true", default=False,
                          help="run onnxruntime's transformer fusions (model_type bert: Attention, GELU, LayerNorm); "
                               "taps they fuse away are recorded as not observable, with the reason")
    quantize: Optional[str] = flag("--quantize", choices=("int8",),
                                   help="int8: onnxruntime's dynamic quantization of the Linear layers (MatMul); "
                                        "recorded in the file's metadata")
    weight_type: str = flag("--weight-type", default="QInt8", choices=("QInt8", "QUInt8"),
                            help="--quantize's weight type: QInt8 (U8S8 kernels, the default) or QUInt8 (U8U8)")

    def check(self) -> None:
        if self.weight_type != "QInt8" and not self.quantize:
            raise BadInput(f"--weight-type {self.weight_type} applies to --quantize int8")
