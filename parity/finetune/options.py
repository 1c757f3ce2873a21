"""The flags of ``bert-parity finetune`` (``python -m parity.finetune``), declared once as the typed options it
runs on (``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``bert-parity finetune --help`` builds its parser from here
without importing torch or TensorFlow. The sizes they override are ``parity.finetune.suite.FinetuneConfig``'s.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from bert_torch.flags import count, input_dir, output_dir, real
from bert_torch.options import Options, flag

from parity.inputs import MAX_BATCH, MAX_SEQ, MIN_PAIR_SEQ, BadInput

# Multi-seed sizes of the full run (make report), and why they answer the question: see
# parity.finetune.suite.run_finetune_checks. lr 5e-5 and batch 16 are from the BERT paper's fine-tuning grid.
# Declared here, with the flags that override them, so that --help shows them without importing torch.
SEED_BATCH, SEED_SEQ, SEED_LR, SEED_STEPS = 16, 64, 5e-5, 150


@dataclasses.dataclass(frozen=True)
class FinetuneOptions(Options):
    """``bert-parity finetune`` (``python -m parity.finetune``). The size flags left None keep the sizes of
    ``--quick`` (QUICK) or of the full run (FULL)."""
    PROG: ClassVar[str] = "bert-parity finetune"
    DESCRIPTION: ClassVar[str] = ("Fine-tuning parity: optimizer, features, gradients, training, conversion, seeds; "
                                  "TF against PyTorch.")

    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="folder with mrpc/ (default: ../shared/data from the repo root)")
    out: str = flag("--report-dir", "--out", required=True, type=output_dir("report folder", owner="finetune"),
                    help="output folder for finetune.json / finetune.md")
    quick: bool = flag("--quick", action="store_true", default=False, help="CI sizes (a few minutes)")
    device: str = flag("--device", default="cpu", help="PyTorch device (cuda is untested)")
    train_epochs: Optional[float] = flag("--train-epochs", type=real(above=0, hi=1000),
                                         help="deterministic run: MRPC epochs, steps by the official count "
                                              "(default 3: 343 steps at batch 32)")
    train_steps: Optional[int] = flag("--train-steps", type=count(1, 10_000_000),
                                      help="deterministic run: optimizer steps (overrides --train-epochs)")
    train_batch_size: Optional[int] = flag("--train-batch-size", type=count(1, MAX_BATCH),
                                           help="deterministic run: batch size (default 32)")
    train_seq_len: Optional[int] = flag("--train-seq-len", type=count(MIN_PAIR_SEQ, MAX_SEQ),
                                        help="deterministic run: max_seq_length (default 128 with the all-padding "
                                             "columns cut: no pair truncated)")
    seeds: Optional[int] = flag("--seeds", type=count(0, 1000),
                                help="multi-seed runs per side with dropout on (default 3; 0 with --quick)")
    squad_steps: Optional[int] = flag("--squad-steps", type=count(1, 10_000_000),
                                      help="SQuAD deterministic run: steps (default 100)")
    squad_dev: Optional[int] = flag("--squad-dev", type=count(1, 10_000_000),
                                    help="SQuAD: dev questions evaluated (default 500)")
    seed_steps: Optional[int] = flag("--seed-steps", type=count(1, 10_000_000),
                                     help=f"steps of each multi-seed run (default {SEED_STEPS})")
    seed_batch_size: Optional[int] = flag("--seed-batch-size", type=count(1, MAX_BATCH),
                                          help=f"multi-seed batch size (default {SEED_BATCH})")
    seed_seq_len: Optional[int] = flag("--seed-seq-len", type=count(MIN_PAIR_SEQ, MAX_SEQ),
                                       help=f"multi-seed max_seq_length (default {SEED_SEQ})")
    seed_lr: Optional[float] = flag("--seed-lr", type=real(above=0, hi=1.0),
                                    help=f"multi-seed learning rate (default {SEED_LR:g})")

    def check(self) -> None:
        if self.seeds == 1:   # its range is declared with the flag; a single seed has no spread to test
            raise BadInput("argument --seeds: 1: give 0 (none) or at least 2")
