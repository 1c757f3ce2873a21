"""The flags of ``bert-parity diagnose`` (compare's, and a calibration) and ``bert-parity calibrate``
(``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``--help`` is answered without importing torch.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import checkpoint, count, input_file, output_dir, output_file
from bert_torch.options import flag

from parity.compare.options import CompareOptions, RunOptions
from parity.inputs import MAX_THREADS, BadInput


@dataclasses.dataclass(frozen=True)
class DiagnoseOptions(CompareOptions):
    """``bert-parity diagnose`` (``python -m parity diagnose``): compare's flags, the TF graph run here."""
    PROG: ClassVar[str] = "bert-parity diagnose"
    DESCRIPTION: ClassVar[str] = ("Culprit block, root-cause hints, precision ladder, repro (compare's "
                                  "arguments; writes diagnosis.json/.md).")
    COMMAND: ClassVar[str] = "diagnose"

    report_dir: str = flag("--report-dir", required=True, type=output_dir("report folder", owner="diagnose"),
                           help="folder for diagnosis.json and diagnosis.md")
    calibration: Optional[str] = flag("--calibration", type=input_file("calibration file"),
                                      help="noise floors measured by `bert-parity calibrate` (default: PyTorch "
                                           "float32 vs float64, measured on the spot)")

    def check(self) -> None:
        if self.golden:
            raise BadInput("diagnose runs the TensorFlow graph itself (blocks are fed each other's inputs): "
                           "give --tf-checkpoint, not --golden")
        super().check()


@dataclasses.dataclass(frozen=True)
class CalibrateOptions(RunOptions):
    """``bert-parity calibrate`` (``python -m parity.diagnose.calibrate``)."""
    PROG: ClassVar[str] = "bert-parity calibrate"
    DESCRIPTION: ClassVar[str] = "Measure each side's own noise floor per tap and save it as a calibration file."

    tf_checkpoint: str = flag("--tf-checkpoint", required=True, type=checkpoint(),
                              help="checkpoint directory or prefix")
    torch_weights: str = flag("--torch-weights", required=True, type=input_file("weights file"),
                              help="the PyTorch weights of the same model")
    out: Optional[str] = flag("--output", "--out", type=output_file("calibration file"),
                              help="calibration JSON to write")
    # The TF runs happen in child processes of this command (one per oneDNN and thread setting).
    child_out: Optional[str] = flag("--child-out", help=argparse.SUPPRESS)
    child_threads: Optional[int] = flag("--child-threads", type=count(1, MAX_THREADS), help=argparse.SUPPRESS)

    def check(self) -> None:
        if not self.child_out and not self.out:
            raise BadInput("--output is required")
