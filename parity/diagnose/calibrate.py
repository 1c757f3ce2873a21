"""Measure each side's own noise floor per tap and save it as a calibration file.

    python -m parity.diagnose.calibrate --tf-checkpoint build/minilm \\
        --torch-weights build/minilm/pytorch_model.safetensors --out parity/calibration/minilm-l6.json

Floors, per tap, as max |a - b| over every element:

* ``tf_onednn``: TensorFlow with oneDNN on against off (``TF_ENABLE_ONEDNN_OPTS`` is read when
  TensorFlow is imported, so each setting runs in its own process);
* ``tf_threads``: TensorFlow with 1 intra-op thread against the default (all cores);
* ``pt_fp64``: PyTorch float32 against PyTorch float64;

``floor`` is the largest of the three, over several input sets (``INPUT_SETS``: rounding
error depends on the inputs, so one set under-estimates it). The ``calibrated-*`` profiles of
``parity.metrics`` allow ``k x floor`` per tap. This process never imports TensorFlow itself.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from bert_torch._io import write_json
from bert_torch.commands import EXIT_CODES_HELP, ArgumentParser, HelpFormatter, run_main
from bert_torch.flags import checkpoint, count, input_file, output_file

DEFAULTS = dict(bert_config=None, torch_bert_config=None, vocab_file=None, sentences=None, batch_size=8,
                seq_len=128, seed=0, device="cpu", profile="fp32-cpu", tf_threads=None, golden=None,
                report_dir=None)


# (batch, seq_len, seed): the compare default and its neighbours, long and short rows.
INPUT_SETS = ((8, 128, 0), (8, 128, 1), (8, 128, 2), (8, 32, 0), (8, 32, 1), (8, 32, 2))


def _inputs(args) -> list:
    """(spec, Inputs) of every input set, built the way compare builds its inputs."""
    from bert_torch.convert import resolve_checkpoint
    from bert_torch.modeling import BertConfig

    from ..options import prepare
    _, config_path = resolve_checkpoint(args.tf_checkpoint, args.bert_config)
    longest = BertConfig.from_json_file(config_path).max_position_embeddings
    out = []
    for batch, seq, seed in INPUT_SETS:   # a model with fewer positions gets its longest rows instead
        a = SimpleNamespace(**{**vars(args), "batch_size": batch, "seq_len": min(seq, longest), "seed": seed})
        out.append((f"{batch}x{a.seq_len}-seed{seed}", prepare(a)))
    return out


def _args(ns) -> SimpleNamespace:
    return SimpleNamespace(**{**DEFAULTS, **{k: v for k, v in vars(ns).items() if v is not None}})


def _tf_child(args, out: str, threads: Optional[int]) -> None:
    """In a child process: run the official graph once and save every tap (npz)."""
    from ..sides import TFSide
    sets = _inputs(args)
    first = sets[0][1]
    side = TFSide(first.prefix, first.config, head=first.head, num_labels=first.num_labels, intra_op_threads=threads)
    try:
        np.savez(out, **{f"{spec}|{tap}": v for spec, prepared in sets for tap, v in side.run(prepared.inputs).items()})
    finally:
        side.close()


def _run_child(args, onednn: str, threads: Optional[int], out: str) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    cmd = [sys.executable, "-m", "parity.diagnose.calibrate", "--child-out", out, "--tf-checkpoint", args.tf_checkpoint,
           "--torch-weights", args.torch_weights]
    for opt in ("bert_config", "vocab_file", "sentences"):
        if getattr(args, opt):
            cmd += [f"--{opt.replace('_', '-')}", getattr(args, opt)]
    if threads:
        cmd += ["--child-threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"TensorFlow run (oneDNN {onednn}, threads {threads or 'default'}) failed: {last}")
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def calibrate(args) -> dict:
    from ..environment import environment
    from ..sides import TorchSide
    sets = _inputs(args)
    torch_config, files = sets[0][1].torch_config, sets[0][1].files
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "onednn_on": _run_child(args, "1", None, os.path.join(tmp, "a.npz")),
            "onednn_on_1_thread": _run_child(args, "1", 1, os.path.join(tmp, "b.npz")),
            "onednn_off": _run_child(args, "0", None, os.path.join(tmp, "c.npz")),
        }
    side32 = TorchSide.from_weights(args.torch_weights, torch_config)
    side64 = TorchSide.from_weights(args.torch_weights, torch_config, dtype=torch.float64)
    taps: dict = {}
    for spec, prepared in sets:
        pt32, pt64 = side32.run(prepared.inputs), side64.run(prepared.inputs)
        for name in pt32:
            ref = runs["onednn_on"][f"{spec}|{name}"]
            row = {"tf_onednn": _max_abs(ref, runs["onednn_off"][f"{spec}|{name}"]),
                   "tf_threads": _max_abs(ref, runs["onednn_on_1_thread"][f"{spec}|{name}"]),
                   "pt_fp64": _max_abs(pt32[name], pt64[name]),
                   "tf_vs_pt32": _max_abs(ref, pt32[name])}
            old = taps.setdefault(name, dict.fromkeys(row, 0.0))
            taps[name] = {k: max(old[k], v) for k, v in row.items()}
    for row in taps.values():
        row["floor"] = max(row["tf_onednn"], row["tf_threads"], row["pt_fp64"])
    env = environment(args.device, files, None)
    env.pop("argv", None)
    return {
        "description": ("per-tap noise floors (max abs over every element): TensorFlow oneDNN on vs off, "
                        "TensorFlow 1 vs all intra-op threads, PyTorch float32 vs float64; floor = the largest"),
        "command": "python -m parity.diagnose.calibrate " + " ".join(sys.argv[1:]),   # as run
        "input_sets": [{"name": spec, **prepared.inputs.meta} for spec, prepared in sets],
        "environment": env, "seconds": round(time.perf_counter() - t0, 1), "taps": taps,
    }


def main(argv: Optional[list] = None) -> int:
    ap = ArgumentParser(prog="python -m parity.diagnose.calibrate", description=__doc__.split("\n\n")[0],
                        epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter)
    ap.add_argument("--tf-checkpoint", required=True, type=checkpoint())
    ap.add_argument("--torch-weights", required=True, type=input_file("weights file"))
    ap.add_argument("--bert-config", type=input_file("bert_config.json"))
    ap.add_argument("--vocab-file", type=input_file("vocab file"))
    ap.add_argument("--sentences", type=input_file("sentences file"))
    ap.add_argument("--output", "--out", dest="out", type=output_file("calibration file"),
                    help="calibration JSON to write")
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=count(1, 1024), help=argparse.SUPPRESS)
    return run_main(lambda: _main(ap.parse_args(argv)))


def _main(ns) -> int:
    args = _args(ns)
    if ns.child_out:
        _tf_child(args, ns.child_out, ns.child_threads)
        return 0
    if not ns.out:
        raise ValueError("--output is required")
    data = calibrate(args)
    write_json(ns.out, data, "--output", indent=1)   # atomic; an unwritable --output is one line, exit 2
    worst = max(data["taps"].items(), key=lambda kv: kv[1]["floor"])
    print(f"wrote {ns.out}: {len(data['taps'])} taps in {data['seconds']} s; largest floor {worst[1]['floor']:.3g} "
          f"at {worst[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
