"""``python -m parity diagnose`` (compare's arguments and exit codes) and the release report's diagnosis
section."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

from bert_torch._io import atomic_dir, read_json
from bert_torch.commands import run_main
from bert_torch.modeling import BertConfig

from parity.sides.refcache import provenance as tf_cache_provenance
from parity.numerics.hints import compare_weights
from parity.compare.prepare import find_vocab, prepare
from parity.diagnose.options import DiagnoseOptions
from parity.inputs import BadInput
from parity.numerics.precision import Tier
from parity.compare.core import RunStore
from parity.sides.base import TorchSide
from parity.diagnose.algorithm import diagnose
from parity.diagnose.render import DIAGNOSIS_FILES, print_summary, write_diagnosis
from parity.diagnose.repro import write_repro


def run_diagnose(opts: DiagnoseOptions) -> int:
    """compare's arguments and exit codes: 0 clean, 1 a mismatch diagnosed, 2 bad input. The report folder is
    written aside and renamed into place when complete (as compare's)."""
    with atomic_dir(opts.report_dir, "--report-dir", owner="diagnose") as out:
        d = _run_diagnose(opts.replace(report_dir=out))
    print_summary(d, os.path.join(opts.report_dir, DIAGNOSIS_FILES[0]))
    return 0 if d["verdict"] == "pass" else 1


def _run_diagnose(opts: DiagnoseOptions):
    from bert_torch.convert import resolve_checkpoint, tf_to_torch
    from bert_torch.tf_checkpoint import read_checkpoint
    from bert_torch.tokenization import load_vocab
    from bert_torch.weights import read_weights

    from parity.candidates.factory import candidate_spec, make_candidate
    from parity.environment import environment
    from parity.numerics.hints import vocab_hint
    from parity.sides.base import TFSide
    from parity.sides.tf_worker import IsolatedTFSide

    spec = candidate_spec(opts.candidate, opts.torch_weights, opts.torch_bert_config)
    refuse_transform(opts.transform, spec.kind)
    if spec.kind == "bert_torch":
        opts = opts.replace(torch_weights=spec.path)
    # The vocab against the checkpoint first: make_inputs would refuse it without saying why.
    prefix, config_path = resolve_checkpoint(opts.tf_checkpoint, opts.bert_config)
    config = BertConfig.from_json_file(config_path)
    vocab = find_vocab(opts.tf_checkpoint, prefix, opts.vocab_file)
    vocab_ids = load_vocab(vocab)
    h = vocab_hint(vocab, max(vocab_ids.values()) + 1 if vocab_ids else 0, config.vocab_size)
    if h:   # bad input: nothing is written (the hint's evidence is the one line)
        raise BadInput(f"{h['evidence']} (vocab_mismatch)")
    p = prepare(opts)
    tf_weights, _ = tf_to_torch(read_checkpoint(p.prefix), p.config, where=p.prefix)
    if spec.kind == "onnx":
        raise BadInput(f"--candidate {spec}: diagnose feeds blocks the reference's inputs, and onnxruntime "
                       f"cannot replace an intermediate value; use compare")
    if spec.kind != "bert_torch":   # hf:, ppb:, module: (parity.candidates.factory): weights under file names from the model
        candidate, problem = make_candidate(spec, config=p.config, device=opts.device, tier=p.tier), None
        if candidate.unobservable:   # blocks are judged by all their taps, and fed by the reference's
            hidden = list(candidate.unobservable)
            raise BadInput(f"--candidate {spec}: diagnose needs every tap, and {len(hidden)} are not observable "
                           f"in this candidate (e.g. {hidden[0]}); map them, or use compare")
        torch_weights = candidate.tensors()
    else:
        torch_weights = read_weights(opts.torch_weights)   # unreadable: exit 2
        candidate, problem = bert_torch_side(opts.device, opts.torch_weights, p.torch_config, tf_weights,
                                             torch_weights, p.tier)
    floors = calibration_floors(opts.calibration)
    if p.spill_dir is None:
        reference = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=opts.tf_threads)
    else:   # streamed to disk: TF runs in a worker process, ended before the float64 twin is made
        reference = IsolatedTFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels,
                                   intra_op_threads=opts.tf_threads, work_dir=p.spill_dir, keep_alive=True)
    # diagnose holds the only references to the weights, so that it can let go of TF's copy when it is the
    # candidate's bit for bit (BERT-large: 1.3 GB, before the float64 twin is made).
    weights = [tf_weights, torch_weights]
    del tf_weights, torch_weights
    # The runs' taps live in the store (memory, or spilled to disk: --spill) until the repro is written.
    with RunStore(p.inputs, spill=p.spill_dir is not None, spill_dir=p.spill_dir) as store:
        try:
            d = diagnose(reference, candidate, p.inputs, p.profile, config=p.config, tf_weights=weights.pop(0),
                         torch_weights=weights.pop(0), head=p.head, floors=floors, candidate_problem=problem,
                         store=store)
        finally:
            reference.close()
        if store.spill:
            d["memory"] = {"spilled_to_disk_bytes": store.spilled_bytes}
        d["environment"] = environment(opts.device, p.files, opts.tf_threads)
        d["environment"]["tf_cache"] = tf_cache_provenance()
        if spec.kind == "bert_torch":   # repro.py runs bert_torch alone; other candidates' code is theirs
            write_repro(d, opts.report_dir, p.torch_config, p.profile, p.head, p.num_labels)
        else:
            d["stages"]["repro"] = f"not written: repro.py runs bert_torch, and the candidate is {spec.kind}:"
        d.repro = None   # the arrays go with the store
    write_diagnosis(d, opts.report_dir)
    return d


def refuse_transform(transform: Optional[str], kind: str) -> None:
    """diagnose takes ``--transform`` (compare's flags) and refuses it, in one line (exit 2), before anything loads:

    * ``compile``: diagnose feeds each block the reference's input to it, and a compiled model cannot be fed
      intermediate values (the compiled side refuses injection);
    * ``int8-dynamic``: injection would work (the quantized Linears keep their tap hooks), but diagnose judges each
      block against float32 rounding, and every block holding a Linear exceeds it by design: it would name the
      first such block the culprit of a model that may be fine. compare reports where the int8 error enters and
      judges the outputs; evaluate judges the task."""
    if transform is None:
        return
    from parity.candidates.transforms import check_transform
    check_transform(transform, kind)   # an onnx candidate: the transform's own message
    if transform == "compile":
        raise BadInput("--transform compile: diagnose feeds each block the reference's inputs, and a compiled model "
                       "cannot be fed intermediate values; compare it (compare --transform compile), or diagnose the "
                       "eager model")
    raise BadInput(f"--transform {transform}: diagnose judges each block against float32 rounding, which int8 Linear "
                   f"layers exceed by design (every block would look guilty); compare --transform {transform} shows "
                   f"where the error enters and judges the outputs, bert-parity evaluate judges the task")


def bert_torch_side(device: str, weights_path: str, torch_config: BertConfig, tf_weights, torch_weights,
                    tier=None) -> tuple:
    """(side, None), or (None, why) when the weights do not load but differ from the checkpoint's
    (then the diagnosis rests on the weights); the same tensors that do not load are bad input."""
    from bert_torch.weights import WeightsError, model_from_tensors
    try:
        model = model_from_tensors(torch_weights, torch_config, head="auto", device=device, where=weights_path)
        return TorchSide(model, device, {"BertForSequenceClassification": "classifier",
                                              "BertForQuestionAnswering": "squad",
                                              "BertForPreTraining": "pretraining"}.get(type(model).__name__),
                         tier=tier or Tier()), None
    except WeightsError as e:
        if not compare_weights(tf_weights, torch_weights)["differences"]:
            raise   # same tensors as the checkpoint, so the PyTorch config is at fault: bad input
        return None, f"the PyTorch weights do not load: {e.problems[0]}"   # diagnosed from the weights


def calibration_floors(path: Optional[str]) -> Optional[dict]:
    """Per-tap floors of a calibration file (``parity.diagnose.calibrate``)."""
    if not path:
        return None
    try:
        data = read_json(path, "calibration file")   # size, encoding and nesting bounded
        floors = {name: v["floor"] for name, v in data["taps"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a calibration file ({type(e).__name__}: {e})") from None
    if not floors:
        raise ValueError(f"{path}: not a calibration file (no taps)")
    for name, floor in floors.items():   # a floor is a measured error: a finite number, zero or more
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor < 0:
            raise ValueError(f"{path}: tap {name}: floor {floor!r} is not a finite non-negative number")
    return {name: float(floor) for name, floor in floors.items()}


def release_check(ctx) -> dict:
    """The release report's diagnosis section: ``diagnose`` on the real MiniLM weights, 8 x 128.

    A clean diagnosis (no culprit, weights bit-equal) passes; its tables land in
    ``diagnose/`` beside the report.
    """
    from parity.minilm import build_checkpoint
    ckpt = os.path.join(ctx.work_dir, "minilm")
    if not os.path.isfile(os.path.join(ckpt, "bert_model.ckpt.index")):
        build_checkpoint(ckpt)
    out = os.path.join(ctx.report_dir, "diagnose")
    code = run_diagnose(DiagnoseOptions.parse([
        "--tf-checkpoint", ckpt, "--torch-weights", os.path.join(ckpt, "pytorch_model.safetensors"),
        "--report-dir", out, "--batch-size", "8", "--seq-len", "128", "--profile", ctx.profile.name]))
    with open(os.path.join(out, DIAGNOSIS_FILES[0]), encoding="utf-8") as f:
        d = json.load(f)
    hints = ", ".join(h["cause"] for h in d.get("hints", [])) or "none"
    return {"name": "diagnose", "kind": "diagnose", "verdict": "pass" if code == 0 else "fail",
            "summary": f"real MiniLM weights, 8 x 128: verdict {d['verdict']}, culprit {d['culprit']}, hints: {hints}",
            "culprit": d["culprit"], "hints": d.get("hints", []),
            "artifacts": [f"diagnose/{n}" for n in DIAGNOSIS_FILES]}


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity diagnose`` (``python -m parity diagnose``): compare's arguments and its own."""
    return run_main(lambda: run_diagnose(DiagnoseOptions.parse(argv)))
