"""``bert-parity compare`` (``python -m parity compare``): TF checkpoint against PyTorch weights, every tap;
and ``diagnose`` (``parity.diagnose``), which takes the same arguments (``parity.options``).

Exit codes (CONTRACT.md): 0 every tap within tolerance; 1 parity failure; 2 bad input,
reported as one line per culprit on stderr (never a traceback, never a stale report).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from bert_torch._io import atomic_dir
from bert_torch.commands import EXIT_CODES_HELP, ArgumentParser, HelpFormatter, run_main
from bert_torch.modeling import BertConfig
from bert_torch.weights import WeightsError

from .candidates import candidate_spec, make_candidate, official_gelu
from .compare import compare_sides, gelu_line, write_report
from .diagnose import add_diagnose_args, run_diagnose
from .refcache import provenance as tf_cache_provenance
from .environment import environment
from .metrics import get_profile
# Re-exported: callers and tests import the compare arguments and preparation from here.
from .options import BadInput, add_compare_args, check_device, check_precision, find_vocab, prepare  # noqa: F401
from .sides import GoldenSide, TFSide
from .tf_worker import IsolatedTFSide
from .report_render import fmt, num


def run_compare(args) -> int:
    """The report folder is written aside and renamed into place when complete: it appears whole or not at
    all, and replaces only an empty folder or a previous compare's (``bert_torch._io.atomic_dir``)."""
    final = args.report_dir
    with atomic_dir(final, "--report-dir", owner="compare") as out:
        args.report_dir = out
        try:
            report = (run_golden_compare if getattr(args, "golden", None) else _run_compare)(args)
        finally:
            args.report_dir = final
    print_summary(report, os.path.join(final, "report.json"))
    return 0 if report["verdict"] == "pass" else 1


def _run_compare(args) -> dict:
    spec = candidate_spec(args)   # before any model loads: a bad spec is exit 2 at once
    p = prepare(args)
    candidate = make_candidate(spec, config=p.config, torch_config=p.torch_config, device=args.device,
                               onnx_optimization=args.onnx_optimization, tier=p.tier)
    if p.spill_dir is None:
        reference = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=args.tf_threads)
    else:   # streamed to disk: TF runs in a worker process, so that its memory is gone before PyTorch runs
        reference = IsolatedTFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels,
                                   intra_op_threads=args.tf_threads, work_dir=p.spill_dir)
    reference.gelu = official_gelu(p.config.hidden_act)
    try:
        report = compare_sides(reference, candidate, p.inputs, p.profile, spill=p.spill_dir is not None,
                               spill_dir=p.spill_dir)
    finally:
        reference.close()
    report["environment"] = environment(args.device, p.files, args.tf_threads, seeds={"inputs": args.seed})
    report["environment"]["tf_cache"] = tf_cache_provenance()   # $BERT_PARITY_TF_CACHE: TF runs reused
    write_report(report, args.report_dir)
    return report


COMPARE_DEFAULTS = {"batch_size": 8, "seq_len": 128, "seed": 0}


def run_golden_compare(args) -> dict:
    """``compare --golden``: the reference is a recorded TF run; TensorFlow is never imported."""
    if args.tf_checkpoint:
        raise BadInput("give either --tf-checkpoint or --golden, not both")
    for opt in ("sentences", "vocab_file", "tf_threads"):
        if getattr(args, opt):
            raise BadInput(f"--{opt.replace('_', '-')} does not apply to --golden: the golden file holds its inputs")
    profile = get_profile(args.profile)
    tier = check_precision(args)
    golden = GoldenSide(args.golden)
    recorded = {"batch_size": golden.inputs.shape[0], "seq_len": golden.inputs.shape[1],
                "seed": golden.inputs.meta.get("seed")}
    for k, v in recorded.items():   # a non-default value must agree with what was recorded
        if getattr(args, k) not in (COMPARE_DEFAULTS[k], v):
            raise BadInput(f"--{k.replace('_', '-')} {getattr(args, k)}: {args.golden} was recorded with {v}")
    config = golden.config
    if args.bert_config:
        given = BertConfig.from_json_file(args.bert_config).to_dict()
        diff = [f"{k} {given.get(k)} (golden: {v})" for k, v in config.to_dict().items() if given.get(k) != v]
        if diff:
            raise BadInput(f"{args.bert_config} does not match the config {args.golden} was dumped with: "
                           + ", ".join(diff))
    torch_config = BertConfig.from_json_file(args.torch_bert_config) if args.torch_bert_config else config
    spec = candidate_spec(args)
    golden.gelu = official_gelu(config.hidden_act)
    try:
        candidate = make_candidate(spec, config=config, torch_config=torch_config, device=args.device,
                                   onnx_optimization=args.onnx_optimization, tier=tier)
    except WeightsError as e:
        if e.unreadable:   # the file itself is at fault, whatever config it would meet
            raise
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        raise BadInput(f"{args.torch_weights} does not fit the bert_config of golden file {args.golden}: "
                       f"{e.problems[0]}{more}") from None
    report = compare_sides(golden, candidate, golden.inputs, profile)
    files = {"golden": args.golden, "torch_weights": args.torch_weights, "bert_config": args.bert_config,
             "torch_bert_config": args.torch_bert_config}
    report["environment"] = environment(args.device, files, None, seeds={"inputs": recorded["seed"]})
    report["environment"]["reference_environment"] = golden.meta.get("environment")
    write_report(report, args.report_dir)
    return report


WORST_SHOWN = 5   # taps printed; the full table is in report.md


def print_summary(report: dict, json_path: str) -> None:
    """The verdict, the first divergence, the few taps nearest to (or furthest past) their tolerance, and
    where the full table is: a failing 12-layer model would otherwise print a hundred lines."""
    taps = report["taps"]
    print(f"reference: {report['sides']['reference']}\ncandidate: {report['sides']['candidate']}")
    print(gelu_line(report)[2:])
    print(f"verdict: {report['verdict']} ({sum(t['passed'] for t in taps)}/{len(taps)} taps within "
          f"{report['profile']['name']}); first divergence: {report['first_divergence'] or 'none'}")
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
    """``compare`` and ``diagnose`` (``bert-parity compare|diagnose``, ``python -m parity compare|diagnose``)."""
    fmt = HelpFormatter
    ap = ArgumentParser(prog="bert-parity", description="BERT parity: TensorFlow vs PyTorch",
                        epilog=EXIT_CODES_HELP, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True)
    add_compare_args(sub.add_parser("compare", help="compare every tap of the two sides", epilog=EXIT_CODES_HELP,
                                    formatter_class=fmt))
    diagnose = sub.add_parser("diagnose", help="culprit block, root-cause hints, precision ladder, repro "
                              "(compare's arguments; writes diagnosis.json/.md)", epilog=EXIT_CODES_HELP,
                              formatter_class=fmt)
    add_compare_args(diagnose, owner="diagnose")
    add_diagnose_args(diagnose)
    def run(args) -> int:
        return (run_diagnose if args.command == "diagnose" else run_compare)(args)
    return run_main(lambda: run(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
