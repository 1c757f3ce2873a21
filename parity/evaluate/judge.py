"""The verdict of a task-level comparison, from both sides' head logits and predictions (numpy only).

Two rules, by the candidate's form:

- exact forms (float32 arithmetic: a plain candidate, ``--transform compile``): every prediction alike, save where
  the reference's own margin (MRPC: its top logit minus its runner-up; SQuAD: its best span score minus its
  second-best, start plus end logit) is within the rounding noise of the logits that margin is made of. Those
  examples are listed, not counted against, and the metrics must be equal once they are set aside. And every
  head logit must be within the rounding noise of the reference's (``logit_excess``): a float32 form computes
  the same function, so a candidate whose logits are off by far more than float32 rounding is not one, even where
  no prediction happens to flip (a quantized embedding table: logits 1e-3 off, every MRPC label alike).
  The noise of one logit is the tolerance the fp32-cpu profile (``parity.numerics.metrics``) allows that head
  tap at these logits' magnitude: atol + scale x max|reference tap| + rtol x |logit| + rounding_k x the
  candidate's own float32 rounding (max |float32 - float64| of that example's logits, measured where the
  candidate has a float64 twin). A margin's noise is the sum over its logits: each may move by its tolerance.
- lossy forms (``--transform int8-dynamic``, a quantized ONNX file, the tf32/bf16/fp16 tiers): every metric of the
  candidate at least ``min_ratio`` times the reference's. Agreement and McNemar are reported, not judged.

A NaN or infinite logit on either side fails either rule. Hints name the planted faults a task-level comparison
shows plainly: the classifier's rows in another order (id2label, output_weights), SQuAD's start and end swapped;
and, when an exact form fails otherwise and the candidate's weights file can be read, how its tensors differ from
the checkpoint's (``weights_hints``: a table rounded to 8-bit levels, or compare's weight signatures).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from fnmatch import fnmatchcase
from typing import Optional

import numpy as np

from parity.numerics.metrics import Profile

NOISE_PROFILE = "fp32-cpu"
# A permutation of the head's columns (or start/end swapped) that brings the candidate this much closer to the
# reference than the given order does is reported as a hint.
CLOSER = 0.5
MAX_PERMUTED_LABELS = 6   # label orders tried: C! permutations


@dataclasses.dataclass(frozen=True)
class Form:
    """How the candidate computes: exact (float32) or lossy, and why."""
    lossy: bool
    name: str


def form_of(transform: Optional[str], tier_name: str, tier_text: str, onnx_quantized: Optional[str]) -> Form:
    if transform == "int8-dynamic":
        return Form(True, "--transform int8-dynamic (int8 Linear layers)")
    if onnx_quantized:
        return Form(True, f"a quantized ONNX file ({onnx_quantized})")
    if tier_name != "fp32":
        return Form(True, f"--precision {tier_text}")
    return Form(False, "--transform compile (float32)" if transform == "compile" else "float32")


# ---------------------------------------------------------------------------------------------
# Margins and their noise.

@dataclasses.dataclass
class Margin:
    """The reference's margin for one example and the logits it is made of, as (tap, value) pairs."""
    value: float
    terms: list


def margins(task: str, ref: dict, ref_nbest: Optional[dict], ids: list) -> list[Margin]:
    """Per example: MRPC the top reference logit minus its runner-up; SQuAD the official n-best's first span
    score minus its second (distinct answer texts), each start logit + end logit. No runner-up: infinite."""
    if task == "mrpc":
        logits = ref["classifier/logits"]
        out = []
        for row in logits:
            order = np.argsort(-row, kind="stable")
            a, b = float(row[order[0]]), float(row[order[1]]) if len(row) > 1 else -math.inf
            out.append(Margin(a - b, [("classifier/logits", a), ("classifier/logits", b)]))
        return out
    out = []
    for q in ids:
        best = (ref_nbest or {}).get(q) or []
        if len(best) < 2:
            out.append(Margin(math.inf, []))
            continue
        s0, e0, s1, e1 = (float(best[i][k]) for i, k in ((0, "start_logit"), (0, "end_logit"),
                                                        (1, "start_logit"), (1, "end_logit")))
        out.append(Margin((s0 + e0) - (s1 + e1), [("squad/start_logits", s0), ("squad/end_logits", e0),
                                                  ("squad/start_logits", s1), ("squad/end_logits", e1)]))
    return out


def margin_noise(margin: Margin, profile: Profile, magnitude: dict, rounding: Optional[float]) -> float:
    """The sum, over the logits the margin is made of, of the profile's tolerance for each (``magnitude``: tap ->
    max |reference| over the task; ``rounding``: the candidate's own float32 rounding on this example, or None)."""
    total = 0.0
    for tap, value in margin.terms:
        atol, rtol = profile.tolerance(tap, np.array([magnitude[tap]]), rounding)
        total += atol + rtol * abs(value)
    return total


def logit_excess(ref: dict, cand: dict, profile: Profile, magnitude: dict,
                 rounding: Optional[dict] = None) -> tuple[np.ndarray, list]:
    """Per feature row: the largest |reference - candidate| / noise over the row's head logits (above 1: outside
    the noise), and where it is (tap, position, both logits, the difference, the noise). The noise of one logit is
    the one ``margin_noise`` sums: the profile's tolerance for that tap at these logits' magnitude (atol + scale x
    max|reference| + rtol x |logit|), plus rounding_k x the candidate's own float32 rounding on rows where
    ``rounding`` (row -> max |float32 - float64|) has it. Non-finite logits are left to the rule's ``finite``."""
    taps = list(ref)
    rows = int(np.shape(ref[taps[0]])[0]) if taps else 0
    worst_ratio = np.zeros(rows)
    where: list = [None] * rows
    for tap in taps:
        r = np.asarray(ref[tap], np.float64).reshape(rows, -1)
        c = np.asarray(cand[tap], np.float64).reshape(rows, -1)
        atol, rtol = profile.tolerance(tap, np.array([magnitude[tap]]), None)
        row_atol = np.full(rows, atol)
        for row, value in (rounding or {}).items():
            row_atol[row] = profile.tolerance(tap, np.array([magnitude[tap]]), value)[0]
        allowed = row_atol[:, None] + rtol * np.abs(r)
        with np.errstate(invalid="ignore"):
            ratio = np.where(np.isfinite(r) & np.isfinite(c), np.abs(r - c) / allowed, 0.0)
        at = np.argmax(ratio, axis=1) if ratio.shape[1] else np.zeros(rows, int)
        best = ratio[np.arange(rows), at] if ratio.shape[1] else np.zeros(rows)
        for row in np.flatnonzero(best > worst_ratio):
            j = int(at[row])
            worst_ratio[row] = best[row]
            where[row] = {"tap": tap, "position": j, "reference": float(r[row, j]), "candidate": float(c[row, j]),
                          "difference": float(abs(r[row, j] - c[row, j])), "noise": float(allowed[row, j])}
    return worst_ratio, where


def noise_terms(profile: Profile, tap: str) -> dict:
    """The profile's terms for ``tap`` (what the report's rule quotes)."""
    atol, rtol, scale = next(((a, r, sc) for pattern, a, r, sc in profile.overrides if fnmatchcase(tap, pattern)),
                             (profile.atol, profile.rtol, profile.scale))
    return {"atol": atol, "rtol": rtol, "scale": scale, "rounding_k": profile.rounding_k}


# ---------------------------------------------------------------------------------------------
# Statistics.

def logit_differences(ref: dict, cand: dict) -> dict:
    """max, p50 and p99 of |reference - candidate| over every head logit (and per tap); NaN/Inf counted apart."""
    per_tap, every = {}, []
    for tap in ref:
        r, c = np.asarray(ref[tap], np.float64), np.asarray(cand[tap], np.float64)
        finite = np.isfinite(r) & np.isfinite(c)
        d = np.abs(r - c)[finite]
        every.append(d)
        per_tap[tap] = {**_stats(d), "non_finite": {"reference": int((~np.isfinite(r)).sum()),
                                                    "candidate": int((~np.isfinite(c)).sum())}}
    d = np.concatenate([x.ravel() for x in every]) if every else np.zeros(0)
    return {**_stats(d), "taps": per_tap,
            "non_finite": {side: sum(t["non_finite"][side] for t in per_tap.values())
                           for side in ("reference", "candidate")}}


def _stats(d: np.ndarray) -> dict:
    if not d.size:
        return {"count": 0, "max": None, "p50": None, "p99": None}
    return {"count": int(d.size), "max": float(d.max()), "p50": float(np.percentile(d, 50)),
            "p99": float(np.percentile(d, 99))}


def mcnemar(ref_correct: np.ndarray, cand_correct: np.ndarray) -> dict:
    """The exact McNemar test of the paired correctness: a two-sided binomial test (p = 1/2) on the discordant
    pairs; p = 1 when there are none."""
    b = int((ref_correct & ~cand_correct).sum())   # the reference right, the candidate wrong
    c = int((~ref_correct & cand_correct).sum())
    if b + c == 0:
        p = 1.0
    else:
        from scipy.stats import binomtest
        p = float(binomtest(b, b + c, 0.5).pvalue)
    return {"test": "exact McNemar (two-sided binomial test on the discordant pairs, p = 0.5)",
            "reference_only_correct": b, "candidate_only_correct": c, "discordant": b + c, "p_value": p}


# ---------------------------------------------------------------------------------------------
# Hints.

def label_order_hint(ref: np.ndarray, cand: np.ndarray, disagree: list, confident: list) -> Optional[dict]:
    """The classifier's rows in another order: a permutation of the candidate's columns that matches the
    reference far better than the given order, or predictions systematically inverted (most disagreements
    where the reference is confident, the candidate's argmax the reference's argmin)."""
    n, C = ref.shape
    evidence = []
    if 1 < C <= MAX_PERMUTED_LABELS and n:
        fit = {perm: float(np.mean([np.mean(np.abs(cand[:, perm[i]] - ref[:, i])) for i in range(C)]))
               for perm in itertools.permutations(range(C))}
        identity = tuple(range(C))
        best = min(fit, key=fit.get)
        if best != identity and np.isfinite(fit[identity]) and fit[best] < CLOSER * fit[identity]:
            evidence.append(f"the candidate's logits read in column order {list(best)} match the reference's "
                            f"(mean |difference| {fit[best]:.3g}) far better than in order {list(identity)} "
                            f"({fit[identity]:.3g})")
    if disagree:
        confident_set = set(confident)
        inverted = [i for i in disagree if int(np.argmax(cand[i])) == int(np.argmin(ref[i]))]
        sure = [i for i in disagree if i in confident_set]
        many = len(disagree) >= max(2, n // 2)
        if many and len(inverted) >= 0.9 * len(disagree) and len(sure) >= 0.5 * len(disagree):
            evidence.append(f"{len(disagree)} of {n} predictions differ, {len(sure)} of them where the reference is "
                            f"confident (margin above the rounding noise), and in {len(inverted)} the candidate's "
                            f"argmax is the reference's argmin")
    if not evidence:
        return None
    return {"cause": "label_order",
            "evidence": "label order: the classifier's rows look swapped (id2label / output_weights row order): "
                        + "; ".join(evidence)}


def start_end_hint(ref: dict, cand: dict) -> Optional[dict]:
    """SQuAD's start and end logits swapped: the candidate's start matches the reference's end (and end start)."""
    rs, re_, cs, ce = (np.asarray(x, np.float64) for x in (ref["squad/start_logits"], ref["squad/end_logits"],
                                                          cand["squad/start_logits"], cand["squad/end_logits"]))
    direct = float(np.mean(np.abs(cs - rs)) + np.mean(np.abs(ce - re_)))
    swapped = float(np.mean(np.abs(cs - re_)) + np.mean(np.abs(ce - rs)))
    if not (np.isfinite(direct) and swapped < CLOSER * direct):
        return None
    return {"cause": "start_end_swapped",
            "evidence": f"start and end logits swapped: the candidate's start logits match the reference's end logits "
                        f"and its end logits the reference's start (mean |difference| {swapped:.3g} swapped against "
                        f"{direct:.3g} as given): qa_outputs / cls/squad/output_weights rows 0 and 1 in the other "
                        f"order"}


# ---------------------------------------------------------------------------------------------
# The rule.

def judge_exact(disagreements: list[dict], ref_metrics: dict, metrics_outside: dict, finite: bool,
                noise_words: str, logits_outside: Optional[dict] = None) -> dict:
    """Exact form: pass when every differing prediction is within the reference's rounding noise, the metrics
    with those set aside equal the reference's, every head logit is within the rounding noise of the reference's
    (``logits_outside``: {"examples": count, "rows": count, "worst": where it is worst, or None, "max_times_noise":
    the largest |difference| / noise of any logit}), and every logit is finite."""
    counted = [d for d in disagreements if not d["within_noise"]]
    equal = all(metrics_outside[k] == ref_metrics[k] for k in ref_metrics)
    logits_outside = logits_outside or {"examples": 0, "rows": 0, "worst": None}
    passed = finite and not counted and equal and not logits_outside["examples"]
    rule = ("exact form: every prediction alike, save where the reference's own margin is within the rounding "
            "noise (listed, not counted against), the metrics equal once those examples are set aside, and every "
            "head logit within the rounding noise of the reference's (the same per-logit noise); " + noise_words)
    return {"verdict": "pass" if passed else "fail", "rule": rule,
            "numbers": {"differing": len(disagreements), "within_noise": len(disagreements) - len(counted),
                        "counted": len(counted), "metrics_outside_noise": metrics_outside,
                        "metrics_equal": equal, "logits_outside_noise": logits_outside, "finite": finite}}


def judge_lossy(ref_metrics: dict, cand_metrics: dict, min_ratio: float, finite: bool) -> dict:
    """Lossy form: every metric of the candidate at least ``min_ratio`` times the reference's."""
    rows = {}
    for k, r in ref_metrics.items():
        c = cand_metrics[k]
        rows[k] = {"reference": r, "candidate": c, "ratio": (c / r) if r else None, "required": min_ratio * r,
                   "passed": bool(c >= min_ratio * r)}
    passed = finite and all(v["passed"] for v in rows.values())
    rule = (f"lossy form: every metric of the candidate at least {min_ratio:g} x the reference's (--min-ratio); "
            "agreement and the McNemar test are reported, not judged")
    return {"verdict": "pass" if passed else "fail", "rule": rule,
            "numbers": {"min_ratio": min_ratio, "metrics": rows, "finite": finite}}


# ---------------------------------------------------------------------------------------------
# The candidate's weights against the checkpoint's (an exact form that failed with no task hint).

MAX_WEIGHT_HINTS = 5
GRID_SLACK = 1e-3   # a value on an 8-bit level: within this fraction of a step of it (float32 keeps ~1e-5)


def int8_grid(t) -> Optional[str]:
    """How the values of ``t`` lie on 8-bit levels (what storing it as int8/uint8 and reading it back leaves), in
    words, or None: 255 symmetric levels (value / (max|value| / 127) an integer) or 256 asymmetric ones
    ((value - min) / ((max - min) / 255) an integer), per tensor or per row. A float32 tensor of trained or random
    values is on no such grid (each value would have to land within ``GRID_SLACK`` of a step by chance)."""
    t = np.asarray(t, np.float64)
    if t.size < 16 or not np.isfinite(t).all():
        return None
    for axis, per in ((None, "per tensor"), (-1, "per row")):
        if axis is not None and (t.ndim < 2 or t.shape[-1] < 16):
            continue
        big = np.abs(t).max(axis=axis, keepdims=True)
        step = np.where(big > 0, big / 127.0, 1.0)
        q = t / step
        if np.all(np.abs(q - np.round(q)) <= GRID_SLACK):
            s = float(np.max(step))
            return f"255 symmetric 8-bit levels {per} (int8; step {s:.3g})"
        lo, hi = t.min(axis=axis, keepdims=True), t.max(axis=axis, keepdims=True)
        step = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
        q = (t - lo) / step
        if np.all(np.abs(q - np.round(q)) <= GRID_SLACK):
            s = float(np.max(step))
            return f"256 asymmetric 8-bit levels {per} (uint8 with a zero point; step {s:.3g})"
    return None


def weights_hints(tf_w, pt_w) -> list[dict]:
    """How the candidate's weights (file names -> arrays) differ from the checkpoint's (mapped to file names and
    layouts): tensors rounded to 8-bit levels first, one hint (``quantized_embeddings`` when an embedding table is
    among them, ``weights_differ`` otherwise), then compare's weight signatures (parity.numerics.hints: swaps,
    transposes, missing or fresh tensors, values that differ), at most ``MAX_WEIGHT_HINTS`` in all."""
    from parity.numerics.hints import compare_weights, weight_hints
    diffs = compare_weights(tf_w, pt_w)["differences"]
    quantized = {}
    for d in diffs:
        if d["kind"] == "value":
            grid = int8_grid(pt_w[d["name"]])
            if grid and not int8_grid(tf_w[d["name"]]):
                quantized[d["name"]] = (grid, d)
    hints = []
    if quantized:
        tables = [n for n in quantized if n.startswith("embeddings.")]
        what = "; ".join(f"{n}: {d['differing']} of {int(np.size(pt_w[n]))} values differ from the checkpoint's "
                         f"(max error {d['max_abs']:.3g}), all on {grid}" for n, (grid, d) in quantized.items())
        if tables:
            evidence = (f"quantized embeddings: the candidate's embedding table{'s' if len(tables) > 1 else ''} "
                        f"{'hold' if len(tables) > 1 else 'holds'} the checkpoint's values rounded to 8-bit levels "
                        f"({what}): the embeddings were quantized, which no float32 form does; convert the "
                        f"checkpoint again (bert-parity convert), or quantize the Linear layers only (--transform "
                        f"int8-dynamic), judged by the lossy rule")
        else:
            evidence = (f"quantized weights: the candidate's tensors hold the checkpoint's values rounded to 8-bit "
                        f"levels ({what}): they were quantized, which no float32 form does")
        hints.append({"cause": "quantized_embeddings" if tables else "weights_differ",
                      "block": "embeddings" if tables else None, "evidence": evidence,
                      "tensors": list(quantized)})
    rest = {"differences": [d for d in diffs if d["name"] not in quantized]}
    hints += weight_hints(rest, tf_w, pt_w)
    return hints[:MAX_WEIGHT_HINTS]
