"""``bert-parity evaluate`` for people: report.md (the verdict line first, then the metrics side by side, the rule,
the examples predicted differently, the logit differences, McNemar, hints) and the short printed summary."""
from __future__ import annotations

import os
from typing import Optional

from parity.compare.render import fmt

SHOWN = 20   # differing examples listed in report.md (all of them are in report.json)


def _metric(task: str, value) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if task == "mrpc" else f"{value:.2f}")


def verdict_line(report: dict) -> str:
    numbers = report["rule_numbers"]
    form = report["form"]["name"]
    if report["form"]["lossy"]:
        short = [f"{k} {_metric(report['task'], v['candidate'])} vs {_metric(report['task'], v['reference'])}"
                 f"{'' if v['passed'] else ' (below ' + _metric(report['task'], v['required']) + ')'}"
                 for k, v in numbers["metrics"].items()]
        why = (f"lossy form, {form}: every metric at least {numbers['min_ratio']:g} x the reference's: "
               + "; ".join(short))
    else:
        why = (f"exact form, {form}: {report['examples'] - numbers['differing']}/{report['examples']} predictions "
               f"alike, {numbers['within_noise']} differing within the rounding noise, {numbers['counted']} "
               f"counted against; metrics {'equal' if numbers['metrics_equal'] else 'differ'} outside the noise")
        outside = numbers.get("logits_outside_noise") or {}
        if outside.get("examples"):
            w = outside["worst"]
            why += (f"; head logits outside the rounding noise on {outside['examples']}/{report['examples']} "
                    f"examples (worst {w['tap']} of {w['example']}: |difference| {fmt(w['difference'])}, "
                    f"{fmt(w['times_noise'])} x its noise {fmt(w['noise'])})")
    if not numbers["finite"]:
        why += "; NaN or infinite logits"
    return f"verdict: {report['verdict']} ({why})"


def metric_rows(report: dict) -> list[tuple[str, str, str]]:
    ref, cand = report["metrics"]["reference"], report["metrics"]["candidate"]
    return [(k, _metric(report["task"], ref[k]), _metric(report["task"], cand.get(k))) for k in ref]


def _differing_cells(task: str, d: dict) -> list[str]:
    if task == "mrpc":
        return [str(d["example"]), str(d["label"]), str(d["reference"]), str(d["candidate"]), fmt(d["margin"]),
                fmt(d["noise"]), "yes" if d["within_noise"] else "no"]
    quote = lambda s: "`" + str(s).replace("`", "'").replace("|", "/")[:60] + "`"  # noqa: E731
    return [str(d["example"]), quote(d["reference"]), quote(d["candidate"]), fmt(d["margin"]), fmt(d["noise"]),
            "yes" if d["within_noise"] else "no"]


def render_markdown(report: dict) -> str:
    task = report["task"]
    lines = [f"# bert-parity evaluate: {task}", "", f"**{verdict_line(report)}**", "",
             f"- examples: {report['examples']} ({report['features']} features); agreement "
             f"{report['agreement']:.4f} ({task_unit(task)} predicted alike)",
             f"- form: {report['form']['name']} ({'lossy' if report['form']['lossy'] else 'exact'}); transform: "
             f"{report['transform'] or 'none'}",
             f"- reference: {report['sides']['reference']}", f"- candidate: {report['sides']['candidate']}",
             f"- rule: {report['rule']}", "", "## Metrics", "", "| metric | reference | candidate |",
             "| --- | ---: | ---: |"]
    lines += [f"| {k} | {r} | {c} |" for k, r, c in metric_rows(report)]
    m = report["mcnemar"]
    lines += ["", f"McNemar (exact): p = {fmt(m['p_value'])}; {m['discordant']} discordant pairs "
              f"({m['reference_only_correct']} only the reference right, {m['candidate_only_correct']} only the "
              f"candidate right)."]
    if report["hints"]:   # right after the numbers they explain
        lines += ["", "## Hints", ""] + [f"- **{h['cause']}**: {h['evidence']}" for h in report["hints"]]
    lines += ["", "## Logit differences", "",
              "| head logits | count | max | p50 | p99 |", "| --- | ---: | ---: | ---: | ---: |"]
    d = report["logit_differences"]
    rows = [("all", d)] + list(d["taps"].items())
    lines += [f"| {name} | {s['count']} | {fmt(s['max'])} | {fmt(s['p50'])} | {fmt(s['p99'])} |" for name, s in rows]
    nf = d["non_finite"]
    if nf["reference"] or nf["candidate"]:
        lines += ["", f"Non-finite logits: reference {nf['reference']}, candidate {nf['candidate']}."]
    noise = report["noise"]
    lines += ["", "## Rounding noise", "", f"Profile {noise['profile']}: " + "; ".join(
        f"{tap}: atol {fmt(t['atol'])} + scale {fmt(t['scale'])} x max|reference| {fmt(noise['magnitude'][tap])} + "
        f"rtol {fmt(t['rtol'])} x |logit| + rounding_k {fmt(t['rounding_k'])} x the candidate's float32 rounding"
        for tap, t in noise["taps"].items()) + f". Rounding: {noise['rounding']}."]
    differing = report["differing"]
    lines += ["", f"## Predicted differently ({len(differing)})", ""]
    if differing:
        head = (["example", "label", "reference", "candidate", "reference margin", "noise", "within noise"]
                if task == "mrpc" else ["question", "reference", "candidate", "reference margin", "noise",
                                        "within noise"])
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(_differing_cells(task, x)) + " |" for x in differing[:SHOWN]]
        if len(differing) > SHOWN:
            lines.append(f"\n... and {len(differing) - SHOWN} more in report.json")
    else:
        lines.append("None.")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def task_unit(task: str) -> str:
    return "labels" if task == "mrpc" else "answer texts"


def print_summary(report: dict, report_dir: Optional[str]) -> None:
    """The verdict, the metrics side by side, agreement, McNemar's p, the hints, and where the report is."""
    print(verdict_line(report))
    width = max(len(k) for k, _, _ in metric_rows(report))
    print(f"  {'':<{width}}  {'reference':>10}  {'candidate':>10}")
    for k, r, c in metric_rows(report):
        print(f"  {k:<{width}}  {r:>10}  {c:>10}")
    numbers = report["rule_numbers"]
    m = report["mcnemar"]
    d = report["logit_differences"]
    print(f"agreement: {report['agreement']:.4f} of {report['examples']} examples ({len(report['differing'])} "
          f"predicted differently); McNemar exact p = {fmt(m['p_value'])} ({m['discordant']} discordant)")
    print(f"head logits |reference - candidate|: max {fmt(d['max'])}, p50 {fmt(d['p50'])}, p99 {fmt(d['p99'])}")
    if not report["form"]["lossy"] and numbers["within_noise"]:
        print(f"{numbers['within_noise']} differing prediction(s) within the rounding noise (listed in the report)")
    for h in report["hints"]:
        print(f"hint {h['cause']}: {h['evidence']}")
    for n in report["notes"]:
        print(f"note: {n}")
    if report_dir:
        print(f"report: {os.path.join(report_dir, 'report.md')} (and report.json, predictions.json)")
