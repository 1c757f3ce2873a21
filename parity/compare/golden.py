"""``bert-parity dump`` (also ``python -m parity dump`` and, by the contract, ``python -m reference_tf dump``):
record the official graph's taps in a golden file.

    bert-parity dump --tf-checkpoint CKPT [--bert-config F] --output FILE \\
        [--batch-size 8] [--seq-len 128] [--seed 0] [--vocab-file V] [--sentences TSV]

The inputs are those ``compare`` builds from the same arguments (``parity.compare.prepare``), so
``bert-parity compare --golden FILE --torch-weights W`` later reproduces the live comparison's
numbers on a machine without TensorFlow. Format: docs/golden.md; ``parity.sides.base.GoldenSide``.
Exit codes: 0 written; 2 bad input (one line on stderr).
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Optional

from bert_torch.commands import run_main

from parity.compare.options import DumpOptions
from parity.compare.prepare import prepare
from parity.environment import environment
from parity.inputs import BadInput
from parity.sides.base import TAP_HEADS, GoldenSide, TFSide
from parity.sides.refcache import provenance as tf_cache_provenance


def dump(opts: DumpOptions) -> int:
    # compare's own preparation: the same checks (exit 2) and the same deterministic inputs.
    out_dir = os.path.dirname(os.path.abspath(opts.out))
    if os.path.isdir(opts.out) or not os.path.isdir(out_dir):
        raise BadInput(f"--output {opts.out}: " + ("is a directory; give a file name" if os.path.isdir(opts.out)
                                                   else f"directory {out_dir} does not exist"))
    p = prepare(opts)
    side = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=opts.tf_threads)
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
        "environment": {**environment("cpu", p.files, opts.tf_threads, seeds={"inputs": opts.seed}),
                        "tf_cache": tf_cache_provenance()},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    GoldenSide.write(opts.out, p.inputs, taps, meta)
    size = os.path.getsize(opts.out)
    print(f"golden file: {opts.out} ({len(taps)} taps, inputs {list(p.inputs.shape)}, {size / 1e6:.1f} MB)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity dump`` (``python -m reference_tf dump``)."""
    return run_main(lambda: dump(DumpOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
