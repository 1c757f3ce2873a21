"""Convert Google's TF BERT checkpoints to PyTorch weights and back.

    python -m bert_torch.convert --tf-checkpoint CKPT [--bert-config F] --output OUT.safetensors
    python -m bert_torch.convert --to-tf --torch-weights W --bert-config F --output PREFIX

Every TF variable is accounted for: mapped to a PyTorch tensor, or skipped as optimizer
state (and counted), or reported as an error. Exit codes: 0 done, 2 bad input (one line
per culprit on stderr). Reading and writing TF checkpoints needs no TensorFlow.
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from .commands import run_main
from .options import ConvertOptions
from ._io import LazyTensor, read_bytes, sha256
from .modeling import BertConfig
from .tokenization import parse_vocab
from .tf_checkpoint import (CheckpointError, checkpoint_prefix, list_variables, open_checkpoint,  # noqa: F401
                            read_checkpoint, write_checkpoint)
from .weights import check_shapes, detect_head, expected_shapes, open_weights, read_weights, write_weights  # noqa: F401

# Head variables outside the mechanical scope rule (TF name -> file name). Their TF
# layout is [out, in], like torch.nn.Linear, so they are not transposed.
HEAD_NAMES = {
    "output_weights": "classifier.weight",             # run_classifier.create_model
    "output_bias": "classifier.bias",
    "cls/squad/output_weights": "qa_outputs.weight",   # run_squad.create_model
    "cls/squad/output_bias": "qa_outputs.bias",
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
}
FILE_TO_HEAD_NAME = {v: k for k, v in HEAD_NAMES.items()}

# Training state that Google's (and NVIDIA's) checkpoints carry beside the weights.
OPTIMIZER_SLOT = re.compile(
    r"(^|.*/)(adam_m|adam_v|Adam|Adam_1|lamb_m|lamb_v|LAMB|LAMB_1|Momentum|Adagrad|RMSProp|RMSProp_1)$"
    r"|^(global_step|beta1_power|beta2_power|loss_scale|current_loss_scale|good_steps)$")
EMBEDDING_TABLES = ("word_embeddings", "token_type_embeddings", "position_embeddings")


def tf_to_file_name(tf_name: str) -> tuple[Optional[str], bool]:
    """(file name, transpose?) of a TF variable; (None, False) when it follows no known rule.

    The rule: drop ``bert/``, ``layer_i`` -> ``layer.i``, ``/`` -> ``.``, ``kernel`` -> ``weight``
    (transposed: TF dense kernels are [in, out]), ``gamma``/``beta`` -> ``weight``/``bias``.
    """
    if tf_name in HEAD_NAMES:
        return HEAD_NAMES[tf_name], False
    parts = tf_name.split("/")
    if parts[0] == "bert":
        parts = parts[1:]
    elif parts[0] != "cls" or not parts[1:]:
        return None, False
    out = []
    for p in parts:
        m = re.fullmatch(r"layer_(\d+)", p)
        out += ["layer", m.group(1)] if m else [{"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(p, p)]
    if out[-1] in EMBEDDING_TABLES:
        out.append("weight")
    return ".".join(out), parts[-1] == "kernel"


def file_to_tf_name(name: str) -> tuple[str, bool]:
    """The inverse of ``tf_to_file_name`` for the names a BERT model has."""
    if name in FILE_TO_HEAD_NAME:
        return FILE_TO_HEAD_NAME[name], False
    parts = name.split(".")
    transpose = False
    if parts[-2] in EMBEDDING_TABLES:
        parts = parts[:-1]
    elif "LayerNorm" == parts[-2]:
        parts[-1] = {"weight": "gamma", "bias": "beta"}[parts[-1]]
    elif parts[-1] == "weight":
        parts[-1], transpose = "kernel", True
    scoped = re.sub(r"(^|/)layer/(\d+)", r"\1layer_\2", "/".join(parts))
    return (scoped if parts[0] == "cls" else f"bert/{scoped}"), transpose


@dataclass
class Summary:
    mapped: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_names: list = field(default_factory=list, repr=False)   # the TF names counted in ``skipped``

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped.items()))
        return (f"mapped {self.mapped} variables; skipped {skipped} optimizer slots"
                f"{f' ({kinds})' if kinds else ''}; unmapped 0")


def tf_to_torch(tf_vars: Mapping[str, np.ndarray], config: BertConfig, where: str = "checkpoint",
                body_only: bool = False) -> tuple[dict[str, np.ndarray], Summary]:
    """Maps TF variables to file tensors, checking names and shapes against ``config``.

    Problems are reported in TF terms (variable names and TF shapes), which is what the
    user holding the checkpoint can look up.
    """
    summary, weights = Summary(), {}
    for tf_name, value in tf_vars.items():
        m = OPTIMIZER_SLOT.match(tf_name)
        if m:
            summary.skipped[m.group(2) or m.group(3)] += 1
            summary.skipped_names.append(tf_name)
        elif body_only and tf_name.split("/")[0] != "bert":
            summary.skipped["head (--body-only)"] += 1
            summary.skipped_names.append(tf_name)
        else:
            weights[tf_name] = value
    head, num_labels = detect_head(tf_to_file_name(n)[0] or "" for n in weights)
    if head == "classifier":
        num_labels = int(np.shape(weights["output_weights"])[0])
    expected_tf = {}
    for name, shape in expected_shapes(config, head, num_labels).items():
        tf_name, transpose = file_to_tf_name(name)
        expected_tf[tf_name] = shape[::-1] if transpose else shape
    check_shapes(weights, expected_tf, where, config, to_file_name=lambda n: tf_to_file_name(n)[0])
    out = {}
    for tf_name, value in weights.items():
        name, transpose = tf_to_file_name(tf_name)
        out[name] = _laid_out(value, transpose)   # kernel [in,out] -> weight [out,in]
    summary.mapped = len(out)
    return out, summary


def _laid_out(value, transpose: bool):
    """float32, C order, transposed when ``transpose``; a ``LazyTensor`` stays lazy (laid out when read),
    so that a streamed conversion holds one tensor, and its transpose, at a time."""
    if isinstance(value, LazyTensor):
        return value.then(lambda array: _laid_out(array, transpose),
                          value.shape[::-1] if transpose else value.shape, np.float32)
    value = np.asarray(value, dtype=np.float32)
    return np.ascontiguousarray(value.T if transpose else value)


def torch_to_tf(tensors: Mapping[str, np.ndarray], config: BertConfig, where: str = "weights") -> dict[str, np.ndarray]:
    """Maps file tensors to TF variables (kernels transposed back), checking them against ``config``."""
    head, num_labels = detect_head(tensors)
    if head == "classifier":
        num_labels = tensors["classifier.weight"].shape[0]
    check_shapes(tensors, expected_shapes(config, head, num_labels), where, config)
    out = {}
    for name, value in tensors.items():
        tf_name, transpose = file_to_tf_name(name)
        out[tf_name] = _laid_out(value, transpose)
    return out


def resolve_checkpoint(path: str, bert_config: Optional[str]) -> tuple[str, str]:
    """(checkpoint prefix, bert_config.json path) from a checkpoint directory or prefix."""
    prefix = checkpoint_prefix(path)
    if bert_config is None:
        base = path if os.path.isdir(path) else os.path.dirname(prefix)
        bert_config = os.path.join(base, "bert_config.json")
        if not os.path.lexists(bert_config):   # anything else of that name is checked by its reader (read_json)
            raise CheckpointError(f"{path}: no bert_config.json beside the checkpoint; pass --bert-config")
    return prefix, bert_config


def convert_tf_to_torch(tf_checkpoint: str, output: str, bert_config: Optional[str] = None,
                        body_only: bool = False, output_format: Optional[str] = None) -> Summary:
    prefix, config_path = resolve_checkpoint(tf_checkpoint, bert_config)
    config = BertConfig.from_json_file(config_path)
    # Streamed: the index is checked whole now, each tensor read (and its crc32c checked) when it is
    # written, so memory holds one tensor and its transpose, never the model twice.
    checkpoint = open_checkpoint(prefix)
    tensors, summary = tf_to_torch(checkpoint, config, where=prefix, body_only=body_only)
    # What is skipped (optimizer slots, heads with --body-only) is still checksummed, one at a time and
    # before anything is written: a damaged checkpoint is refused whole, as when it was read whole.
    for name in summary.skipped_names:
        checkpoint[name].load()
    if output_format == "hf":   # a transformers directory (bert_torch.hf_dir), the tokenizer files with it
        from .hf_dir import write_hf_dir
        vocab = os.path.join(os.path.dirname(prefix), "vocab.txt")
        # Anything at that name is read (a FIFO or device there is refused by name, not skipped).
        write_hf_dir(output, tensors, config, vocab if os.path.lexists(vocab) else None)
        return summary
    # What was actually read, by absolute path and content (a state file may name another prefix).
    index, data = prefix + ".index", prefix + ".data-00000-of-00001"
    write_weights(output, tensors, metadata={
        "source": os.path.basename(prefix), "source_prefix": os.path.abspath(prefix),
        "source_index_sha256": sha256(index), "source_data_sha256": sha256(data),
        "bert_config": os.path.abspath(config_path), "bert_config_sha256": sha256(config_path)})
    return summary


def convert_torch_to_tf(torch_weights: str, bert_config: Optional[str], output: str,
                        vocab_file: Optional[str] = None) -> int:
    """Everything is validated (weights, config, vocab) before anything is written; then the
    checkpoint, its bert_config.json and vocab.txt are written as one atomic set. ``torch_weights``
    may be an HF directory (config.json + weights): its config is read with HF's meanings."""
    from .hf_dir import is_hf_dir, read_hf_dir
    if is_hf_dir(torch_weights):
        weights, config = read_hf_dir(torch_weights, lazy=True)
        if bert_config:
            raise ValueError(f"--bert-config {bert_config}: {torch_weights} is an HF directory and brings its own "
                             f"config.json")
        if vocab_file is None and os.path.lexists(os.path.join(torch_weights, "vocab.txt")):
            vocab_file = os.path.join(torch_weights, "vocab.txt")
        bert_config = os.path.join(torch_weights, "config.json")
    else:
        if not bert_config:
            raise ValueError("--to-tf needs --bert-config (or --torch-weights naming an HF directory)")
        config = BertConfig.from_json_file(bert_config)
        weights = open_weights(torch_weights)   # safetensors: streamed, each tensor read when it is written
    # A .bin is read whole; its kernels are still transposed one at a time, as they are written.
    weights = {k: v if isinstance(v, LazyTensor) else LazyTensor.wrap(v) for k, v in weights.items()}
    tf_vars = torch_to_tf(weights, config, where=torch_weights)
    out_dir = os.path.dirname(os.path.abspath(output))
    config_out = os.path.join(out_dir, "bert_config.json")
    extra = {}
    if os.path.abspath(bert_config) != config_out:
        # The official fields only: the official BertConfig.from_dict accepts any key, but a
        # directory laid out like Google's should hold a config like Google's.
        official = {k: v for k, v in config.to_dict().items() if k not in config.extra}
        extra[config_out] = BertConfig.from_dict(official).to_json_string().encode()
    if vocab_file:
        vocab_bytes = read_bytes(vocab_file, "vocab")   # read once: the bytes checked are the bytes copied
        vocab = parse_vocab(vocab_bytes, vocab_file)   # one line naming the file when not UTF-8
        n = max(vocab.values()) + 1 if vocab else 0
        if n > config.vocab_size:   # ids past the embedding table
            raise ValueError(f"vocab {vocab_file}: {n} tokens, but {bert_config} says vocab_size {config.vocab_size}")
        if os.path.abspath(vocab_file) != os.path.join(out_dir, "vocab.txt"):
            extra[os.path.join(out_dir, "vocab.txt")] = vocab_bytes
    write_checkpoint(output, tf_vars, extra_files=extra)
    return len(tf_vars)


def check_output_path(output: str) -> None:
    """A file name, not a folder (``out/``): one line, exit 2, instead of a writer's traceback.
    (Missing parent folders are created by the writers.)"""
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise ValueError(f"--output {output}: is a directory; give a file name "
                         f"(e.g. {os.path.join(output, 'bert.safetensors')})")


def run_convert(opts: ConvertOptions) -> int:
    """Converts as ``opts`` say (their flags checked against each other already: ``ConvertOptions.check``)."""
    if opts.output_format != "hf" or opts.to_tf:
        check_output_path(opts.output)
    elif os.path.isfile(opts.output):
        raise ValueError(f"--output {opts.output}: is a file; --output-format hf writes a folder")
    if opts.to_tf:
        n = convert_torch_to_tf(opts.torch_weights, opts.bert_config, opts.output, opts.vocab_file)
        print(f"wrote {n} variables to {opts.output}.index / .data-00000-of-00001")
    else:
        summary = convert_tf_to_torch(opts.tf_checkpoint, opts.output, opts.bert_config, opts.body_only,
                                      opts.output_format)
        print(f"{summary}; wrote {opts.output}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity convert`` (``bert-convert``, ``python -m bert_torch.convert``)."""
    return run_main(lambda: run_convert(ConvertOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
