"""The ratchet against the last release's report (``reports/baseline.json``): a tap that passed there
and fails now, or whose error grew past the growth factor above the noise floor, is a regression."""
from __future__ import annotations
import os
from typing import Optional

import numpy as np

from bert_torch._io import InputFileError, read_json

from parity.release.context import ReleaseInputError
# Declared with the flags that override them (the options module is light: --help shows them without torch).
# NOISE_FLOOR is in units of the tap's tolerance (tol_ratio).
from parity.release.options import DEFAULT_BASELINE, GROWTH_FACTOR, NOISE_FLOOR  # noqa: F401


def tap_error(t: dict) -> Optional[float]:
    """The ratchet's error of a tap: tol_ratio under the profile (not under a waiver)."""
    return (t.get("without_waiver") or t).get("tol_ratio")


def grew(base: Optional[float], now: Optional[float], factor: float = GROWTH_FACTOR,
         floor: float = NOISE_FLOOR) -> bool:
    """The growth rule: ``now > factor * max(base, floor)``; growth below the floor is noise."""
    if base is None or now is None:
        return False
    return now > factor * max(base, floor)


def _tap_frame(taps: list[dict], err):
    """One row per tap: name, passed, the ratchet's error, max_abs, reason (non-finite numbers, which strict
    JSON writes as strings, become NaN/inf floats)."""
    import pandas as pd
    number = lambda values: pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")  # noqa: E731
    return pd.DataFrame({"tap": [t["name"] for t in taps], "passed": [bool(t.get("passed")) for t in taps],
                         "err": number([err(t) for t in taps]), "max_abs": number([t.get("max_abs") for t in taps]),
                         "reason": [t.get("reason") for t in taps]})


def tap_regressions(check: str, base_taps: list[dict], now_taps: list[dict], err=tap_error,
                    factor: float = GROWTH_FACTOR, floor: float = NOISE_FLOOR) -> list[dict]:
    """The baseline's taps joined with today's by name (pandas, baseline order): a tap missing now, a new
    failure, or error growth past ``grew``'s rule is a regression."""
    base, now = _tap_frame(base_taps, err), _tap_frame(now_taps, err)
    j = base.merge(now, on="tap", how="left", suffixes=("_base", "_now"), indicator=True)
    missing = j["_merge"] == "left_only"
    failed = ~missing & j["passed_base"] & (j["passed_now"] == False)  # noqa: E712 (NaN rows are missing ones)
    growth = ~missing & ~failed & (j["err_now"] > factor * np.maximum(j["err_base"], floor))
    value = lambda x: None if x is None or x != x else float(x)  # noqa: E731 (NaN -> None)
    j["kind"] = np.select([missing, failed, growth], ["missing", "new failure", "error growth"], default="")
    out = []
    for r in j[j["kind"] != ""].itertuples(index=False):
        if r.kind == "missing":
            out.append({"check": check, "tap": r.tap, "kind": "missing", "detail": "in the baseline, not produced now"})
        elif r.kind == "new failure":
            out.append({"check": check, "tap": r.tap, "kind": "new failure", "detail": r.reason_now,
                        "baseline": value(r.err_base), "now": value(r.err_now)})
        else:
            b, n = value(r.err_base), value(r.err_now)
            g = n / max(b, 1e-30)
            out.append({"check": check, "tap": r.tap, "kind": "error growth", "baseline": b, "now": n, "growth": g,
                        "max_abs_baseline": value(r.max_abs_base), "max_abs_now": value(r.max_abs_now),
                        "detail": (f"tol_ratio {b:.3g} -> {n:.3g} (x{g:.1f}; max_abs {value(r.max_abs_base):.3g} -> "
                                   f"{value(r.max_abs_now):.3g}), still "
                                   f"{'within' if r.passed_now else 'outside'} tolerance")})
    return out


def ratchet(sections: list[dict], baseline: Optional[dict], factor: float = GROWTH_FACTOR,
            floor: float = NOISE_FLOOR) -> dict:
    """Compares this run's sections with the baseline report's, section by section, tap by tap."""
    out = {"baseline": None, "rule": f"a tap regresses when it passed in the baseline and fails now, or when "
           f"tol_ratio_now > {factor:g} x max(tol_ratio_baseline, {floor:g})",
           "growth_factor": factor, "noise_floor": floor, "regressions": [], "notes": []}
    if baseline is None:
        out["notes"].append("no baseline: nothing to ratchet against (first release?)")
        return out
    out["baseline"] = {"version": baseline.get("version"), "commit": (baseline.get("git") or {}).get("commit"),
                       "created_utc": baseline.get("created_utc")}
    base_sections = {s["name"]: s for s in baseline.get("checks", [])}
    ran = {s["name"] for s in sections}
    out["notes"] += [f"{n}: in the baseline, not run now" for n in base_sections if n not in ran]
    for s in sections:
        b = base_sections.get(s["name"])
        if b is None:
            out["notes"].append(f"{s['name']}: not in the baseline (new check)")
            continue
        if b.get("verdict") == "pass" and s.get("verdict") != "pass":
            out["regressions"].append({"check": s["name"], "tap": None, "kind": "new failure",
                                       "detail": f"passed in the baseline, {s.get('verdict')} now: {s.get('summary')}"})
        if s.get("kind") != "layerwise" or b.get("kind") != "layerwise":
            continue
        keys = ("batch_size", "seq_len", "seed", "sentences_sha256", "vocab_sha256")
        if any(s["inputs"].get(k) != b["inputs"].get(k) for k in keys):
            out["notes"].append(f"{s['name']}: inputs differ from the baseline's; taps not compared")
            continue
        err = tap_error
        if s.get("profile") != b.get("profile"):
            # tol_ratio is relative to the profile's tolerance: with another profile, compare max_abs in
            # units of today's allowed error for both, so that the ratchet still means "the error grew".
            out["notes"].append(f"{s['name']}: the tolerance profile changed since the baseline; errors "
                                f"compared as max_abs / today's atol")
            atols = {t["name"]: t["atol"] for t in s["taps"]}
            err = lambda t: (None if t.get("max_abs") is None or not atols.get(t["name"])  # noqa: E731
                             else t["max_abs"] / atols[t["name"]])
        if s.get("checkpoint_sha256") != b.get("checkpoint_sha256"):
            out["notes"].append(f"{s['name']}: checkpoint differs from the baseline's (sha256); compared anyway")
        out["regressions"] += tap_regressions(s["name"], b["taps"], s["taps"], err, factor, floor)
    return out


def load_baseline(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    if not os.path.exists(path):
        return None
    try:
        doc = read_json(path, "baseline report")   # a regular file, bounded by its size
    except InputFileError as e:
        raise ReleaseInputError(f"{path}: not a readable baseline report ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list):
        raise ReleaseInputError(f"{path}: not a release report (no 'checks' list); promote one with `make baseline`")
    problem = release_report_problem(doc)
    if problem:
        raise ReleaseInputError(f"{path}: not a release report as the release writes them: {problem}")
    return doc


def release_report_problem(doc: dict) -> Optional[str]:
    """What in a release report's structure the ratchet and ``--promote`` could not read, or None: checked
    before either uses it, so that a malformed baseline is bad input named up front, never a crash later."""
    for key, kinds in (("verdict", str), ("version", (str, type(None))), ("created_utc", (str, type(None))),
                       ("git", (dict, type(None))), ("checks_run", (list, type(None)))):
        if not isinstance(doc.get(key), kinds):
            return f"'{key}' is {type(doc.get(key)).__name__}"
    if not all(isinstance(n, str) for n in doc.get("checks_run") or []):
        return "'checks_run' holds a value that is not a check's name"
    for i, c in enumerate(doc["checks"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return f"checks[{i}] is not a check with a name"
        if c.get("kind") != "layerwise":
            continue
        if not isinstance(c.get("inputs"), dict) or not isinstance(c.get("taps"), list):
            return f"check {c['name']!r}: a layerwise check needs 'inputs' and a 'taps' list"
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in c["taps"]):
            return f"check {c['name']!r}: a tap without a name"
    return None
