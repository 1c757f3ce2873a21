"""diagnosis.json (strict JSON), diagnosis.md, the page and plots, and the one-screen summary."""
from __future__ import annotations

import os

from bert_torch._io import dumps, write_text

from parity.compare.render import fmt

DIAGNOSIS_FILES = ("diagnosis.json", "diagnosis.md")


# Written beside them when the activations ran (and matplotlib is there, for the plots).
DIAGNOSIS_PICTURES = ("diagnosis.html", "diagnosis-growth.png", "diagnosis-heatmap.png")


def public(diagnosis: dict) -> dict:
    return {k: v for k, v in diagnosis.items() if not k.startswith("_")}


def write_diagnosis(diagnosis: dict, report_dir: str) -> tuple[str, str]:
    os.makedirs(report_dir, exist_ok=True)
    j, m = (os.path.join(report_dir, n) for n in DIAGNOSIS_FILES)
    write_text(j, dumps(public(diagnosis), indent=2) + "\n", "diagnosis")   # strict JSON: NaN/Inf as strings
    write_text(m, render_markdown(diagnosis), "diagnosis")
    if diagnosis.get("taps") and diagnosis.get("sides"):   # the end-to-end taps as pictures and a page
        from parity.compare import render as report_render
        try:
            plots = report_render.compare_plots(diagnosis, report_dir, "diagnosis")
        except ImportError:   # matplotlib is in the test extra; the page stands without the plots
            plots = []
        write_text(os.path.join(report_dir, "diagnosis.html"), report_render.compare_html(diagnosis, report_dir, plots),
                   "diagnosis")
    return j, m


def _g(x) -> str:
    return fmt(x)


def render_markdown(d: dict) -> str:
    lines = [f"# Diagnosis: **{d['verdict'].upper()}**", ""]
    if d.get("error"):
        lines += [f"Bad input: {d['error']}", ""]
    lines.append(f"Culprit: `{d['culprit']}`" + (f" (block `{d['culprit_block']}`)" if d.get("culprit_block")
                                                  and d["culprit_block"] != d["culprit"] else ""))
    lines.append("")
    if d["hints"]:
        lines += ["## Hints", ""] + [f"- **{h['cause']}**" + (f" in `{h['block']}`" if h["block"] else "")
                                     + f": {h['evidence']}" for h in d["hints"]] + [""]
    for k, v in d.get("stages", {}).items():
        lines.append(f"- {k}: {v}")
    if "inputs" in d and d["inputs"]:
        i = d["inputs"]
        lines.append(f"- inputs: batch {i.get('batch_size')}, sequence {i.get('seq_len')}, seed {i.get('seed')}, "
                     f"{i.get('padding_positions')} padding positions")
    if d.get("profile"):
        lines.append(f"- profile `{d['profile']['name']}`: {d['profile']['rule']}")
    w = d.get("weights")
    if w:
        lines += ["", "## Weights", "", f"{w['bit_equal']} of {w['checked']} checkpoint variables are bit-equal to "
                  f"their PyTorch tensors."]
        if w["differences"]:
            lines += ["", "| tensor | block | kind | checkpoint shape | PyTorch shape | max_abs |",
                      "| --- | --- | --- | --- | --- | ---: |"]
            lines += [f"| `{x['name']}` | {x['block']} | {x['kind']} | {x['tf_shape']} | {x['pt_shape']} | {_g(x['max_abs'])} |"
                      for x in w["differences"]]
    if d.get("blocks"):
        lines += ["", "## Blocks: local versus inherited error", "",
                  "Local: the block fed the other side's input to it. `tol` is the worst error as a fraction of "
                  "its tolerance.", "",
                  "| block | status | local PT on TF inputs (max_abs, tol) | local TF on PT inputs | end to end |",
                  "| --- | --- | --- | --- | --- |"]
        for b in d["blocks"]:
            cell = lambda x: f"{_g(x['max_abs'])} ({_g(x['tol_ratio'])}){'' if x['passed'] else ' **FAIL**'}"
            lines.append(f"| `{b['name']}` | {b['status']} | {cell(b['local_pytorch'])} | {cell(b['local_tensorflow'])} "
                         f"| {cell(b['end_to_end'])} |")
    if d.get("taps"):
        lines += ["", "## Taps: error, noise floor, precision ladder, real vs padded positions", "",
                  f"Ladder: \"formulas differ\" when |TF32 - PT64| > {d['ladder_factor']:g} x max(|PT32 - PT64|, floor).", "",
                  "| tap | max_abs | floor | error/floor | TF32-PT64 | PT32-PT64 | ladder | real max | padded max | passed |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
        for t in d["taps"]:
            real = (t.get("real") or {}).get("max_abs")
            pad = (t.get("padded") or {}).get("max_abs")
            lines.append(f"| `{t['name']}` | {_g(t['max_abs'])} | {_g(t['floor'])} | {_g(t['error_over_floor'])} | "
                         f"{_g(t['ladder']['tf32_vs_pt64'])} | {_g(t['ladder']['pt32_vs_pt64'])} | "
                         f"{t['ladder']['reading'] or '—'} | {_g(real)} | {_g(pad)} | "
                         f"{'yes' if t['passed'] else '**NO**'} |")
        heads = [t for t in d["taps"] if not t["passed"] and t.get("per_head_max_abs")]
        if heads:
            lines += ["", "### Failing attention taps, per head (max_abs)", ""]
            lines += [f"- `{t['name']}`: " + ", ".join(f"h{i} {_g(x)}" for i, x in enumerate(t["per_head_max_abs"]))
                      for t in heads]
    if d.get("repro"):
        lines += ["", "## Repro", "", f"`python {d['repro']}/repro.py` feeds `{d['culprit_block']}` TensorFlow's input "
                  f"to it with `bert_torch` alone and prints each tap's error (exit 1 when it reproduces)."]
    return "\n".join(lines) + "\n"


def print_summary(d: dict, json_path: str) -> None:
    print(f"verdict: {d['verdict']}; culprit: {d['culprit'] or 'none'}"
          + (f" (block {d['culprit_block']})" if d.get("culprit_block") and d["culprit_block"] != d["culprit"] else ""))
    w = d["weights"]
    print(f"weights: {w['bit_equal']}/{w['checked']} bit-equal")
    for h in d["hints"]:
        print(f"  hint {h['cause']}" + (f" [{h['block']}]" if h["block"] else "") + f": {h['evidence']}")
    for b in d.get("blocks", []):
        if b["status"] != "ok":
            print(f"  {b['name']:<24} {b['status']}: local {_g(b['local_pytorch']['max_abs'])}, "
                  f"end to end {_g(b['end_to_end']['max_abs'])}")
    if d.get("repro"):
        print(f"repro: python {os.path.join(os.path.dirname(json_path), d['repro'], 'repro.py')}")
    print(f"diagnosis: {json_path}")
