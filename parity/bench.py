"""``make bench``: forward-pass time of our PyTorch BERT against the official TF graph, same run, same inputs.

Real MiniLM-L6 weights, batch 8 x 128 by default. Prints medians and the ratio; it asserts
nothing (timings are not tests).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m parity.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
