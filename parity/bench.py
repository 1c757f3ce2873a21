"""``make bench``: forward-pass time of our PyTorch BERT against the official TF graph, same run, same inputs.

Real MiniLM-L6 weights, batch 8 x 128 by default. Prints medians and the ratio; it asserts
nothing (timings are not tests).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # TF C++ logs off (bert-parity --verbose)

import torch  # noqa: E402

from bert_torch.commands import HelpFormatter  # noqa: E402
from bert_torch.modeling import BertConfig  # noqa: E402

from .inputs import make_inputs  # noqa: E402
from .minilm import build_checkpoint  # noqa: E402
from .sides import TFSide, TorchSide  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()   # warm-up: graph optimisation, allocator, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


BERT_BASE_12 = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu")


def diagnose_ratio(batch_size: int, seq_len: int) -> None:
    """Wall time of ``parity diagnose`` against ``parity compare`` on a 12-layer BERT-base-shaped
    official random checkpoint (issue: diagnose must cost under 3x compare). Each command runs
    twice; the second, warm run of each is kept."""
    from bert_torch import convert
    from reference_tf import write_random_checkpoint

    from . import cli
    from .minilm import minilm_dir
    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(tmp, BERT_BASE_12, seed=0, perturb=0.02,
                                vocab_file=os.path.join(minilm_dir(), "vocab.txt"))
        weights = os.path.join(tmp, "pytorch_model.safetensors")
        if convert.main(["--tf-checkpoint", tmp, "--output", weights]) != 0:
            raise SystemExit("bench: converting the BERT-base-shaped checkpoint failed")
        args = ["--tf-checkpoint", tmp, "--torch-weights", weights, "--batch-size", str(batch_size),
                "--seq-len", str(seq_len)]
        times = {}
        for command in ("compare", "diagnose", "compare", "diagnose"):
            t0 = time.perf_counter()
            cli.main([command, *args, "--report-dir", os.path.join(tmp, command)])
            times[command] = time.perf_counter() - t0
    print(f"BERT-base-shaped 12 layers, batch {batch_size} x {seq_len}: compare {times['compare']:.1f} s, "
          f"diagnose {times['diagnose']:.1f} s, ratio {times['diagnose'] / times['compare']:.2f} (target < 3)")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--diagnose-ratio", action="store_true",
                    help="also time diagnose against compare on a 12-layer BERT-base-shaped checkpoint")
    args = ap.parse_args(argv)
    if args.diagnose_ratio:
        diagnose_ratio(args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_checkpoint(tmp)
        config = BertConfig.from_json_file(paths["bert_config"])
        inputs = make_inputs(paths["vocab"], args.batch_size, args.seq_len, seed=0, vocab_size=config.vocab_size)
        torch_side = TorchSide.from_weights(paths["torch_weights"], config)
        tf_side = TFSide(paths["prefix"], config)
        args_t = [torch.from_numpy(a).long() for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]

        def plain_forward():
            with torch.no_grad():
                torch_side.model(*args_t)

        results = {"pytorch, plain forward (no Taps)": median_seconds(plain_forward, args.repeats)}
        for label, side, fetch in (("pytorch, pooler tap only", torch_side, ["pooler/output"]),
                                   ("pytorch, all taps", torch_side, None),
                                   ("tensorflow, pooler tap only", tf_side, ["pooler/output"]),
                                   ("tensorflow, all taps", tf_side, None)):
            results[label] = median_seconds(lambda: side.run(inputs, fetch=fetch), args.repeats)
        tf_side.close()
    print(f"forward pass, MiniLM-L6, batch {args.batch_size} x {args.seq_len}, median of {args.repeats}:")
    base = results["tensorflow, pooler tap only"]
    for label, s in results.items():
        print(f"  {label:<34} {s * 1000:8.1f} ms   {s / base:5.2f}x TensorFlow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
