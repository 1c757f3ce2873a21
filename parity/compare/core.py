"""Run two sides on the same inputs, compare every tap, write report.json and report.md."""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional

import numpy as np

from bert_torch._io import dumps, write_text

from parity.environment import machine, same_machine
from parity.numerics.hints import hint
from parity.inputs import Inputs
from parity.numerics.metrics import Profile, compare_tap
from parity.numerics.precision import Tier, precision_hints
from parity.compare.render import fmt
from parity.sides.base import Side, complete
from parity.sides.tapstore import TapStore


# A per-tap rule on top of the profile: (row, reference array, candidate array, rounding) -> row.
# The release gate applies its waivers through it.
Adjust = Callable[[dict, Optional[np.ndarray], Optional[np.ndarray], Optional[float]], dict]
# How a run's taps are obtained: (side, label) -> {tap: array} (``RunStore.collect``).
Collect = Callable[[Side, str], Mapping[str, np.ndarray]]


class RunStore:
    """Where a comparison keeps its runs' taps: in memory (each run a dict), or, with ``spill``, streamed
    to disk one tap at a time (``parity.sides.tapstore``) and read back one tap at a time, so that memory holds a
    block's taps at most whatever the model's size. The arrays, and so every number, are the same."""

    def __init__(self, inputs: Inputs, spill: bool = False, spill_dir: Optional[str] = None):
        self.inputs, self.spill, self.spill_dir = inputs, spill, spill_dir
        self.stores: list[TapStore] = []

    def collect(self, side: Side, label: str) -> Mapping[str, np.ndarray]:
        if not self.spill:
            return side.run(self.inputs)
        return self.produce(label, lambda consume: side.stream(self.inputs, consume))

    def produce(self, label: str, run: Callable[[Callable[[str, np.ndarray], None]], None]
                ) -> Mapping[str, np.ndarray]:
        """What ``run(consume)`` hands to ``consume``, kept like ``collect``'s taps (spilled: tap by tap)."""
        if not self.spill:
            out: dict = {}
            run(out.__setitem__)
            return out
        store = TapStore(self.spill_dir, label)
        self.stores.append(store)
        run(store.put)
        return store

    @property
    def spilled_bytes(self) -> int:
        return sum(s.nbytes for s in self.stores)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compare_sides(reference: Side, candidate: Side, inputs: Inputs, profile: Profile,
                  adjust: Optional[Adjust] = None, spill: bool = False, spill_dir: Optional[str] = None) -> dict:
    """The contract's report (less ``environment``): every tap of either side, in forward order.

    A tap one side lacks is a failure, never a skip; taps only the candidate publishes are
    appended after the reference's. ``adjust``, when given, sees each tap's row with its arrays
    and returns the row the verdict uses (every caller compares taps here, and only here).
    ``spill``: the runs go to disk tap by tap (``RunStore``; ``spill_dir`` for the temporary files).
    """
    reference, candidate = complete(reference), complete(candidate)
    with RunStore(inputs, spill, spill_dir) as runs:
        report = _compare(reference, candidate, inputs, profile, adjust, runs)
        if spill:
            report["memory"] = {"spilled_to_disk_bytes": runs.spilled_bytes}
    return report


def _compare(reference: Side, candidate: Side, inputs: Inputs, profile: Profile, adjust: Optional[Adjust],
             runs: RunStore) -> dict:
    ref = runs.collect(reference, "reference")
    cand = runs.collect(candidate, "candidate")
    c32, c64 = twin_runs(candidate, inputs, cand, runs.collect) if profile.rounding_k else (cand, {})
    rounding = _rounding(c32, c64)
    tier_rounding = rounding if c32 is cand else _rounding(cand, c64)
    tier = candidate.tier
    names = list(reference.tap_names) + [n for n in candidate.tap_names if n not in reference.tap_names]
    ref_rounding = reference_tier_rounding(reference, candidate, inputs, c64, runs.collect)
    # Taps the candidate declared it cannot observe (parity.candidates.factory) are listed, not compared;
    # any other tap that does not arrive fails.
    unobservable = candidate.unobservable
    declared = {n: unobservable[n] for n in names if n in unobservable and n not in cand}
    taps = []
    for n in names:
        if n in declared:
            continue
        r, c = ref.get(n), cand.get(n)   # one tap of each run at a time
        row = compare_tap(n, r, c, profile, rounding.get(n), tier, tier_rounding.get(n), ref_rounding.get(n))
        taps.append(adjust(row, r, c, rounding.get(n)) if adjust else row)
        del r, c
    first = next((t["name"] for t in taps if not t["passed"]), None)
    # Both sides say which GELU they compute: when they differ the candidate is another model, whatever its
    # taps (on small activations the two forms can agree within tolerance), and never a pass.
    gelus = (reference.gelu, candidate.gelu)
    other_gelu = all(gelus) and gelus[0] != gelus[1]
    report = {
        "verdict": "fail" if first or not taps or other_gelu else "pass",
        "first_divergence": first,
        "profile": profile.to_dict(),
        "inputs": dict(inputs.meta),
        "sides": {"reference": reference.description, "candidate": candidate.description,
                  "gelu": {"reference": reference.gelu, "candidate": candidate.gelu}},
        "taps": taps,
        "taps_compared": len(taps),
        "not_observable": [{"name": n, "reason": r} for n, r in declared.items()],
    }
    if tier is not None:
        report["precision"] = tier.to_dict(str(candidate.device))
    if reference.precision:
        report["reference_precision"] = reference.precision
    notes = machine_notes(profile, reference.meta)
    if notes:
        report["notes"] = notes
    hints = precision_hints(names, ref, cand, c32, c64, tier) if c64 else []
    if ref_rounding:   # a TF32 reference that says so is accounted for above, not a trap to point out
        hints = [h for h in hints if h["cause"] != "tf32_reference"]
    if other_gelu:
        hints.insert(0, hint("gelu_variant", None, f"the reference computes the {gelus[0]} GELU and the candidate "
                                                   f"the {gelus[1]} GELU: another model, so the comparison fails "
                                                   f"whatever its taps"))
    if hints:
        report["hints"] = hints
    if candidate.record() is not None:
        report["candidate"] = candidate.record()
    return report


def reference_tier_rounding(reference, candidate, inputs: Inputs, c64: Mapping, collect: Optional[Collect] = None
                            ) -> dict:
    """A reference recorded in TF32 (its ``precision``): per tap, an estimate of its own TF32 rounding, the
    candidate's under the exact TF32 emulation against its float64 twin. Empty for a float32 reference."""
    if (reference.precision or {}).get("tier") != "tf32" or not c64 or not candidate.capabilities.tiers:
        return {}
    collect = collect or (lambda side, label: side.run(inputs))
    return _rounding(collect(candidate.with_tier(Tier("tf32")), "candidate-tf32"), c64)


def machine_notes(profile: Profile, golden_meta: Optional[dict]) -> list[str]:
    """Says when numbers measured on another machine enter this comparison: a calibration file's floors,
    a golden file's reference taps. Both machines are named; the verdict stands on this machine's
    own rounding terms (docs/precision.md)."""
    here, notes = machine(), []
    if profile.calibrated_on is not None or profile.floors:
        there = profile.calibrated_on
        if not same_machine(there, here):
            notes.append(f"profile {profile.name}: its noise floors were measured on "
                         f"{_describe(there)}, and are applied here on {_describe(here)}; every tap's tolerance "
                         f"is at least {profile.rounding_k:g} x this machine's own float32 rounding on these inputs")
    ref_machine = ((golden_meta or {}).get("environment") or {}).get("machine")
    if golden_meta is not None and not same_machine(ref_machine, here):
        notes.append(f"the golden reference was recorded on {_describe(ref_machine)} "
                     f"({(golden_meta.get('precision') or {}).get('tier', 'fp32')}), and is replayed here on "
                     f"{_describe(here)}: the reference carries that machine's float32 rounding, which the profile "
                     f"covers (measured: TensorFlow with and without oneDNN, i.e. other kernels, within it)")
    return notes


def _describe(m: Optional[dict]) -> str:
    if not m:
        return "an unlabelled machine"
    return f"{m.get('cpu')} ({m.get('arch')}, torch kernels {m.get('torch_cpu_capability')}" + \
        (f", GPU {m['gpu']}" if m.get("gpu") else "") + ")"


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _rounding(c: Mapping, c64: Mapping) -> dict:
    out = {}
    for n in c:
        if n not in c64:
            continue
        a, b = c[n], c64[n]   # read once each: a TapStore reads from disk
        if np.size(a) and np.shape(a) == np.shape(b):
            out[n] = _max_diff(a, b)
    return out


def twin_runs(candidate, inputs: Inputs, cand: Mapping, collect: Optional[Collect] = None) -> tuple[Mapping, Mapping]:
    """The candidate's plain-float32 taps ``c32`` and its float64 twin's ``c64`` on these inputs.

    ``c32`` is ``cand`` itself when the candidate is plain float32 (no ``float32()`` twin). Sides
    that cannot run in float64 (``capabilities.float64`` false) give ``(cand, {})``: no rounding term."""
    candidate = complete(candidate)
    collect = collect or (lambda side, label: side.run(inputs))
    twin64 = candidate.float64() if candidate.capabilities.float64 else None
    if twin64 is None:
        return cand, {}
    c64 = collect(twin64, "float64")
    twin32 = candidate.float32()
    return (cand if twin32 is None else collect(twin32, "float32")), c64


def write_report(report: dict, report_dir: str, stem: str = "report") -> tuple[str, str]:
    """report.json and report.md, and for people report.html (self-contained: the plots embedded),
    report.csv (the per-tap table, pandas) and the plots (report-growth.png, report-heatmap.png).
    The pictures and the table need matplotlib and pandas (the ``test`` extra): without them the report
    says which files were not written, and why."""
    from parity.compare import render as report_render
    os.makedirs(report_dir, exist_ok=True)
    files = {"written": [f"{stem}.json", f"{stem}.md"], "not_written": {}}
    try:
        plots = report_render.compare_plots(report, report_dir, stem)
        files["written"] += plots
    except ImportError as e:
        plots = []
        files["not_written"]["plots"] = f"matplotlib is not installed ({e.name})"
    try:
        frame = report_render.taps_frame(report["taps"])
        write_text(os.path.join(report_dir, f"{stem}.csv"), frame.to_csv(index=False), "--report-dir")
        files["written"].append(f"{stem}.csv")
    except ImportError as e:
        files["not_written"][f"{stem}.csv"] = f"pandas is not installed ({e.name})"
    files["written"].append(f"{stem}.html")
    report["files"] = files
    j = os.path.join(report_dir, f"{stem}.json")
    m = os.path.join(report_dir, f"{stem}.md")
    write_text(j, dumps(report, indent=2) + "\n", "report")   # strict JSON: NaN/Inf as "nan"/"inf"/"-inf"
    write_text(m, render_markdown(report), "report")
    write_text(os.path.join(report_dir, f"{stem}.html"), report_render.compare_html(report, report_dir, plots), "report")
    return j, m


def _g(x: Optional[float]) -> str:
    return fmt(x)


def _cos(x: Optional[float]) -> str:
    return fmt(x, ".9f")


def environments_table(report: dict) -> list[str]:
    """A golden replay: the recording machine and this one, side by side."""
    env = report.get("environment") or {}
    there = env.get("reference_environment")
    if not there:
        return []
    rows = [("CPU", lambda e: (e.get("machine") or {}).get("cpu") or e.get("processor")),
            ("torch CPU kernels", lambda e: (e.get("machine") or {}).get("torch_cpu_capability")),
            ("ISA", lambda e: " ".join((e.get("machine") or {}).get("isa") or []) or None),
            ("GPU", lambda e: (e.get("machine") or {}).get("gpu") or e.get("gpu")),
            ("arithmetic", None), ("platform", lambda e: e.get("platform")),
            ("Python", lambda e: e.get("python")), ("torch", lambda e: e.get("torch")),
            ("TensorFlow", lambda e: e.get("tensorflow")), ("bert-tensorflow", lambda e: e.get("bert_tensorflow"))]
    ref_prec = (report.get("reference_precision") or {}).get("tier", "fp32")
    cand_prec = (report.get("precision") or {}).get("description", "fp32")
    out = ["", "| environment | reference (recorded) | candidate (this run) |", "| --- | --- | --- |"]
    for label, get in rows:
        a, b = (f"TensorFlow {ref_prec}", f"bert_torch {cand_prec}") if get is None else (get(there), get(env))
        out.append(f"| {label} | {a if a is not None else 'not recorded'} | {b if b is not None else '—'} |")
    return out


def gelu_line(report: dict) -> str:
    """Which GELU each side computed, and how many taps the verdict rests on."""
    g = report["sides"].get("gelu") or {}
    differ = g.get("reference") and g.get("candidate") and g["reference"] != g["candidate"]
    hidden = len(report.get("not_observable") or ())
    return (f"- GELU: reference {g.get('reference') or 'unknown'}, candidate {g.get('candidate') or 'unknown'}"
            + (" (**they differ**)" if differ else "") + f". The verdict rests on {len(report['taps'])} taps"
            + (f"; {hidden} not observable in this candidate (listed below)" if hidden else "") + ".")


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
        gelu_line(report),
        f"- Profile `{prof['name']}`: {prof['rule']} (atol {prof['atol']:g}, rtol {prof['rtol']:g}). {prof['description']}",
        f"- Inputs: batch {inp['batch_size']}, sequence {inp['seq_len']}, seed {inp['seed']}, "
        f"{inp['padding_positions']} padding positions in {inp['rows_with_padding']} rows, "
        f"sentences from `{inp['sentences']}`",
    ]
    if report.get("precision"):
        p = report["precision"]
        lines.append(f"- Candidate precision: {p['description']} on {p['device']} (unit roundoff {p['unit_roundoff']:.3g}; "
                     f"atol grows by {p.get('margin', 2):g} x the candidate's measured rounding, up to {p['ceiling']:g} x "
                     f"what the tier's unit roundoff predicts)")
    lines += [f"- **Hint `{h['cause']}`**: {h['evidence']}" for h in report.get("hints", [])]
    lines += [f"- Note: {n}" for n in report.get("notes", [])]
    if env:
        lines.append(f"- Environment: Python {env['python']}, torch {env['torch']}, TensorFlow {env['tensorflow']}, "
                     f"bert-tensorflow {env['bert_tensorflow']}, numpy {env['numpy']}, device {env['device']}")
        lines += [f"  - sha256 `{k}`: `{v}`" for k, v in env.get("sha256", {}).items()]
    lines += environments_table(report)
    lines += ["", "| tap | shape | max_abs | max_rel | mean_abs | rms | cosine | atol | rtol | passed | worst_index |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for t in report["taps"]:
        lines.append(f"| `{t['name']}` | {t['shape']} | {_g(t['max_abs'])} | {_g(t['max_rel'])} | {_g(t['mean_abs'])} | "
                     f"{_g(t['rms'])} | {_cos(t['cosine'])} | "
                     f"{fmt(t['atol'], 'g')} | {fmt(t['rtol'], 'g')} | {'yes' if t['passed'] else '**NO**'} | {t['worst_index']} |")
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{t['name']}`: {t['reason']}" for t in failed]
    if report.get("not_observable"):
        lines += ["", "## Not observable in this candidate", ""] + [
            f"- `{t['name']}`: {t['reason']}" for t in report["not_observable"]]
    return "\n".join(lines) + "\n"
