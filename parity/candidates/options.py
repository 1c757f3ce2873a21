"""The flags that choose and shape a candidate (every command that runs one: compare, diagnose, evaluate), and
those of ``bert-parity export-onnx``, declared once as typed options (``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``--help`` builds its parser from here without importing
torch or onnx (``parity.candidates.export_onnx`` and ``parity.candidates.transforms`` import both).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import input_file, output_file
from bert_torch.options import Options, flag

from parity.inputs import BadInput

TRANSFORMS = ("compile", "int8-dynamic")   # --transform's names (parity.candidates.transforms applies them)


def one_candidate(candidate: Optional[str], torch_weights: Optional[str]) -> None:
    """Exactly one of ``--candidate`` and ``--torch-weights`` (which means ``bert_torch:W``), else bad input."""
    if bool(candidate) == bool(torch_weights):
        raise BadInput("give exactly one of --candidate KIND:PATH and --torch-weights W"
                       + (" (both were given)" if candidate else ""))


@dataclasses.dataclass(frozen=True)
class CandidateOptions(Options):
    """The PyTorch side of a run: which candidate, on which device, in which arithmetic and form."""
    torch_weights: Optional[str] = flag("--torch-weights", type=input_file("weights file"),
                                        help="safetensors or .bin/.pt state dict (= --candidate bert_torch:W)")
    candidate: Optional[str] = flag("--candidate",
                                    help="KIND:PATH, the PyTorch side: bert_torch:W, hf:DIR, ppb:FILE, onnx:FILE, "
                                         "module:pkg.mod:factory (docs: candidates); exactly one of --candidate "
                                         "and --torch-weights")
    onnx_optimization: str = flag("--onnx-optimization", default="all", choices=("all", "off"),
                                  help="onnxruntime graph optimisation of an onnx: candidate")
    torch_bert_config: Optional[str] = flag("--torch-bert-config", type=input_file("bert_config.json"),
                                            help="config for the PyTorch side only (default: --bert-config)")
    device: str = flag("--device", default="cpu", help="PyTorch device: cpu, cuda, cuda:1 ...")
    precision: str = flag("--precision", default="fp32",
                          help="the candidate's arithmetic (the reference stays the float32 graph): fp32 (TF32 "
                               "off), tf32 (CUDA's, or an exact emulation on CPU), bf16, fp16")
    precision_mode: str = flag("--precision-mode", default="autocast",
                               help="bf16/fp16 as torch.autocast, or cast: the whole model cast, as for inference")
    transform: Optional[str] = flag("--transform", choices=TRANSFORMS,
                                    help="run a PyTorch candidate transformed, float32 only: compile "
                                         "(torch.compile, inductor; exact) or int8-dynamic (its nn.Linear layers "
                                         "dynamically quantized to int8, CPU; lossy). ONNX files: export-onnx "
                                         "--optimize/--quantize")


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
