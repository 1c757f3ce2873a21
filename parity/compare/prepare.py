"""What every command that runs the two sides checks and builds before a model runs: the checkpoint read once,
the configs, the inputs, the precision tier, the memory (or disk) the run will take. Exit 2 material, all of it.

``prepare`` takes the command's typed options (``parity.compare.options``); it never sees argparse.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Optional

import torch

from bert_torch.convert import resolve_checkpoint, tf_to_torch
from bert_torch.modeling import BertConfig
from bert_torch.tf_checkpoint import read_checkpoint
from bert_torch.weights import detect_head

from parity.inputs import (BYTES_PER_TAP_ELEMENT, SPILL_ABOVE_BYTES, BadInput, Inputs, check_run_size,
                           in_memory_bytes, make_inputs)
from parity.numerics.metrics import Profile, get_profile
from parity.numerics.precision import Tier, check_supported


def find_vocab(path: str, prefix: str, vocab_file: Optional[str]) -> str:
    if vocab_file:
        if not os.path.lexists(vocab_file):
            raise BadInput(f"{vocab_file}: no such vocab file")
        return vocab_file
    base = path if os.path.isdir(path) else os.path.dirname(prefix)
    candidate = os.path.join(base, "vocab.txt")
    if not os.path.lexists(candidate):   # anything else of that name is checked by its reader (load_vocab)
        raise BadInput(f"{path}: no vocab.txt beside the checkpoint; pass --vocab-file")
    return candidate


def check_device(device: str) -> None:
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise BadInput(f"--device {device}: not available on this machine")


def check_precision(device: str, precision: str = "fp32", precision_mode: str = "autocast") -> Tier:
    """``--device`` and ``--precision``: the tier, once its kernels have run on the device (else exit 2)."""
    check_device(device)
    tier = Tier(precision, precision_mode)
    check_supported(tier, device)
    return tier


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` checked and built: everything a run needs before a model runs."""
    profile: Profile
    prefix: str                  # checkpoint prefix
    config: BertConfig           # the checkpoint's config (the TF side's)
    torch_config: BertConfig     # the PyTorch side's (--torch-bert-config, else ``config``)
    head: Optional[str]
    num_labels: int
    inputs: Inputs
    files: dict                  # label -> path, hashed into the report's environment
    tier: Tier = dataclasses.field(default_factory=Tier)   # the candidate's precision (--precision)
    spill_dir: Optional[str] = None   # the runs stream their taps to disk there (--spill), else memory


def prepare(opts) -> Prepared:
    """Everything that can be checked before a model runs: exit 2 material. ``opts``: a command's options with
    the run's flags (``parity.compare.options.RunOptions``)."""
    if not opts.tf_checkpoint:
        raise BadInput("--tf-checkpoint is required (or --golden FILE for compare)")
    profile = get_profile(opts.profile)
    tier = check_precision(opts.device, opts.precision, opts.precision_mode)
    prefix, config_path = resolve_checkpoint(opts.tf_checkpoint, opts.bert_config)
    config = BertConfig.from_json_file(config_path)
    torch_config = BertConfig.from_json_file(opts.torch_bert_config) if opts.torch_bert_config else config
    if opts.seq_len > config.max_position_embeddings:
        raise BadInput(f"--seq-len {opts.seq_len} exceeds max_position_embeddings "
                       f"{config.max_position_embeddings} in {config_path}")
    command = opts.COMMAND if opts.COMMAND in BYTES_PER_TAP_ELEMENT else "compare"
    spill_dir = spill_folder(opts.spill, opts.spill_dir, config, opts.batch_size, opts.seq_len, command)
    check_run_size(opts.batch_size, opts.seq_len, opts.seed, config, command, opts.tf_threads, config_path,
                   spill_dir)   # bounds and memory (or disk) before any allocation
    # Reading every variable checks names, shapes against the config, sizes and checksums.
    tf_weights, _ = tf_to_torch(read_checkpoint(prefix), config, where=prefix)
    head, num_labels = detect_head(tf_weights)
    if head == "classifier":
        num_labels = tf_weights["classifier.weight"].shape[0]
    vocab = find_vocab(opts.tf_checkpoint, prefix, opts.vocab_file)
    inputs = make_inputs(vocab, opts.batch_size, opts.seq_len, opts.seed, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size, pairs_file=opts.sentences)
    files = {"tf_checkpoint.index": prefix + ".index", "tf_checkpoint.data": prefix + ".data-00000-of-00001",
             "torch_weights": opts.torch_weights, "bert_config": config_path, "vocab": vocab,
             "torch_bert_config": opts.torch_bert_config, "sentences": opts.sentences}
    return Prepared(profile, prefix, config, torch_config, head, num_labels, inputs, files, tier, spill_dir)


def spill_folder(mode: str, folder: Optional[str], config: BertConfig, batch_size: int, seq_len: int,
                 command: str) -> Optional[str]:
    """Where this run streams its taps (``--spill`` ``mode`` into ``--spill-dir`` ``folder``), or None to keep
    them in memory."""
    if command == "dump" or mode == "never" or (
            mode == "auto" and in_memory_bytes(config, batch_size, seq_len, command) <= SPILL_ABOVE_BYTES):
        return None
    folder = folder or tempfile.gettempdir()
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise BadInput(f"--spill-dir {folder}: not a writable folder")
    return folder
