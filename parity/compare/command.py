"""``bert-parity compare`` (``python -m parity compare``): TF checkpoint (or a golden file) against a PyTorch
candidate, every tap. ``bert-parity diagnose`` takes the same arguments (``parity.compare.options``).

Exit codes (CONTRACT.md): 0 every tap within tolerance; 1 parity failure; 2 bad input,
reported as one line per culprit on stderr (never a traceback, never a stale report).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from bert_torch._io import atomic_dir
from bert_torch.commands import run_main
from bert_torch.modeling import BertConfig
from bert_torch.weights import WeightsError

from parity.candidates.factory import candidate_spec, make_candidate, official_gelu
from parity.candidates.transforms import check_transform, compile_evidence, is_lossy, lossy_rule
from parity.compare.options import BATCH_SIZE, SEED, SEQ_LEN, CompareOptions
from parity.compare.core import compare_sides, gelu_line, write_report
from parity.sides.refcache import provenance as tf_cache_provenance
from parity.environment import environment
from parity.numerics.hints import compiled_rounding_hint, int8_weight_type_hint, quantized_embeddings_hint
from parity.numerics.metrics import get_profile
from parity.compare.prepare import check_precision, prepare
from parity.inputs import BadInput
from parity.sides.base import GoldenSide, TFSide
from parity.sides.tf_worker import IsolatedTFSide
from parity.compare.render import fmt, num


def run_compare(opts: CompareOptions) -> int:
    """The report folder is written aside and renamed into place when complete: it appears whole or not at
    all, and replaces only an empty folder or a previous compare's (``bert_torch._io.atomic_dir``)."""
    with atomic_dir(opts.report_dir, "--report-dir", owner="compare") as out:
        report = (run_golden_compare if opts.golden else _run_compare)(opts.replace(report_dir=out))
    print_summary(report, os.path.join(opts.report_dir, "report.json"))
    return 0 if report["verdict"] == "pass" else 1


def _run_compare(opts: CompareOptions) -> dict:
    # before any model loads: a bad spec (or a transform that cannot apply to it) is exit 2 at once
    spec = candidate_spec(opts.candidate, opts.torch_weights, opts.torch_bert_config)
    check_transform(opts.transform, spec.kind, opts.device, precision=opts.precision)
    if spec.kind == "bert_torch":
        opts = opts.replace(torch_weights=spec.path)
    p = prepare(opts)
    candidate = make_candidate(spec, config=p.config, torch_config=p.torch_config, device=opts.device,
                               onnx_optimization=opts.onnx_optimization, tier=p.tier, transform=opts.transform)
    if p.spill_dir is None:
        reference = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=opts.tf_threads)
    else:   # streamed to disk: TF runs in a worker process, so that its memory is gone before PyTorch runs
        reference = IsolatedTFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels,
                                   intra_op_threads=opts.tf_threads, work_dir=p.spill_dir)
    reference.gelu = official_gelu(p.config.hidden_act)
    try:
        report = compare_sides(reference, candidate, p.inputs, p.profile, spill=p.spill_dir is not None,
                               spill_dir=p.spill_dir)
    finally:
        reference.close()
    judge_form(report, candidate, opts.transform, p.inputs)
    report["environment"] = environment(opts.device, p.files, opts.tf_threads, seeds={"inputs": opts.seed})
    report["environment"]["tf_cache"] = tf_cache_provenance()   # $BERT_PARITY_TF_CACHE: TF runs reused
    write_report(report, opts.report_dir)
    return report


COMPARE_DEFAULTS = {"batch_size": BATCH_SIZE, "seq_len": SEQ_LEN, "seed": SEED}


def run_golden_compare(opts: CompareOptions) -> dict:
    """``compare --golden``: the reference is a recorded TF run; TensorFlow is never imported."""
    profile = get_profile(opts.profile)
    tier = check_precision(opts.device, opts.precision, opts.precision_mode)
    golden = GoldenSide(opts.golden)
    recorded = {"batch_size": golden.inputs.shape[0], "seq_len": golden.inputs.shape[1],
                "seed": golden.inputs.meta.get("seed")}
    for k, v in recorded.items():   # a non-default value must agree with what was recorded
        if getattr(opts, k) not in (COMPARE_DEFAULTS[k], v):
            raise BadInput(f"--{k.replace('_', '-')} {getattr(opts, k)}: {opts.golden} was recorded with {v}")
    config = golden.config
    if opts.bert_config:
        given = BertConfig.from_json_file(opts.bert_config).to_dict()
        diff = [f"{k} {given.get(k)} (golden: {v})" for k, v in config.to_dict().items() if given.get(k) != v]
        if diff:
            raise BadInput(f"{opts.bert_config} does not match the config {opts.golden} was dumped with: "
                           + ", ".join(diff))
    torch_config = BertConfig.from_json_file(opts.torch_bert_config) if opts.torch_bert_config else config
    spec = candidate_spec(opts.candidate, opts.torch_weights, opts.torch_bert_config)
    check_transform(opts.transform, spec.kind, opts.device, tier=tier)
    if spec.kind == "bert_torch":
        opts = opts.replace(torch_weights=spec.path)
    golden.gelu = official_gelu(config.hidden_act)
    try:
        candidate = make_candidate(spec, config=config, torch_config=torch_config, device=opts.device,
                                   onnx_optimization=opts.onnx_optimization, tier=tier, transform=opts.transform)
    except WeightsError as e:
        if e.unreadable:   # the file itself is at fault, whatever config it would meet
            raise
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        raise BadInput(f"{opts.torch_weights} does not fit the bert_config of golden file {opts.golden}: "
                       f"{e.problems[0]}{more}") from None
    report = compare_sides(golden, candidate, golden.inputs, profile)
    judge_form(report, candidate, opts.transform, golden.inputs)
    files = {"golden": opts.golden, "torch_weights": opts.torch_weights, "bert_config": opts.bert_config,
             "torch_bert_config": opts.torch_bert_config}
    report["environment"] = environment(opts.device, files, None, seeds={"inputs": recorded["seed"]})
    report["environment"]["reference_environment"] = golden.meta.get("environment")
    write_report(report, opts.report_dir)
    return report


def judge_form(report: dict, candidate, transform: Optional[str], inputs) -> None:
    """What a transformed or quantized candidate adds to compare's report (in place): ``transform`` (its name or
    null, always); for ``compile`` the compilation's record (``compile``: its time apart from the runs', graphs and
    graph breaks, and the output taps' distance from the float64 eager model, compiled and eager) and the
    ``compiled_rounding`` hint; for a lossy form (``--transform int8-dynamic``, an int8 ONNX file) the verdict of
    the lossy rule (parity.candidates.transforms.lossy_rule, ``rule`` and ``lossy``) and its hints.

    A lossy form's ``reduced_precision`` hint is dropped: it says the candidate computes below float32 while fp32
    was asked, which is the quantization itself, named by the form."""
    report["transform"] = transform
    hints = list(report.get("hints") or [])
    notes = []
    if transform == "compile":
        info = candidate.compile_report()
        info["float64_check"] = compile_evidence(candidate, inputs)
        report["compile"] = info
        notes.append(f"--transform compile: compiling took {info['compile_seconds']:.3g} s (the first call of each "
                     f"input shape: tracing, compiling, one run), the compared runs {info['run_seconds']:.3g} s; "
                     f"{info['graphs']} graphs, {info['graph_breaks']} graph breaks (see the candidate's description)")
        found = compiled_rounding_hint(info["float64_check"])
        hints += [found] if found else []
    quantization = getattr(candidate, "quantization", None) if transform is None else None
    form = ("--transform int8-dynamic" if is_lossy(transform) else
            f"ONNX int8 ({quantization['method']}, weights {quantization['weight_type'] or 'unknown'})"
            if quantization else None)
    if form:
        hints = [h for h in hints if h["cause"] != "reduced_precision"]
        hints += [h for h in (int8_weight_type_hint(quantization), quantized_embeddings_hint(
            report["taps"], form, quantization)) if h]
        report.setdefault("notes", []).extend(notes)
        notes = []
        lossy_rule(report, form)
    if notes:
        report.setdefault("notes", []).extend(notes)
    if hints:
        report["hints"] = hints
    else:
        report.pop("hints", None)


WORST_SHOWN = 5   # taps printed; the full table is in report.md


def print_summary(report: dict, json_path: str) -> None:
    """The verdict, the first divergence, the few taps nearest to (or furthest past) their tolerance, and
    where the full table is: a failing 12-layer model would otherwise print a hundred lines."""
    taps = report["taps"]
    print(f"reference: {report['sides']['reference']}\ncandidate: {report['sides']['candidate']}")
    print(gelu_line(report)[2:])
    if report.get("transform"):
        print(f"transform: {report['transform']}")
    print(f"verdict: {report['verdict']} ({sum(t['passed'] for t in taps)}/{len(taps)} taps within "
          f"{report['profile']['name']}); first divergence: {report['first_divergence'] or 'none'}")
    if report.get("rule"):
        print(f"rule: {report['rule']}")
    # Failures first (a missing tap or a NaN has no ratio), then by the share of the allowed error used.
    worst = sorted(taps, key=lambda t: (t["passed"], -(num(t["tol_ratio"]) if num(t["tol_ratio"]) is not None
                                                     else 0.0)))
    print(f"worst {min(WORST_SHOWN, len(taps))} of {len(taps)} taps (error as a fraction of the allowed error):")
    for t in worst[:WORST_SHOWN]:
        print(f"  {t['name']:<32} max_abs {fmt(t['max_abs']):>9}  {fmt(t['tol_ratio']):>9} of allowed  "
              f"{'ok' if t['passed'] else 'FAIL: ' + str(t['reason'])}")
    failed = len(taps) - sum(t["passed"] for t in taps)
    if failed > WORST_SHOWN:
        print(f"  ... and {failed - WORST_SHOWN} more failing taps")
    if report.get("precision"):
        print(f"precision: {report['precision']['description']} on {report['precision']['device']}")
    for h in report.get("hints", []):
        print(f"hint {h['cause']}: {h['evidence']}")
    for n in report.get("notes", []):
        print(f"note: {n}")
    print(f"full table: {os.path.join(os.path.dirname(json_path), 'report.md')} (and {json_path})")


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity compare`` (``python -m parity compare``)."""
    return run_main(lambda: run_compare(CompareOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
