"""``make gpu-check``: one prepared script for a lent GPU (fits in 8 minutes on one GPU; ~1 minute of it is
TensorFlow on the CPU).

1. Golden files of the official graph, recorded by TensorFlow on the CPU (real MiniLM-L6 weights, 8 x 128),
   and, when this machine's TensorFlow sees a GPU, recorded again by TensorFlow on it.
2. The candidate (bert_torch) on ``--device`` in every precision tier (fp32 with TF32 off, tf32, bf16, fp16;
   autocast, and the whole-model cast for bf16/fp16) against each golden file: verdict, first divergence,
   worst fraction of the tolerance.
3. MRPC dev predictions of a classifier (MiniLM body + a seeded classification head, fp32) on ``--device``
   against the same model on the CPU: identical predictions, max logit difference.

Without CUDA, every row that needs it reads "not run: no CUDA" (never "pass"); ``--device cpu`` runs the
same script end to end on the CPU. Writes ``REPORT_DIR/gpu_check.{json,md}``. Exit 0 when every row ran
and passed; 1 otherwise (a failure, or rows not run); 2 bad input.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

from bert_torch.commands import run_main

from parity.checks.options import GpuCheckOptions

TIERS = [("fp32", "autocast"), ("tf32", "autocast"), ("bf16", "autocast"), ("bf16", "cast"),
         ("fp16", "autocast"), ("fp16", "cast")]
SHAPE = (8, 128)


def record_goldens(ckpt: str, out_dir: str) -> list[dict]:
    """TF on the CPU always; TF on a GPU when its TensorFlow sees one (a separate process for each)."""
    rows = []
    for where, env in (("tensorflow cpu", {"CUDA_VISIBLE_DEVICES": ""}), ("tensorflow gpu", {})):
        path = os.path.join(out_dir, f"golden-{where.split()[1]}.safetensors")
        if where == "tensorflow gpu":
            probe = subprocess.run([sys.executable, "-c", "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; "
                                    "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
                                   capture_output=True, text=True)
            if probe.stdout.strip() in ("", "0"):
                rows.append({"reference": where, "status": "not run: this TensorFlow sees no GPU"})
                continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "reference_tf", "dump", "--tf-checkpoint", ckpt, "--out", path,
                               "--batch-size", str(SHAPE[0]), "--seq-len", str(SHAPE[1])],
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, capture_output=True, text=True)
        status = "recorded" if proc.returncode == 0 else f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        rows.append({"reference": where, "status": status, "path": path if proc.returncode == 0 else None,
                     "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def tier_rows(goldens: list[dict], weights: str, device: str) -> list[dict]:
    import torch
    from parity.compare.core import compare_sides
    from parity.numerics.metrics import get_profile
    from parity.numerics.precision import PrecisionError, Tier, check_supported
    from parity.sides.base import GoldenSide, TorchSide
    rows = []
    for g in goldens:
        golden = GoldenSide(g["path"]) if g.get("path") else None   # read once, replayed for every tier
        for name, mode in TIERS:
            row = {"reference": g["reference"], "tier": name, "mode": mode if name in ("bf16", "fp16") else None,
                   "device": device}
            if not g.get("path"):
                row["status"] = f"not run: no golden file ({g['status']})"
            elif device.startswith("cuda") and not torch.cuda.is_available():
                row["status"] = "not run: no CUDA"
            else:
                try:
                    tier = Tier(name, mode)
                    check_supported(tier, device)
                except PrecisionError as e:
                    row["status"] = f"not run: {e}"
                    rows.append(row)
                    continue
                t0 = time.perf_counter()
                side = TorchSide.from_weights(weights, golden.config, device=device, tier=tier)
                r = compare_sides(golden, side, golden.inputs, get_profile("fp32-cpu"))
                row.update(status=r["verdict"], first_divergence=r["first_divergence"],
                           worst_tol_ratio=max((t["tol_ratio"] for t in r["taps"] if t["tol_ratio"] is not None),
                                               default=None),
                           hints=[h["cause"] for h in r.get("hints", [])], seconds=round(time.perf_counter() - t0, 1))
                if r["verdict"] == "fail":
                    row["reason"] = next(t["reason"] for t in r["taps"] if t["name"] == r["first_divergence"])
            rows.append(row)
    return rows


def mrpc_row(ckpt: str, data_dir: Optional[str], device: str) -> dict:
    """MRPC dev predictions on ``device`` against the CPU, same fp32 model (a seeded head on MiniLM)."""
    import numpy as np
    import torch
    from bert_torch.glue import MrpcProcessor, convert_examples_to_features, features_to_arrays
    from bert_torch.modeling import BertConfig, BertForSequenceClassification
    from bert_torch.tokenization import FullTokenizer
    from bert_torch.weights import read_weights
    row = {"check": "mrpc dev predictions", "device": device}
    mrpc = os.path.join(data_dir, "mrpc") if data_dir else None
    if not mrpc or not os.path.isfile(os.path.join(mrpc, "dev.tsv")):
        row["status"] = "not run: no MRPC data (--data-dir)"
        return row
    if device.startswith("cuda") and not torch.cuda.is_available():
        row["status"] = "not run: no CUDA"
        return row
    if device == "cpu":   # the CPU against itself would prove nothing
        row["status"] = "not run: --device cpu (this row compares a GPU with the CPU)"
        return row
    config = BertConfig.from_json_file(os.path.join(ckpt, "bert_config.json"))
    examples = MrpcProcessor().get_dev_examples(mrpc)
    tok = FullTokenizer(os.path.join(ckpt, "vocab.txt"), do_lower_case=True)
    arrays = features_to_arrays(convert_examples_to_features(examples, ["0", "1"], 128, tok))
    torch.manual_seed(0)
    model = BertForSequenceClassification(config, num_labels=2)
    model.bert.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                read_weights(os.path.join(ckpt, "pytorch_model.safetensors")).items()})
    logits = {}
    for where in ("cpu", device):
        m = model.to(where).eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(examples), 32):
                args = [torch.from_numpy(arrays[k][i:i + 32]).to(where) for k in ("input_ids", "segment_ids", "input_mask")]
                out.append(m(*args).float().cpu().numpy())
        logits[where] = np.concatenate(out)
    a, b = logits["cpu"], logits[device]
    same = int((a.argmax(1) == b.argmax(1)).sum())
    row.update(status="pass" if same == len(a) else "fail", examples=len(a), identical_predictions=same,
               max_logit_diff=float(np.abs(a - b).max()), note="a seeded classification head, not a fine-tuned one")
    return row


def render(report: dict) -> str:
    lines = [f"# GPU check: **{report['verdict'].upper()}**", "", f"Device `{report['device']}`; "
             f"{report['environment'].get('gpu') or 'no GPU'}; torch {report['environment']['torch']}.", "",
             "## Golden files", ""] + [f"- {g['reference']}: {g['status']}" for g in report["goldens"]]
    lines += ["", "## Candidate tiers against each golden file (MiniLM-L6, 8 x 128)", "",
              "| reference | tier | mode | status | first divergence | worst fraction of tolerance | hints |",
              "| --- | --- | --- | --- | --- | ---: | --- |"]
    for r in report["tiers"]:
        w = r.get("worst_tol_ratio")
        lines.append(f"| {r['reference']} | {r['tier']} | {r['mode'] or ''} | {r['status']} | "
                     f"{r.get('first_divergence') or ''} | {'' if w is None else format(w, '.3g')} | "
                     f"{', '.join(r.get('hints') or [])} |")
    m = report["mrpc"]
    lines += ["", "## MRPC dev predictions, device against CPU", "",
              f"- {m['status']}" + (f": {m['identical_predictions']}/{m['examples']} identical, max logit difference "
                                    f"{m['max_logit_diff']:.3g} ({m['note']})" if "examples" in m else "")]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m parity.checks.gpu`` (``bert-parity gpu-check``)."""
    return run_main(lambda: run_gpu_check(GpuCheckOptions.parse(argv)))


def run_gpu_check(opts: GpuCheckOptions) -> int:
    """The golden files, the tiers against them and the MRPC row; ``gpu_check.{json,md}`` written, the table
    printed. Exit 0 when every row ran and passed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bert_torch._io import write_json, write_text
    from parity.environment import environment
    from parity.minilm import build_checkpoint
    from parity.files import default_data_dir
    os.makedirs(opts.report_dir, exist_ok=True)
    ckpt = os.path.join(opts.report_dir, "minilm")
    build_checkpoint(ckpt)
    goldens = record_goldens(ckpt, opts.report_dir)
    tiers = tier_rows(goldens, os.path.join(ckpt, "pytorch_model.safetensors"), opts.device)
    mrpc = mrpc_row(ckpt, opts.data_dir or default_data_dir(), opts.device)
    statuses = [r["status"] for r in tiers] + [mrpc["status"]]
    verdict = "pass" if all(s == "pass" for s in statuses) else (
        "fail" if "fail" in statuses else "not run")
    report = {"verdict": verdict, "device": opts.device, "goldens": goldens, "tiers": tiers, "mrpc": mrpc,
              "environment": environment(opts.device, {})}
    write_json(os.path.join(opts.report_dir, "gpu_check.json"), report, "--report-dir", indent=2)
    write_text(os.path.join(opts.report_dir, "gpu_check.md"), render(report), "--report-dir")
    print(render(report))
    return 0 if verdict == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
