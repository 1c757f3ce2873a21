"""The flags of the commands that run both sides (compare, diagnose, dump), declared once as the typed options
they run on (``bert_torch.options``).

Light on purpose: ``bert-parity compare --help`` builds its parser from here without importing torch. What is
checked and built before a model runs lives in ``parity.compare.prepare``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import checkpoint, count, input_file, output_dir, output_file
from bert_torch.options import Options, flag

from parity.candidates.options import CandidateOptions
from parity.inputs import MAX_BATCH, MAX_SEED, MAX_SEQ, MAX_THREADS, BadInput
from parity.numerics.metrics import PROFILES

BATCH_SIZE, SEQ_LEN, SEED = 8, 128, 0   # the deterministic inputs' default shape and draw


@dataclasses.dataclass(frozen=True)
class ReferenceOptions(Options):
    """The official graph's side of a run: the checkpoint, its config and vocab, TF's threads."""
    tf_checkpoint: Optional[str] = flag("--tf-checkpoint", type=checkpoint(),
                                        help="checkpoint directory or prefix (required unless --golden)")
    bert_config: Optional[str] = flag("--bert-config", type=input_file("bert_config.json"),
                                      help="bert_config.json (default: beside the checkpoint)")
    vocab_file: Optional[str] = flag("--vocab-file", type=input_file("vocab file"),
                                     help="vocab.txt (default: beside the checkpoint)")
    tf_threads: Optional[int] = flag("--tf-threads", type=count(1, MAX_THREADS),
                                     help="TF intra-op threads (default: TF's own)")


@dataclasses.dataclass(frozen=True)
class RunOptions(ReferenceOptions):
    """What every command that runs the official graph on deterministic inputs is given."""
    COMMAND: ClassVar[str] = "compare"   # whose memory needs bound the run (``parity.inputs.run_bytes``)

    sentences: Optional[str] = flag("--sentences", type=input_file("sentences file"),
                                    help="MRPC-format tsv of sentence pairs (default: the committed MRPC sample)")
    batch_size: int = flag("--batch-size", type=count(1, MAX_BATCH), default=BATCH_SIZE,
                           help="sentence pairs per batch")
    seq_len: int = flag("--seq-len", type=count(1, MAX_SEQ), default=SEQ_LEN,
                        help="tokens per row (row 0 full, the others padded)")
    seed: int = flag("--seed", type=count(0, MAX_SEED), default=SEED, help="which sentence pairs are drawn")
    # Not flags of every such command: the values a command without them runs at.
    torch_weights: Optional[str] = None
    torch_bert_config: Optional[str] = None
    device: str = "cpu"
    profile: str = "fp32-cpu"
    precision: str = "fp32"
    precision_mode: str = "autocast"
    spill: str = "never"
    spill_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CompareOptions(CandidateOptions, RunOptions):   # (the candidate's flags replace RunOptions' fixed values)
    """``bert-parity compare`` (``python -m parity compare``)."""
    PROG: ClassVar[str] = "bert-parity compare"
    DESCRIPTION: ClassVar[str] = ("Run both sides on the same inputs and compare every tap (--golden FILE: "
                                  "against a recorded run of the official graph, without TensorFlow).")
    OWNER: ClassVar[str] = "compare"   # the command whose previous report folder may be replaced

    golden: Optional[str] = flag("--golden", type=input_file("golden file"),
                                 help="compare against a golden file (bert-parity dump) instead of running "
                                      "TensorFlow")
    report_dir: str = flag("--report-dir", required=True, type=output_dir("report folder", owner="compare"),
                           help="folder for report.json and report.md")
    profile: str = flag("--profile", default="fp32-cpu", help=f"tolerance profile: {', '.join(sorted(PROFILES))}")
    spill: str = flag("--spill", default="auto", choices=("auto", "always", "never"),
                      help="stream each run's taps to disk and compare them one at a time, so that memory holds "
                           "about one layer's taps (auto: when keeping every run in memory would take over 1 GiB)")
    spill_dir: Optional[str] = flag("--spill-dir", type=output_dir("spill folder"),
                                    help="folder for the streamed taps (default: the system's temporary folder); "
                                         "removed when the run ends")

    def check(self) -> None:
        if self.golden:
            if self.tf_checkpoint:
                raise BadInput("give either --tf-checkpoint or --golden, not both")
            for name in ("sentences", "vocab_file", "tf_threads"):
                if getattr(self, name):
                    raise BadInput(f"--{name.replace('_', '-')} does not apply to --golden: the golden file holds "
                                   "its inputs")
        elif not self.tf_checkpoint:
            raise BadInput("--tf-checkpoint is required (or --golden FILE for compare)")


@dataclasses.dataclass(frozen=True)
class DumpOptions(RunOptions):
    """``bert-parity dump`` (``python -m reference_tf dump``)."""
    PROG: ClassVar[str] = "bert-parity dump"
    DESCRIPTION: ClassVar[str] = "Record the official graph's inputs and every tap in a golden file."
    COMMAND: ClassVar[str] = "dump"

    tf_checkpoint: str = flag("--tf-checkpoint", required=True, type=checkpoint(),
                              help="checkpoint directory or prefix")
    out: str = flag("--output", "--out", required=True, type=output_file("golden file"),
                    help="golden file to write (safetensors)")
