"""What every command that runs two sides shares: its arguments and the checks made before a model runs.

``parity.cli`` (compare), ``parity.diagnose``, ``parity.golden`` (dump) and ``parity.diagnose.calibrate``
import this module; it imports none of them, so the harness's imports run one way (pyproject.toml,
``[tool.importlinter]``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from typing import Optional

import torch

from bert_torch.convert import resolve_checkpoint, tf_to_torch
from bert_torch.flags import checkpoint, count, input_file, output_dir
from bert_torch.modeling import BertConfig
from bert_torch.tf_checkpoint import read_checkpoint
from bert_torch.weights import detect_head

from .inputs import (BYTES_PER_TAP_ELEMENT, MAX_BATCH, MAX_SEED, MAX_SEQ, MAX_THREADS, SPILL_ABOVE_BYTES, Inputs,
                     check_run_size, in_memory_bytes, make_inputs)
from .metrics import PROFILES, Profile, get_profile
from .precision import Tier, check_supported


class BadInput(ValueError):
    pass


def add_compare_args(p: argparse.ArgumentParser, owner: str = "compare") -> None:
    """compare's flags (diagnose's too, ``owner`` "diagnose": the command whose report folder may be replaced)."""
    p.add_argument("--tf-checkpoint", type=checkpoint(),
                   help="checkpoint directory or prefix (required unless --golden)")
    p.add_argument("--golden", type=input_file("golden file"),
                   help="compare against a golden file (python -m reference_tf dump) "
                        "instead of running TensorFlow")
    p.add_argument("--bert-config", type=input_file("bert_config.json"),
                   help="bert_config.json (default: beside the checkpoint)")
    p.add_argument("--torch-weights", type=input_file("weights file"),
                   help="safetensors or .bin/.pt state dict (= --candidate bert_torch:W)")
    p.add_argument("--candidate", help="KIND:PATH, the PyTorch side: bert_torch:W, hf:DIR, ppb:FILE, onnx:FILE, "
                                       "module:pkg.mod:factory (README, 'Candidates'); exactly one of --candidate "
                                       "and --torch-weights")
    p.add_argument("--onnx-optimization", default="all", choices=("all", "off"),
                   help="onnxruntime graph optimisation of an onnx: candidate")
    p.add_argument("--torch-bert-config", type=input_file("bert_config.json"),
                   help="config for the PyTorch side only (default: --bert-config)")
    p.add_argument("--vocab-file", type=input_file("vocab file"), help="vocab.txt (default: beside the checkpoint)")
    p.add_argument("--sentences", type=input_file("sentences file"),
                   help="MRPC-format tsv of sentence pairs (default: the committed MRPC sample)")
    p.add_argument("--report-dir", required=True, type=output_dir("report folder", owner=owner),
                   help="folder for report.json and report.md")
    p.add_argument("--batch-size", type=count(1, MAX_BATCH), default=8, help="sentence pairs per batch")
    p.add_argument("--seq-len", type=count(1, MAX_SEQ), default=128,
                   help="tokens per row (row 0 full, the others padded)")
    p.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="which sentence pairs are drawn")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu, cuda, cuda:1 ...")
    p.add_argument("--profile", default="fp32-cpu", help=f"tolerance profile: {', '.join(sorted(PROFILES))}")
    p.add_argument("--tf-threads", type=count(1, MAX_THREADS), help="TF intra-op threads (default: TF's own)")
    p.add_argument("--precision", default="fp32",
                   help="the candidate's arithmetic (the reference stays the float32 graph): fp32 (TF32 off), "
                        "tf32 (CUDA's, or an exact emulation on CPU), bf16, fp16")
    p.add_argument("--spill", default="auto", choices=("auto", "always", "never"),
                   help="stream each run's taps to disk and compare them one at a time, so that memory holds "
                        "about one layer's taps (auto: when keeping every run in memory would take over 1 GiB)")
    p.add_argument("--spill-dir", type=output_dir("spill folder"),
                   help="folder for the streamed taps (default: the system's temporary folder); "
                        "removed when the run ends")
    p.add_argument("--precision-mode", default="autocast",
                   help="bf16/fp16 as torch.autocast, or cast: the whole model cast, as for inference")


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


def check_precision(args) -> Tier:
    """``--device`` and ``--precision``: the tier, once its kernels have run on the device (else exit 2)."""
    check_device(args.device)
    tier = Tier(getattr(args, "precision", "fp32"), getattr(args, "precision_mode", "autocast"))
    check_supported(tier, args.device)
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


def prepare(args) -> Prepared:
    """Everything that can be checked before a model runs: exit 2 material."""
    if not args.tf_checkpoint:
        raise BadInput("--tf-checkpoint is required (or --golden FILE for compare)")
    profile = get_profile(args.profile)
    tier = check_precision(args)
    prefix, config_path = resolve_checkpoint(args.tf_checkpoint, args.bert_config)
    config = BertConfig.from_json_file(config_path)
    torch_config = BertConfig.from_json_file(args.torch_bert_config) if args.torch_bert_config else config
    if args.seq_len > config.max_position_embeddings:
        raise BadInput(f"--seq-len {args.seq_len} exceeds max_position_embeddings "
                       f"{config.max_position_embeddings} in {config_path}")
    command = getattr(args, "command", None)
    command = command if command in BYTES_PER_TAP_ELEMENT else "compare"
    spill_dir = spill_folder(args, config, command)
    check_run_size(args.batch_size, args.seq_len, args.seed, config, command, args.tf_threads, config_path,
                   spill_dir)   # bounds and memory (or disk) before any allocation
    # Reading every variable checks names, shapes against the config, sizes and checksums.
    tf_weights, _ = tf_to_torch(read_checkpoint(prefix), config, where=prefix)
    head, num_labels = detect_head(tf_weights)
    if head == "classifier":
        num_labels = tf_weights["classifier.weight"].shape[0]
    vocab = find_vocab(args.tf_checkpoint, prefix, args.vocab_file)
    inputs = make_inputs(vocab, args.batch_size, args.seq_len, args.seed, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size, pairs_file=args.sentences)
    files = {"tf_checkpoint.index": prefix + ".index", "tf_checkpoint.data": prefix + ".data-00000-of-00001",
             "torch_weights": args.torch_weights, "bert_config": config_path, "vocab": vocab,
             "torch_bert_config": args.torch_bert_config, "sentences": args.sentences}
    return Prepared(profile, prefix, config, torch_config, head, num_labels, inputs, files, tier, spill_dir)


def spill_folder(args, config: BertConfig, command: str) -> Optional[str]:
    """Where this run streams its taps (``--spill``), or None to keep them in memory."""
    mode = getattr(args, "spill", "never")
    if command == "dump" or mode == "never" or (
            mode == "auto" and in_memory_bytes(config, args.batch_size, args.seq_len, command) <= SPILL_ABOVE_BYTES):
        return None
    folder = getattr(args, "spill_dir", None) or tempfile.gettempdir()
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise BadInput(f"--spill-dir {folder}: not a writable folder")
    return folder
