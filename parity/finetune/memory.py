"""The fine-tuning suite's memory, estimated before any work: an upper bound of the peak of
``run_finetune_checks`` at a ``FinetuneConfig``'s sizes, checked against what is available (exit 2 with the
numbers when it would not fit, rather than the kernel's out-of-memory kill minutes in).

The checks run one after another, so the peak is that of the largest phase. Each training phase (the
gradient checks, the MRPC and SQuAD runs, the multi-seed runs) runs the official graph, then PyTorch, on MiniLM
at one batch size and length; the TF session is closed before the PyTorch run, but the allocators keep what it
held, so both are counted (``parity.inputs``' training terms, as ``parity.checks.bench`` counts its contenders).
"""
from __future__ import annotations

import os

from bert_torch.modeling import BertConfig

from parity.inputs import (MEMORY_MARGIN, RUNTIME_BYTES, TF_STEP_ACTIVATIONS, TF_TRAINER_BYTES_PER_PARAMETER,
                      TORCH_STEP_ACTIVATIONS, TORCH_TRAINER_BYTES_PER_PARAMETER, InputError, memory_shortfall,
                      optimizer_scratch_bytes, step_activation_bytes)

# Bytes per parameter of a training phase: the official trainer's and the PyTorch one's, and the gradients of
# both kept as arrays for the gradient checks' comparison (4 + 4).
PHASE_BYTES_PER_PARAMETER = TF_TRAINER_BYTES_PER_PARAMETER + TORCH_TRAINER_BYTES_PER_PARAMETER + 4 + 4
# The optimizer check on MiniLM's real variables (``optimizer_source="minilm"``; the synthetic ones are small):
# the variables (4), the official optimizer's variables, slots, fed gradients and update temporaries
# (4 + 8 + 4 + 3 x 4), each step's gradients and TF's variables read back (4 + 4), BertAdam's parameters and
# moments (4 + 8), TF's slots read back at the end (8).
OPTIMIZER_CHECK_BYTES_PER_PARAMETER = 4 + 28 + 8 + 12 + 8
# Dropout on (the multi-seed runs): each side keeps a mask per dropout of every layer, three [B,T,H]-sized and
# one [B,N,T,T] (counted as float32: TF's are).
DROPOUT_ACTIVATIONS = (2 * 3, 0, 2 * 1)
# The gradient checks' MRPC rows are max_seq_length 128, as the official recipe's.
GRADIENT_SEQ = 128


def phases(config) -> list[tuple[str, int, int, bool]]:
    """(what, batch size, length, dropout) of every training phase at ``config``'s (a ``FinetuneConfig``) sizes."""
    out = [("the gradient check", config.gradient_batch, GRADIENT_SEQ, False),
           ("the SQuAD gradient check", config.squad_gradient_batch, config.squad_gradient_seq, False),
           ("--train-batch-size x --train-seq-len", config.train_batch_size, config.train_seq_len or GRADIENT_SEQ,
            False),
           ("the SQuAD training", config.squad_batch_size, config.squad_seq_len, False)]
    if config.seeds:
        out.append(("--seed-batch-size x --seed-seq-len", config.seed_batch_size, config.seed_seq_len, True))
    return out


def phase_bytes(model: BertConfig, batch_size: int, seq_len: int, dropout: bool) -> int:
    """A training phase's memory, before ``MEMORY_MARGIN``: both sides' trainers, and TF's step activations
    beside the PyTorch step's."""
    activations = step_activation_bytes(model, batch_size, seq_len, TF_STEP_ACTIVATIONS) \
        + step_activation_bytes(model, batch_size, seq_len, TORCH_STEP_ACTIVATIONS)
    if dropout:
        activations += step_activation_bytes(model, batch_size, seq_len, DROPOUT_ACTIVATIONS)
    return PHASE_BYTES_PER_PARAMETER * model.num_parameters() + optimizer_scratch_bytes(model) + activations


def finetune_bytes(config, model: BertConfig) -> tuple[int, str]:
    """(an upper bound of the suite's peak memory, the phase that sets it) at ``config``'s sizes (a
    ``FinetuneConfig``) for ``model`` (MiniLM's config), times ``MEMORY_MARGIN``."""
    sizes = [(phase_bytes(model, b, t, dropout), f"{what} at {b} x {t}") for what, b, t, dropout in phases(config)]
    if config.optimizer_source == "minilm":
        sizes.append((OPTIMIZER_CHECK_BYTES_PER_PARAMETER * model.num_parameters(),
                      "the optimizer check on MiniLM's variables"))
    held, what = max(sizes)
    return int(MEMORY_MARGIN * (RUNTIME_BYTES + held)), what


def check_memory(config) -> None:
    """Refuses (``InputError``: exit 2, one line with the numbers) a suite whose estimate is over MemAvailable."""
    from parity.minilm import minilm_dir
    model = BertConfig.from_json_file(os.path.join(minilm_dir(), "config.json"))
    need, what = finetune_bytes(config, model)
    short = memory_shortfall(need)
    if short:
        raise InputError(f"{what}: the fine-tuning checks need {short}; use smaller sizes (--quick, "
                         "--train-batch-size, --seed-batch-size)")
