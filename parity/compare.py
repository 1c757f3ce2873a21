"""Run two sides on the same inputs, compare every tap, write report.json and report.md."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from bert_torch._io import dumps, write_text

from .inputs import Inputs
from .metrics import Profile, compare_tap
from .report_render import fmt
from .sides import Side


def compare_sides(reference: Side, candidate: Side, inputs: Inputs, profile: Profile) -> dict:
    """The contract's report (less ``environment``): every tap of either side, in forward order.

    A tap one side lacks is a failure, never a skip; taps only the candidate publishes are
    appended after the reference's.
    """
    ref = reference.run(inputs)
    cand = candidate.run(inputs)
    rounding = rounding_estimate(candidate, inputs, cand) if profile.rounding_k else {}
    names = list(reference.tap_names) + [n for n in candidate.tap_names if n not in reference.tap_names]
    taps = [compare_tap(n, ref.get(n), cand.get(n), profile, rounding.get(n)) for n in names]
    first = next((t["name"] for t in taps if not t["passed"]), None)
    return {
        "verdict": "fail" if first or not taps else "pass",
        "first_divergence": first,
        "profile": profile.to_dict(),
        "inputs": dict(inputs.meta),
        "sides": {"reference": reference.description, "candidate": candidate.description},
        "taps": taps,
    }


def rounding_estimate(candidate, inputs: Inputs, cand: dict) -> dict:
    """Per tap, max |float32 - float64| of the candidate on these inputs: its own rounding error.

    Only sides that can run in float64 (``float64()``) give one; others give none (no term)."""
    make64 = getattr(candidate, "float64", None)
    if make64 is None:
        return {}
    c64 = make64().run(inputs)
    return {n: float(np.max(np.abs(cand[n].astype(np.float64) - c64[n].astype(np.float64))))
            for n in cand if n in c64 and np.size(cand[n]) and np.shape(cand[n]) == np.shape(c64[n])}


def _atomic_write(path: str, text: str) -> None:
    write_text(path, text, "report")   # temporary name, renamed when complete, removed on failure or signal


def clear_report(report_dir: str, names=("report.json", "report.md")) -> None:
    """Removes a previous run's report first, so a failed run never leaves one that looks current."""
    for n in names:
        p = os.path.join(report_dir, n)
        if os.path.exists(p):
            os.remove(p)


def write_report(report: dict, report_dir: str, stem: str = "report") -> tuple[str, str]:
    j = os.path.join(report_dir, f"{stem}.json")
    m = os.path.join(report_dir, f"{stem}.md")
    _atomic_write(j, dumps(report, indent=2) + "\n")   # strict JSON: NaN/Inf as "nan"/"inf"/"-inf"
    _atomic_write(m, render_markdown(report))
    return j, m


def _g(x: Optional[float]) -> str:
    return fmt(x)


def _cos(x: Optional[float]) -> str:
    return fmt(x, ".9f")


def render_markdown(report: dict) -> str:
    """The same content as report.json, for people: verdict first, then the per-tap table."""
    inp, prof, env = report["inputs"], report["profile"], report.get("environment", {})
    failed = [t for t in report["taps"] if not t["passed"]]
    lines = [
        f"# Parity report: **{report['verdict'].upper()}**",
        "",
        (f"First divergence: `{report['first_divergence']}` — {failed[0]['reason']}" if failed
         else f"All {len(report['taps'])} taps within tolerance."),
        "",
        f"- Reference: {report['sides']['reference']}",
        f"- Candidate: {report['sides']['candidate']}",
        f"- Profile `{prof['name']}`: {prof['rule']} (atol {prof['atol']:g}, rtol {prof['rtol']:g}). {prof['description']}",
        f"- Inputs: batch {inp['batch_size']}, sequence {inp['seq_len']}, seed {inp['seed']}, "
        f"{inp['padding_positions']} padding positions in {inp['rows_with_padding']} rows, "
        f"sentences from `{inp['sentences']}`",
    ]
    if env:
        lines.append(f"- Environment: Python {env['python']}, torch {env['torch']}, TensorFlow {env['tensorflow']}, "
                     f"bert-tensorflow {env['bert_tensorflow']}, numpy {env['numpy']}, device {env['device']}")
        lines += [f"  - sha256 `{k}`: `{v}`" for k, v in env.get("sha256", {}).items()]
    lines += ["", "| tap | shape | max_abs | max_rel | mean_abs | rms | cosine | atol | rtol | passed | worst_index |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for t in report["taps"]:
        lines.append(f"| `{t['name']}` | {t['shape']} | {_g(t['max_abs'])} | {_g(t['max_rel'])} | {_g(t['mean_abs'])} | "
                     f"{_g(t['rms'])} | {_cos(t['cosine'])} | "
                     f"{fmt(t['atol'], 'g')} | {fmt(t['rtol'], 'g')} | {'yes' if t['passed'] else '**NO**'} | {t['worst_index']} |")
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{t['name']}`: {t['reason']}" for t in failed]
    return "\n".join(lines) + "\n"
