"""``python -m reference_tf dump``: record the official graph's taps in a golden file.

    python -m reference_tf dump --tf-checkpoint CKPT [--bert-config F] --out FILE \\
        [--batch-size 8] [--seq-len 128] [--seed 0] [--vocab-file V] [--sentences TSV]

The inputs are those ``python -m parity compare`` builds from the same arguments, so
``python -m parity compare --golden FILE --torch-weights W`` later reproduces the live
comparison's numbers on a machine without TensorFlow. Format: README, "Golden files";
``parity.sides.GoldenSide``. Exit codes: 0 written; 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def dump(args) -> int:
    from bert_torch.tf_checkpoint import CheckpointError
    from bert_torch.weights import WeightsError
    from parity.cli import BadInput, prepare
    from parity.environment import environment
    from parity.inputs import InputError
    from parity.sides import GoldenSide, TFSide, TAP_HEADS

    # compare's own preparation: the same checks (exit 2) and the same deterministic inputs.
    args.torch_weights = args.torch_bert_config = None
    args.device, args.profile = "cpu", "fp32-cpu"
    try:
        _, prefix, config, _, head, num_labels, inputs, files = prepare(args)
        side = TFSide(prefix, config, head=head, num_labels=num_labels, intra_op_threads=args.tf_threads)
    except WeightsError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (BadInput, InputError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    try:
        taps = side.run(inputs)
        description = side.description
    finally:
        side.close()
    meta = {
        "tap_names": list(side.tap_names),
        "head": TAP_HEADS.get(head),
        "num_labels": int(num_labels),
        "bert_config": config.to_dict(),
        "reference": description,
        "inputs": dict(inputs.meta),
        "environment": environment("cpu", files, args.tf_threads, seeds={"inputs": args.seed}),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        print(f"error: --out {args.out}: directory {out_dir} does not exist", file=sys.stderr)
        return 2
    try:
        GoldenSide.write(args.out, inputs, taps, meta)   # atomic: nothing at --out unless complete
    except OSError as e:   # a directory, a read-only folder, a full disk: one line naming --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.out)
    print(f"golden file: {args.out} ({len(taps)} taps, inputs {list(inputs.shape)}, {size / 1e6:.1f} MB)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference_tf", description="Google's official BERT graph")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump", help="run the official graph and save its inputs and every tap to a golden file")
    p.add_argument("--tf-checkpoint", required=True, help="checkpoint directory or prefix")
    p.add_argument("--bert-config", help="bert_config.json (default: beside the checkpoint)")
    p.add_argument("--vocab-file", help="vocab.txt (default: beside the checkpoint)")
    p.add_argument("--sentences", help="MRPC-format tsv of sentence pairs (default: the committed MRPC sample)")
    p.add_argument("--out", required=True, help="golden file to write (safetensors)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tf-threads", type=int, help="TF intra-op threads (default: TF's own)")
    return dump(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
