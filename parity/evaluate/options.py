"""The flags of ``bert-parity evaluate``, declared once as the typed options it runs on (``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``bert-parity evaluate --help`` builds its parser from here
without importing torch or TensorFlow. The task sizes default to the official scripts' (run_classifier:
max_seq_length 128; run_squad: max_seq_length 384, doc_stride 128, max_query_length 64, n_best_size 20,
max_answer_length 30); a flag left unset takes its task's default (``sizes``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import checkpoint, count, input_dir, output_dir, real
from bert_torch.options import flag

from parity.candidates.options import CandidateOptions, one_candidate
from parity.compare.options import ReferenceOptions
from parity.inputs import MAX_BATCH, MAX_SEQ, MIN_PAIR_SEQ, BadInput

TASKS = ("mrpc", "squad")
# The official scripts' defaults, per task.
DEFAULT_SIZES = {
    "mrpc": {"max_seq_length": 128},
    "squad": {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64, "n_best_size": 20,
              "max_answer_length": 30},
}
SQUAD_ONLY = ("doc_stride", "max_query_length", "n_best_size", "max_answer_length")
BATCH_SIZE = 32
MIN_RATIO = 0.99


@dataclasses.dataclass(frozen=True)
class EvaluateOptions(CandidateOptions, ReferenceOptions):
    """``bert-parity evaluate``: the official graph with the checkpoint's head against a candidate, on a dev set."""
    PROG: ClassVar[str] = "bert-parity evaluate"
    DESCRIPTION: ClassVar[str] = ("Task-level parity of a fine-tuned checkpoint: the official graph (with the "
                                  "checkpoint's own head) and the candidate on the same dev features, compared "
                                  "prediction by prediction and by the task metric.")
    OWNER: ClassVar[str] = "evaluate"   # the command whose previous report folder may be replaced

    tf_checkpoint: str = flag("--tf-checkpoint", required=True, type=checkpoint(),
                              help="fine-tuned checkpoint (directory or prefix) with its task head, as "
                                   "run_classifier / run_squad write it")
    task: str = flag("--task", required=True, choices=TASKS,
                     help="mrpc (GLUE MRPC dev.tsv) or squad (SQuAD v1.1 dev-v1.1.json)")
    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="folder holding mrpc/dev.tsv and/or squad/dev-v1.1.json (default: "
                                        "../shared/data from the repo root)")
    max_examples: Optional[int] = flag("--max-examples", type=count(1, 10_000_000),
                                       help="evaluate the first N dev examples (SQuAD: questions) only")
    min_ratio: float = flag("--min-ratio", type=real(above=0, hi=1), default=MIN_RATIO,
                            help="lossy forms (int8, bf16/fp16/tf32, a quantized ONNX file): every metric of the "
                                 "candidate at least this times the reference's")
    report_dir: str = flag("--report-dir", required=True, type=output_dir("report folder", owner="evaluate"),
                           help="folder for report.json, report.md and predictions.json")
    batch_size: int = flag("--batch-size", type=count(1, MAX_BATCH), default=BATCH_SIZE,
                           help="features per run of each side")
    max_seq_length: Optional[int] = flag("--max-seq-length", type=count(MIN_PAIR_SEQ, MAX_SEQ),
                                         help="tokens per feature (default: the official 128 for mrpc, 384 for "
                                              "squad)")
    doc_stride: Optional[int] = flag("--doc-stride", type=count(1, MAX_SEQ),
                                     help="squad: stride between document windows (default 128)")
    max_query_length: Optional[int] = flag("--max-query-length", type=count(1, MAX_SEQ),
                                           help="squad: question tokens kept (default 64)")
    n_best_size: Optional[int] = flag("--n-best-size", type=count(1, 10_000),
                                      help="squad: start and end candidates per feature (default 20)")
    max_answer_length: Optional[int] = flag("--max-answer-length", type=count(1, MAX_SEQ),
                                            help="squad: longest answer in tokens (default 30)")

    def sizes(self) -> dict:
        """The task's sizes: each flag given, else the official default."""
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in DEFAULT_SIZES[self.task].items()}

    def check(self) -> None:
        one_candidate(self.candidate, self.torch_weights)
        if self.transform and (self.candidate or "").startswith("onnx:"):
            raise BadInput(f"--transform {self.transform} applies to PyTorch candidates; an onnx file carries its "
                           f"own form (export-onnx --quantize int8)")
        if self.task != "squad":
            given = [k for k in SQUAD_ONLY if getattr(self, k) is not None]
            if given:
                raise BadInput(f"--{given[0].replace('_', '-')} applies to --task squad only")
            return
        sizes = self.sizes()
        if sizes["max_seq_length"] <= sizes["max_query_length"] + 3:   # run_squad.validate_flags_or_throw
            raise BadInput(f"--max-seq-length {sizes['max_seq_length']} must be greater than --max-query-length "
                           f"{sizes['max_query_length']} + 3 ([CLS], [SEP], [SEP]), as run_squad requires")
