"""``bert-parity dump`` (also ``python -m parity dump`` and, by the contract, ``python -m reference_tf dump``):
record the official graph's taps in a golden file.

    bert-parity dump --tf-checkpoint CKPT [--bert-config F] --output FILE \\
        [--batch-size 8] [--seq-len 128] [--seed 0] [--vocab-file V] [--sentences TSV]

The inputs are those ``compare`` builds from the same arguments (``parity.options.prepare``), so
``bert-parity compare --golden FILE --torch-weights W`` later reproduces the live comparison's
numbers on a machine without TensorFlow. Format: README, "Golden files"; ``parity.sides.GoldenSide``.
Exit codes: 0 written; 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Optional

from bert_torch.commands import EXIT_CODES_HELP, ArgumentParser, HelpFormatter, run_main
from bert_torch.flags import checkpoint, count, input_file, output_file
from .inputs import MAX_BATCH, MAX_SEED, MAX_SEQ, MAX_THREADS

from .refcache import provenance as tf_cache_provenance
from .environment import environment
from .options import BadInput, prepare
from .sides import TAP_HEADS, GoldenSide, TFSide


def dump(args) -> int:
    # compare's own preparation: the same checks (exit 2) and the same deterministic inputs.
    args.torch_weights = args.torch_bert_config = None
    args.device, args.profile = "cpu", "fp32-cpu"
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(out_dir):
        raise BadInput(f"--output {args.out}: " + ("is a directory; give a file name" if os.path.isdir(args.out)
                                                   else f"directory {out_dir} does not exist"))
    p = prepare(args)
    side = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=args.tf_threads)
    try:
        taps = side.run(p.inputs)
        description, precision = side.description, side.precision
    finally:
        side.close()
    meta = {
        "tap_names": list(side.tap_names),
        "head": TAP_HEADS.get(p.head),
        "num_labels": int(p.num_labels),
        "bert_config": p.config.to_dict(),
        "reference": description,
        "precision": precision,   # the arithmetic of the recorded run; the machine is in "environment"
        "inputs": dict(p.inputs.meta),
        "environment": {**environment("cpu", p.files, args.tf_threads, seeds={"inputs": args.seed}),
                        "tf_cache": tf_cache_provenance()},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    GoldenSide.write(args.out, p.inputs, taps, meta)
    size = os.path.getsize(args.out)
    print(f"golden file: {args.out} ({len(taps)} taps, inputs {list(p.inputs.shape)}, {size / 1e6:.1f} MB)")
    return 0


def add_dump_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tf-checkpoint", required=True, type=checkpoint(), help="checkpoint directory or prefix")
    p.add_argument("--bert-config", type=input_file("bert_config.json"),
                   help="bert_config.json (default: beside the checkpoint)")
    p.add_argument("--vocab-file", type=input_file("vocab file"), help="vocab.txt (default: beside the checkpoint)")
    p.add_argument("--sentences", type=input_file("sentences file"),
                   help="MRPC-format tsv of sentence pairs (default: the committed MRPC sample)")
    p.add_argument("--output", "--out", dest="out", required=True, type=output_file("golden file"),
                   help="golden file to write (safetensors)")
    p.add_argument("--batch-size", type=count(1, MAX_BATCH), default=8)
    p.add_argument("--seq-len", type=count(1, MAX_SEQ), default=128)
    p.add_argument("--seed", type=count(0, MAX_SEED), default=0)
    p.add_argument("--tf-threads", type=count(1, MAX_THREADS), help="TF intra-op threads (default: TF's own)")


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="bert-parity dump", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_HELP,
                        formatter_class=HelpFormatter)
    add_dump_args(ap)
    return run_main(lambda: dump(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
