"""Run two sides on the same inputs, compare every tap, write report.json and report.md."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

from .inputs import Inputs
from .metrics import Profile, compare_tap
from .precision import precision_hints
from .sides import Side


def compare_sides(reference: Side, candidate: Side, inputs: Inputs, profile: Profile) -> dict:
    """The contract's report (less ``environment``): every tap of either side, in forward order.

    A tap one side lacks is a failure, never a skip; taps only the candidate publishes are
    appended after the reference's.
    """
    ref = reference.run(inputs)
    cand = candidate.run(inputs)
    c32, c64 = twin_runs(candidate, inputs, cand) if profile.rounding_k else (cand, {})
    rounding, tier_rounding = _rounding(c32, c64), _rounding(cand, c64)
    tier = getattr(candidate, "tier", None)
    names = list(reference.tap_names) + [n for n in candidate.tap_names if n not in reference.tap_names]
    taps = [compare_tap(n, ref.get(n), cand.get(n), profile, rounding.get(n), tier, tier_rounding.get(n))
            for n in names]
    first = next((t["name"] for t in taps if not t["passed"]), None)
    report = {
        "verdict": "fail" if first or not taps else "pass",
        "first_divergence": first,
        "profile": profile.to_dict(),
        "inputs": dict(inputs.meta),
        "sides": {"reference": reference.description, "candidate": candidate.description},
        "taps": taps,
    }
    if tier is not None:
        report["precision"] = tier.to_dict(str(getattr(candidate, "device", "cpu")))
    hints = precision_hints(names, ref, cand, c32, c64, tier) if c64 else []
    if hints:
        report["hints"] = hints
    return report


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _rounding(c: dict, c64: dict) -> dict:
    return {n: _max_diff(c[n], c64[n]) for n in c
            if n in c64 and np.size(c[n]) and np.shape(c[n]) == np.shape(c64[n])}


def twin_runs(candidate, inputs: Inputs, cand: dict) -> tuple[dict, dict]:
    """The candidate's plain-float32 taps ``c32`` and its float64 twin's ``c64`` on these inputs.

    ``c32`` is ``cand`` itself when the candidate is plain float32 (no ``float32()`` twin). Sides
    that cannot run in float64 (no ``float64()``) give ``(cand, {})``: no rounding term."""
    make64 = getattr(candidate, "float64", None)
    if make64 is None:
        return cand, {}
    c64 = make64().run(inputs)
    twin32 = getattr(candidate, "float32", lambda: None)()
    return (cand if twin32 is None else twin32.run(inputs)), c64


def candidate_rounding(candidate, inputs: Inputs, cand: dict) -> tuple[dict, dict]:
    """Per tap, the candidate's own rounding on these inputs, from its float64 twin ``c64``:

    - ``rounding``: max |c32 - c64|, its plain float32 twin's (the candidate itself when it is plain
      float32): the fp32 profile's rounding term;
    - ``tier_rounding``: max |c - c64| of the candidate as it ran (its precision tier)."""
    c32, c64 = twin_runs(candidate, inputs, cand)
    return _rounding(c32, c64), _rounding(cand, c64)


def rounding_estimate(candidate, inputs: Inputs, cand: dict) -> dict:
    """Per tap, max |float32 - float64| of the candidate on these inputs (see ``candidate_rounding``)."""
    return candidate_rounding(candidate, inputs, cand)[0]


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def clear_report(report_dir: str, names=("report.json", "report.md")) -> None:
    """Removes a previous run's report first, so a failed run never leaves one that looks current."""
    for n in names:
        p = os.path.join(report_dir, n)
        if os.path.exists(p):
            os.remove(p)


def write_report(report: dict, report_dir: str, stem: str = "report") -> tuple[str, str]:
    os.makedirs(report_dir, exist_ok=True)
    j = os.path.join(report_dir, f"{stem}.json")
    m = os.path.join(report_dir, f"{stem}.md")
    _atomic_write(j, json.dumps(report, indent=2) + "\n")
    _atomic_write(m, render_markdown(report))
    return j, m


def _g(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.3g}"


def _cos(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.9f}"


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
                     f"{t['atol']:g} | {t['rtol']:g} | {'yes' if t['passed'] else '**NO**'} | {t['worst_index']} |")
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{t['name']}`: {t['reason']}" for t in failed]
    return "\n".join(lines) + "\n"
