"""``bert-parity evaluate`` (``python -m parity.evaluate.command``): does the converted fine-tuned model give the
same dev predictions, and the same score, as the official TF model?

The official graph with the checkpoint's own head and the candidate run on the same dev features (made by the
official feature code), batch by batch, keeping only the head's logits; predictions are read from them as the
official scripts read them (argmax; SQuAD's official write_predictions), compared example by example and scored by
the task's metric. ``parity.evaluate.judge`` holds the rule. Exit codes (CONTRACT.md): 0 pass, 1 fail, 2 bad input.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Optional

import numpy as np

from bert_torch._io import atomic_dir, dumps, write_text
from bert_torch.commands import run_main
from bert_torch.convert import resolve_checkpoint, tf_to_torch
from bert_torch.modeling import BertConfig
from bert_torch.tf_checkpoint import open_checkpoint
from bert_torch.tokenization import load_vocab
from bert_torch.weights import detect_head

from parity.candidates.factory import candidate_spec, make_candidate
from parity.compare.prepare import check_precision, find_vocab
from parity.environment import environment
from parity.evaluate import data as task_data
from parity.evaluate import judge, render, runs
from parity.evaluate.options import EvaluateOptions
from parity.files import default_data_dir
from parity.inputs import BadInput, infer_lower_case
from parity.numerics.metrics import get_profile
from parity.numerics.precision import Tier
from parity.sides.base import TFSide
from parity.sides.refcache import provenance as tf_cache_provenance


def run_evaluate(opts: EvaluateOptions) -> int:
    """The report folder is written aside and renamed into place when complete (``bert_torch._io.atomic_dir``):
    it appears whole or not at all, and replaces only an empty folder or a previous evaluate's."""
    with atomic_dir(opts.report_dir, "--report-dir", owner=opts.OWNER) as out:
        report = evaluate(opts.replace(report_dir=out))
    render.print_summary(report, opts.report_dir)
    return 0 if report["verdict"] == "pass" else 1


@dataclasses.dataclass
class Checked:
    """What is checked before a model runs: the checkpoint and its head, configs, vocab, the dev file."""
    prefix: str
    config_path: str
    config: BertConfig
    torch_config: BertConfig
    head: str
    num_labels: int
    vocab: str
    do_lower_case: bool
    dev_file: str
    tier: Tier
    sizes: dict


HEAD_NAMES = {None: "the body only (no task head)", "pretraining": "the pre-training heads (cls/predictions, "
              "cls/seq_relationship), no fine-tuned head", "classifier": "a run_classifier head (output_weights)",
              "squad": "a run_squad head (cls/squad/output_weights)"}


def check_inputs(opts: EvaluateOptions) -> Checked:
    """Everything that can be refused before a model runs (exit 2, one line naming it)."""
    tier = check_precision(opts.device, opts.precision, opts.precision_mode)
    prefix, config_path = resolve_checkpoint(opts.tf_checkpoint, opts.bert_config)
    config = BertConfig.from_json_file(config_path)
    torch_config = BertConfig.from_json_file(opts.torch_bert_config) if opts.torch_bert_config else config
    # Names and shapes of every variable against the config, read from the index (tensors stay on disk).
    weights, _ = tf_to_torch(open_checkpoint(prefix), config, where=prefix)
    head, num_labels = detect_head(weights)
    want = task_data.HEADS[opts.task]
    if head != want:
        raise BadInput(f"{opts.tf_checkpoint}: no {opts.task} head ({task_data.HEAD_VARIABLES[want]}): the "
                       f"checkpoint holds {HEAD_NAMES.get(head, head)}; evaluate needs the checkpoint fine-tuned "
                       f"for --task {opts.task}")
    if head == "classifier":
        num_labels = int(weights["classifier.weight"].shape[0])
        if num_labels != len(task_data.MRPC_LABELS):
            raise BadInput(f"{opts.tf_checkpoint}: its classifier head has {num_labels} labels (output_weights "
                           f"{list(weights['classifier.weight'].shape)}); MRPC has {len(task_data.MRPC_LABELS)}")
    sizes = opts.sizes()
    if sizes["max_seq_length"] > config.max_position_embeddings:
        raise BadInput(f"--max-seq-length {sizes['max_seq_length']} exceeds max_position_embeddings "
                       f"{config.max_position_embeddings} in {config_path}")
    vocab = find_vocab(opts.tf_checkpoint, prefix, opts.vocab_file)
    lower = infer_lower_case(load_vocab(vocab))
    dev = task_data.dev_file(opts.data_dir or default_data_dir(), opts.task)
    return Checked(prefix, config_path, config, torch_config, head, num_labels, vocab, lower, dev, tier, sizes)


def evaluate(opts: EvaluateOptions) -> dict:
    """Runs both sides on the task's dev features and writes report.json, report.md and predictions.json into
    ``opts.report_dir``; returns the report."""
    t_start = time.perf_counter()
    spec = candidate_spec(opts.candidate, opts.torch_weights, opts.torch_bert_config)   # a bad spec: exit 2 now
    where = f"--candidate {spec}" if opts.candidate else f"--torch-weights {spec.path}"
    c = check_inputs(opts)
    extra = {"transform": opts.transform} if opts.transform is not None else {}
    candidate = make_candidate(spec, config=c.config, torch_config=c.torch_config, device=opts.device,
                               onnx_optimization=opts.onnx_optimization, tier=c.tier, **extra)
    reference = None
    notes: list = []
    try:
        taps = runs.check_head(candidate, opts.task, where)
        runner = runs.plain_forward(candidate, spec.kind, opts.transform)
        if runner is not candidate:
            notes.append("the bert_torch candidate ran its plain forward (fast path, no tap context): what users run")
        columns = None
        if spec.kind == "hf" and opts.task == "mrpc":
            columns, note = task_data.hf_label_columns(spec.path, where)
            if columns is not None:
                notes.append(f"the candidate's config.json id2label puts MRPC's classes 0, 1 in its columns "
                             f"{columns}: its logits are read in that order")
            if note:
                notes.append(note)
        onnx_quantized = runs.onnx_quantization(candidate, spec.path) if spec.kind == "onnx" else None
        form = judge.form_of(opts.transform, c.tier.name, c.tier.describe(opts.device), onnx_quantized)
        t0 = time.perf_counter()
        data = load_data(opts, c)
        t_features = time.perf_counter() - t0
        reference = TFSide(c.prefix, c.config, head=c.head, num_labels=c.num_labels, intra_op_threads=opts.tf_threads)
        ref, cand, seconds = runs.run_sides(reference, runner, data, taps, opts.batch_size, where, columns)
        report = compare(opts, c, data, runner, ref, cand, form, columns, notes)
        if report["verdict"] == "fail" and not form.lossy and not report["hints"]:
            # No task-level signature explains it: how the candidate's weights differ from the checkpoint's.
            hints, why_not = runs.weights_against_checkpoint(spec.kind, spec.path, c.prefix, c.config)
            if hints:
                report["hints"] += hints
            elif hints is not None:
                notes.append("the candidate's weights are bit-equal to the checkpoint's: the difference is in what "
                             "it computes (bert-parity compare and diagnose localise it tap by tap)")
            else:
                notes.append(f"the candidate's weights were not compared with the checkpoint's: {why_not}")
        report["sides"] = {"reference": reference.description, "candidate": candidate.description}
        record = candidate.record() if callable(getattr(candidate, "record", None)) else None
        report["candidate"] = record
        if opts.transform == "compile" and callable(getattr(candidate, "compile_report", None)):
            info = report["compile"] = candidate.compile_report()   # its time apart from the runs'
            notes.append(f"--transform compile: compiling took {info['compile_seconds']:.3g} s (the first call of "
                         f"each of {info['shapes']} input shapes: tracing, compiling, one run), the other runs "
                         f"{info['run_seconds']:.3g} s; {info['graphs']} graphs, {info['graph_breaks']} graph breaks")
    finally:
        if reference is not None:
            reference.close()
        candidate.close()
    report["precision"] = c.tier.to_dict(opts.device)
    report["sizes"] = {**c.sizes, "batch_size": opts.batch_size, "max_examples": opts.max_examples,
                       "do_lower_case": c.do_lower_case}
    files = {"tf_checkpoint.index": c.prefix + ".index", "tf_checkpoint.data": c.prefix + ".data-00000-of-00001",
             "bert_config": c.config_path, "vocab": c.vocab, "dev_file": c.dev_file,
             "torch_bert_config": opts.torch_bert_config}
    if spec.kind in ("bert_torch", "ppb", "onnx"):
        files["candidate"] = spec.path
    report["environment"] = environment(opts.device, {k: v for k, v in files.items() if v and os.path.isfile(v)},
                                        opts.tf_threads)
    report["environment"]["tf_cache"] = tf_cache_provenance()   # $BERT_PARITY_TF_CACHE: TF runs reused
    report["seconds"] = {"features": round(t_features, 2), "reference": round(seconds["reference"], 2),
                         "candidate": round(seconds["candidate"], 2),
                         "total": round(time.perf_counter() - t_start, 2)}
    write_report(report, data, opts.report_dir)
    return report


def load_data(opts: EvaluateOptions, c: Checked) -> task_data.TaskData:
    s = c.sizes
    if opts.task == "mrpc":
        data = task_data.mrpc_data(c.dev_file, c.vocab, c.do_lower_case, s["max_seq_length"], opts.max_examples)
        # A compiled candidate compiles once per input shape (tens of seconds each): batches keep their full
        # width rather than one width per batch (measured on MiniLM: 13 shapes, 111 s of compiling for 408 pairs).
        return dataclasses.replace(data, trim=False) if opts.transform == "compile" else data
    return task_data.squad_data(c.dev_file, c.vocab, c.do_lower_case, s["max_seq_length"], s["doc_stride"],
                                s["max_query_length"], opts.max_examples)


def predictions_of(opts: EvaluateOptions, c: Checked, data: task_data.TaskData, logits: dict):
    if opts.task == "mrpc":
        return task_data.mrpc_predictions(data, logits["classifier/logits"])
    return task_data.squad_predictions(data, logits["squad/start_logits"], logits["squad/end_logits"],
                                       c.sizes["n_best_size"], c.sizes["max_answer_length"], c.do_lower_case)


def compare(opts: EvaluateOptions, c: Checked, data: task_data.TaskData, runner, ref: dict, cand: dict,
            form: judge.Form, columns: Optional[list], notes: list) -> dict:
    """Predictions, metrics, the examples predicted differently with the reference's margin and its noise, the
    logit differences, McNemar, hints and the verdict: the report (without the environment)."""
    task = opts.task
    ref_pred, cand_pred = predictions_of(opts, c, data, ref), predictions_of(opts, c, data, cand)
    n = data.num_examples
    differ = [i for i in range(n) if ref_pred.values[i] != cand_pred.values[i]]
    profile = get_profile(judge.NOISE_PROFILE)
    taps = list(ref)
    magnitude = {t: float(np.max(np.abs(ref[t][np.isfinite(ref[t])]), initial=0.0)) for t in taps}
    margins = judge.margins(task, ref, ref_pred.nbest, data.ids)
    # Exact forms: the feature rows whose head logits are outside the noise before the rounding term is measured.
    over = np.flatnonzero(judge.logit_excess(ref, cand, profile, magnitude)[0] > 1) if not form.lossy else []
    # The candidate's own float32 rounding on each differing example and on each row over the noise (exact forms):
    # its float64 twin on them.
    rounding, per_row, rounding_words = {}, {}, "not measured (lossy form: the noise rule does not apply)"
    if (differ or len(over)) and not form.lossy:
        twin, why_not = runs.float64_twin(runner)
        if twin is None:
            rounding_words = f"not measured ({why_not}): the rounding term is left out"
        else:
            rows = example_rows(data, differ)
            measure = np.union1d(np.concatenate([*rows.values(), np.zeros(0, np.int64)]), over).astype(np.int64)
            per_row = runs.rounding(runner, twin, data, measure, tuple(taps), opts.batch_size, columns)
            rounding = {i: max(per_row[int(r)] for r in rows[i]) for i in differ}
            rounding_words = ("measured: max |float32 - float64| of the candidate's head logits on each differing "
                              "example and each example whose logits are over the noise without it (its float64 "
                              "twin on the same batch)")
    elif not form.lossy:
        rounding_words = "not needed (no prediction differs, every head logit within the noise without it)"
    differing = []
    for i in differ:
        noise = judge.margin_noise(margins[i], profile, magnitude, rounding.get(i))
        entry = {"example": data.ids[i], "index": i, "reference": ref_pred.values[i],
                 "candidate": cand_pred.values[i], "margin": margins[i].value, "noise": noise,
                 "rounding": rounding.get(i), "within_noise": bool(margins[i].value <= noise),
                 "reference_correct": bool(ref_pred.correct[i]), "candidate_correct": bool(cand_pred.correct[i])}
        if task == "mrpc":
            entry.update(label=int(data.labels[i]), reference_logits=ref["classifier/logits"][i].tolist(),
                         candidate_logits=cand["classifier/logits"][i].tolist(), text_a=data.texts[i][0],
                         text_b=data.texts[i][1])
        else:
            entry["question"] = data.examples[i].question_text
        differing.append(entry)
    diffs = judge.logit_differences(ref, cand)
    finite = diffs["non_finite"]["reference"] == 0 and diffs["non_finite"]["candidate"] == 0
    noise_words = (f"the noise of a margin is the sum, over the logits it is made of (MRPC: the reference's top "
                   f"two; SQuAD: the start and end logits of its best and second-best spans), of the "
                   f"{profile.name} profile's tolerance for that head tap at these logits' magnitude (atol + scale "
                   f"x max|reference| + rtol x |logit| + rounding_k x the candidate's own float32 rounding); "
                   f"rounding {rounding_words}")
    if form.lossy:
        judged = judge.judge_lossy(ref_pred.metrics, cand_pred.metrics, opts.min_ratio, finite)
    else:
        excused = {d["index"] for d in differing if d["within_noise"]}
        outside = [ref_pred.values[i] if i in excused else cand_pred.values[i] for i in range(n)]
        ratio, where = judge.logit_excess(ref, cand, profile, magnitude, per_row)
        out_rows = np.flatnonzero(ratio > 1)
        worst = None
        if len(out_rows):
            w = int(out_rows[np.argmax(ratio[out_rows])])
            worst = {"example": data.ids[row_example(data, w)], "row": w, **where[w],
                     "rounding": per_row.get(w), "times_noise": float(ratio[w])}
        logits_outside = {"examples": len({row_example(data, int(r)) for r in out_rows}), "rows": int(len(out_rows)),
                          "worst": worst, "max_times_noise": float(ratio.max()) if ratio.size else 0.0}
        judged = judge.judge_exact(differing, ref_pred.metrics, task_data.metrics_of(data, outside), finite,
                                   noise_words, logits_outside)
    hints = []
    if task == "mrpc":
        confident = [d["index"] for d in differing if not d["within_noise"]]
        hint = judge.label_order_hint(ref["classifier/logits"], cand["classifier/logits"], differ, confident)
    else:
        hint = judge.start_end_hint(ref, cand)
    if hint:
        hints.append(hint)
    return {"task": task, "examples": n, "features": data.num_features,
            "agreement": (n - len(differ)) / n if n else 1.0,
            "metrics": {"reference": ref_pred.metrics, "candidate": cand_pred.metrics},
            "transform": opts.transform, "rule": judged["rule"], "verdict": judged["verdict"],
            "form": {"lossy": form.lossy, "name": form.name}, "rule_numbers": judged["numbers"],
            "noise": {"profile": profile.name, "taps": {t: judge.noise_terms(profile, t) for t in taps},
                      "magnitude": magnitude, "rounding": rounding_words},
            "differing": differing, "logit_differences": diffs,
            "mcnemar": judge.mcnemar(ref_pred.correct, cand_pred.correct), "hints": hints, "notes": notes,
            "predictions": {"reference": ref_pred.values, "candidate": cand_pred.values}}


def row_example(data: task_data.TaskData, row: int) -> int:
    """The example a feature row belongs to (MRPC: its own; SQuAD: its feature's example_index)."""
    return row if data.task == "mrpc" else int(data.features[row].example_index)


def example_rows(data: task_data.TaskData, examples: list[int]) -> dict[int, np.ndarray]:
    """example -> its feature rows (MRPC: its own row; SQuAD: its doc_stride windows)."""
    if data.task == "mrpc":
        return {i: np.array([i]) for i in examples}
    keep = {i: [] for i in examples}
    for r, f in enumerate(data.features):
        if f.example_index in keep:
            keep[f.example_index].append(r)
    return {i: np.array(rows, dtype=np.int64) for i, rows in keep.items()}


def write_report(report: dict, data: task_data.TaskData, out: str) -> None:
    """report.json and report.md; predictions.json holds every example's prediction on both sides."""
    predictions = report.pop("predictions")
    rows = [{"example": q, "reference": r, "candidate": c} for q, r, c in
            zip(data.ids, predictions["reference"], predictions["candidate"])]
    if data.task == "mrpc":
        for row, label in zip(rows, data.labels):
            row["label"] = int(label)
    report["files"] = ["report.json", "report.md", "predictions.json"]
    write_text(os.path.join(out, "predictions.json"), dumps({"task": data.task, "examples": rows}, indent=1) + "\n",
               "--report-dir")
    write_text(os.path.join(out, "report.json"), dumps(report, indent=2) + "\n", "--report-dir")
    write_text(os.path.join(out, "report.md"), render.render_markdown(report), "--report-dir")


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity evaluate`` (``python -m parity.evaluate.command``)."""
    return run_main(lambda: run_evaluate(EvaluateOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
