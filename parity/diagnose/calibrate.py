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
``parity.numerics.metrics`` allow ``k x floor`` per tap. This process never imports TensorFlow itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import torch

from bert_torch._io import write_json
from bert_torch.commands import run_main

from parity.diagnose.options import CalibrateOptions


# (batch, seq_len, seed): the compare default and its neighbours, long and short rows.
INPUT_SETS = ((8, 128, 0), (8, 128, 1), (8, 128, 2), (8, 32, 0), (8, 32, 1), (8, 32, 2))


def _inputs(opts: CalibrateOptions) -> list:
    """(spec, Inputs) of every input set, built the way compare builds its inputs."""
    from bert_torch.convert import resolve_checkpoint
    from bert_torch.modeling import BertConfig

    from parity.compare.prepare import prepare
    _, config_path = resolve_checkpoint(opts.tf_checkpoint, opts.bert_config)
    longest = BertConfig.from_json_file(config_path).max_position_embeddings
    out = []
    for batch, seq, seed in INPUT_SETS:   # a model with fewer positions gets its longest rows instead
        one = opts.replace(batch_size=batch, seq_len=min(seq, longest), seed=seed)
        out.append((f"{batch}x{one.seq_len}-seed{seed}", prepare(one)))
    return out


def _tf_child(opts: CalibrateOptions, out: str, threads: Optional[int]) -> None:
    """In a child process: run the official graph once and save every tap (npz)."""
    from parity.sides.base import TFSide
    sets = _inputs(opts)
    first = sets[0][1]
    side = TFSide(first.prefix, first.config, head=first.head, num_labels=first.num_labels, intra_op_threads=threads)
    try:
        np.savez(out, **{f"{spec}|{tap}": v for spec, prepared in sets for tap, v in side.run(prepared.inputs).items()})
    finally:
        side.close()


def _run_child(opts: CalibrateOptions, onednn: str, threads: Optional[int], out: str) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    cmd = [sys.executable, "-m", "parity.diagnose.calibrate", "--child-out", out, "--tf-checkpoint", opts.tf_checkpoint,
           "--torch-weights", opts.torch_weights]
    for opt in ("bert_config", "vocab_file", "sentences"):
        if getattr(opts, opt):
            cmd += [f"--{opt.replace('_', '-')}", getattr(opts, opt)]
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


def calibrate(opts: CalibrateOptions) -> dict:
    from parity.environment import environment
    from parity.sides.base import TorchSide
    sets = _inputs(opts)
    torch_config, files = sets[0][1].torch_config, sets[0][1].files
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "onednn_on": _run_child(opts, "1", None, os.path.join(tmp, "a.npz")),
            "onednn_on_1_thread": _run_child(opts, "1", 1, os.path.join(tmp, "b.npz")),
            "onednn_off": _run_child(opts, "0", None, os.path.join(tmp, "c.npz")),
        }
    side32 = TorchSide.from_weights(opts.torch_weights, torch_config)
    side64 = TorchSide.from_weights(opts.torch_weights, torch_config, dtype=torch.float64)
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
    env = environment(opts.device, files, None)
    env.pop("argv", None)
    return {
        "description": ("per-tap noise floors (max abs over every element): TensorFlow oneDNN on vs off, "
                        "TensorFlow 1 vs all intra-op threads, PyTorch float32 vs float64; floor = the largest"),
        "command": "python -m parity.diagnose.calibrate " + " ".join(sys.argv[1:]),   # as run
        "input_sets": [{"name": spec, **prepared.inputs.meta} for spec, prepared in sets],
        "environment": env, "seconds": round(time.perf_counter() - t0, 1), "taps": taps,
    }


def main(argv: Optional[list] = None) -> int:
    """``bert-parity calibrate`` (``python -m parity.diagnose.calibrate``)."""
    return run_main(lambda: run_calibrate(CalibrateOptions.parse(argv)))


def run_calibrate(opts: CalibrateOptions) -> int:
    if opts.child_out:
        _tf_child(opts, opts.child_out, opts.child_threads)
        return 0
    data = calibrate(opts)
    write_json(opts.out, data, "--output", indent=1)   # atomic; an unwritable --output is one line, exit 2
    worst = max(data["taps"].items(), key=lambda kv: kv[1]["floor"])
    print(f"wrote {opts.out}: {len(data['taps'])} taps in {data['seconds']} s; largest floor {worst[1]['floor']:.3g} "
          f"at {worst[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
