"""``python -m parity compare``: TF checkpoint against PyTorch weights, every tap.

Exit codes (CONTRACT.md): 0 every tap within tolerance; 1 parity failure; 2 bad input,
reported as one line per culprit on stderr (never a traceback, never a stale report).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch

from bert_torch.convert import resolve_checkpoint, tf_to_torch
from bert_torch.modeling import BertConfig
from bert_torch.tf_checkpoint import CheckpointError, read_checkpoint
from bert_torch.weights import WeightsError, detect_head

from .compare import clear_report, compare_sides, write_report
from .environment import environment
from .inputs import BYTES_PER_TAP_ELEMENT, InputError, check_run_size, make_inputs
from .metrics import PROFILES, get_profile
from .report_render import fmt, num
from .sides import TFSide, TorchSide


class BadInput(ValueError):
    pass


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tf-checkpoint", help="checkpoint directory or prefix (required unless --golden)")
    p.add_argument("--golden", help="compare against a golden file (python -m reference_tf dump) "
                                    "instead of running TensorFlow")
    p.add_argument("--bert-config", help="bert_config.json (default: beside the checkpoint)")
    p.add_argument("--torch-weights", required=True, help="safetensors or .bin/.pt state dict")
    p.add_argument("--torch-bert-config", help="config for the PyTorch side only (default: --bert-config)")
    p.add_argument("--vocab-file", help="vocab.txt (default: beside the checkpoint)")
    p.add_argument("--sentences", help="MRPC-format tsv of sentence pairs (default: the committed MRPC sample)")
    p.add_argument("--report-dir", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu, cuda, cuda:1 ...")
    p.add_argument("--profile", default="fp32-cpu", help=f"tolerance profile: {', '.join(sorted(PROFILES))}")
    p.add_argument("--tf-threads", type=int, help="TF intra-op threads (default: TF's own)")


def find_vocab(path: str, prefix: str, vocab_file: Optional[str]) -> str:
    if vocab_file:
        if not os.path.isfile(vocab_file):
            raise BadInput(f"{vocab_file}: no such vocab file")
        return vocab_file
    base = path if os.path.isdir(path) else os.path.dirname(prefix)
    candidate = os.path.join(base, "vocab.txt")
    if not os.path.isfile(candidate):
        raise BadInput(f"{path}: no vocab.txt beside the checkpoint; pass --vocab-file")
    return candidate


def prepare(args):
    """Everything that can be checked before a model runs: exit 2 material."""
    if not args.tf_checkpoint:
        raise BadInput("--tf-checkpoint is required (or --golden FILE for compare)")
    profile = get_profile(args.profile)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise BadInput(f"--device {args.device}: not available on this machine")
    prefix, config_path = resolve_checkpoint(args.tf_checkpoint, args.bert_config)
    config = BertConfig.from_json_file(config_path)
    torch_config = BertConfig.from_json_file(args.torch_bert_config) if args.torch_bert_config else config
    if args.seq_len > config.max_position_embeddings:
        raise BadInput(f"--seq-len {args.seq_len} exceeds max_position_embeddings "
                       f"{config.max_position_embeddings} in {config_path}")
    command = getattr(args, "command", None)
    check_run_size(args.batch_size, args.seq_len, args.seed, config, command if command in BYTES_PER_TAP_ELEMENT
                   else "compare", args.tf_threads, config_path)   # bounds and memory before any allocation
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
    return profile, prefix, config, torch_config, head, num_labels, inputs, files


def run_compare(args) -> int:
    clear_report(args.report_dir)
    if getattr(args, "golden", None):
        return run_golden_compare(args)
    profile, prefix, config, torch_config, head, num_labels, inputs, files = prepare(args)
    candidate = TorchSide.from_weights(args.torch_weights, torch_config, device=args.device)
    reference = TFSide(prefix, config, head=head, num_labels=num_labels, intra_op_threads=args.tf_threads)
    try:
        report = compare_sides(reference, candidate, inputs, profile)
    finally:
        reference.close()
    report["environment"] = environment(args.device, files, args.tf_threads, seeds={"inputs": args.seed})
    json_path, _ = write_report(report, args.report_dir)
    print_summary(report, json_path)
    return 0 if report["verdict"] == "pass" else 1


COMPARE_DEFAULTS = {"batch_size": 8, "seq_len": 128, "seed": 0}


def run_golden_compare(args) -> int:
    """``compare --golden``: the reference is a recorded TF run; TensorFlow is never imported."""
    from .sides import GoldenSide
    if args.tf_checkpoint:
        raise BadInput("give either --tf-checkpoint or --golden, not both")
    for opt in ("sentences", "vocab_file", "tf_threads"):
        if getattr(args, opt):
            raise BadInput(f"--{opt.replace('_', '-')} does not apply to --golden: the golden file holds its inputs")
    profile = get_profile(args.profile)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise BadInput(f"--device {args.device}: not available on this machine")
    golden = GoldenSide(args.golden)
    recorded = {"batch_size": golden.inputs.shape[0], "seq_len": golden.inputs.shape[1],
                "seed": golden.inputs.meta.get("seed")}
    for k, v in recorded.items():   # a non-default value must agree with what was recorded
        if getattr(args, k) not in (COMPARE_DEFAULTS[k], v):
            raise BadInput(f"--{k.replace('_', '-')} {getattr(args, k)}: {args.golden} was recorded with {v}")
    config = golden.config
    if args.bert_config:
        given = BertConfig.from_json_file(args.bert_config).to_dict()
        diff = [f"{k} {given.get(k)} (golden: {v})" for k, v in config.to_dict().items() if given.get(k) != v]
        if diff:
            raise BadInput(f"{args.bert_config} does not match the config {args.golden} was dumped with: "
                           + ", ".join(diff))
    torch_config = BertConfig.from_json_file(args.torch_bert_config) if args.torch_bert_config else config
    try:
        candidate = TorchSide.from_weights(args.torch_weights, torch_config, device=args.device)
    except WeightsError as e:
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        raise BadInput(f"{args.torch_weights} does not fit the bert_config of golden file {args.golden}: "
                       f"{e.problems[0]}{more}") from None
    report = compare_sides(golden, candidate, golden.inputs, profile)
    files = {"golden": args.golden, "torch_weights": args.torch_weights, "bert_config": args.bert_config,
             "torch_bert_config": args.torch_bert_config}
    report["environment"] = environment(args.device, files, None, seeds={"inputs": recorded["seed"]})
    report["environment"]["reference_environment"] = golden.meta.get("environment")
    json_path, _ = write_report(report, args.report_dir)
    print_summary(report, json_path)
    return 0 if report["verdict"] == "pass" else 1


def print_summary(report: dict, json_path: str) -> None:
    taps = report["taps"]
    worst = max(taps, key=lambda t: -1 if num(t["tol_ratio"]) is None else num(t["tol_ratio"]))
    print(f"reference: {report['sides']['reference']}\ncandidate: {report['sides']['candidate']}")
    print(f"verdict: {report['verdict']} ({sum(t['passed'] for t in taps)}/{len(taps)} taps within "
          f"{report['profile']['name']}); first divergence: {report['first_divergence']}")
    for t in taps:
        if t["name"].endswith("/output") or not t["passed"]:
            print(f"  {t['name']:<32} max_abs {fmt(t['max_abs']):>9}"
                  f"  {'ok' if t['passed'] else 'FAIL: ' + str(t['reason'])}")
    if num(worst["tol_ratio"]) is not None:
        print(f"closest to its tolerance: {worst['name']} ({fmt(worst['tol_ratio'])} of the allowed error)")
    print(f"report: {json_path}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity", description="BERT parity: TensorFlow vs PyTorch")
    sub = ap.add_subparsers(dest="command", required=True)
    add_compare_args(sub.add_parser("compare", help="compare every tap of the two sides"))
    from .diagnose import add_diagnose_args, run_diagnose
    diagnose = sub.add_parser("diagnose", help="culprit block, root-cause hints, precision ladder, repro "
                              "(compare's arguments; writes diagnosis.json/.md)")
    add_compare_args(diagnose)
    add_diagnose_args(diagnose)
    args = ap.parse_args(argv)
    try:
        return run_diagnose(args) if args.command == "diagnose" else run_compare(args)
    except WeightsError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
    except (BadInput, InputError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    except KeyboardInterrupt:   # Ctrl-C: outputs are written atomically, so none is half there
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
