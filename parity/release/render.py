"""The release report for people: report.md, report.html and its plots (error growth per tap kind, a
layer x kind heatmap per layerwise check, the worst tap's error histogram)."""
from __future__ import annotations
import html as _html
import os
import numpy as np

from parity.sides.refcache import describe_provenance
from parity.compare.render import (CSS, LAYER_KINDS, _first_cell, layer_grid, TAP_COLUMNS, ZERO, _g, _img, draw_ratio_heatmap,
                             num, save_png, slug, tap_cells)


def make_plots(report: dict, worst: dict, out_dir: str) -> list[str]:
    """Error growth per tap kind and a layer x kind heatmap for every layerwise check; the histogram of
    the worst tap's errors. Returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for s in report["checks"]:
        if s.get("kind") != "layerwise" or not s.get("taps"):
            continue
        grid, L = layer_grid(s, "max_abs")
        if L == 0:
            continue
        grid[~np.isfinite(grid)] = np.nan   # NaN/Inf taps leave a gap in the plot, never a crash
        # Error growth through the layers, one line per tap kind, log scale.
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        x = np.arange(L)
        atol, _ = layer_grid(s, "atol")
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for j, kind in enumerate(LAYER_KINDS):
            y = np.where(grid[:, j] > 0, grid[:, j], ZERO)
            c = colours[j % len(colours)]
            ax.plot(x, y, marker="o", ms=3, lw=1.2, label=kind, color=c,
                    linestyle="--" if "attention" in kind else "-")
            ax.plot(x, atol[:, j], lw=0.7, ls=":", color=c)   # each tap's own allowed error, not one atol
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel("max |pytorch - tensorflow|")
        ax.set_title(f"{s['name']}: error through the layers")
        ax.legend(fontsize=6.5, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        p = os.path.join(out_dir, f"growth-{slug(s['name'])}.png")
        save_png(fig, p, "release report")
        plt.close(fig)
        paths.append(p)
        # Heatmap layer x tap kind of the fraction of the tolerance used (log colour scale).
        ratio, _ = layer_grid(s, "tol_ratio")
        ratio[~np.isfinite(ratio)] = np.nan
        fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.45 * L), dpi=110)
        passed = np.array([[next((bool(t["passed"]) for t in s["taps"] if t["name"] == f"layer_{i}/{k}"), True)
                            for k in LAYER_KINDS] for i in range(L)])
        im = draw_ratio_heatmap(ax, ratio, passed, _first_cell(s.get("first_divergence")))
        ax.set_title(f"{s['name']}: fraction of the tolerance used (worst element; 1 = at it; ✗ failed)", fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 tol_ratio (0 = at the tolerance)")
        fig.tight_layout()
        p = os.path.join(out_dir, f"heatmap-{slug(s['name'])}.png")
        save_png(fig, p, "release report")
        plt.close(fig)
        paths.append(p)
    # The single worst tap of the report: the distribution of its element errors.
    if worst:
        sections = {s["name"]: s for s in report["checks"]}
        def ratio_of(item):
            check, (tap, _) = item
            t = next((t for t in sections.get(check, {}).get("taps", []) if t["name"] == tap), None)
            r = num((t or {}).get("tol_ratio"))
            return r if r is not None and np.isfinite(r) else 0.0
        check, (tap, diff) = max(worst.items(), key=ratio_of)
        t = next(t for t in sections[check]["taps"] if t["name"] == tap)
        fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
        nz = diff[np.isfinite(diff) & (diff > 0)]
        if nz.size:
            bins = np.logspace(np.log10(nz.min()), np.log10(max(nz.max(), t["atol"]) * 1.5), 60)
            ax.hist(nz, bins=bins, color="#4c72b0")
            ax.set_xscale("log")
        ax.axvline(t["atol"], color="r", ls="--", label=f"atol {t['atol']:g}")
        ax.set_yscale("log")
        ax.set_xlabel("|pytorch - tensorflow| per element (exact zeros not shown)")
        ax.set_ylabel("elements")
        ax.set_title(f"worst tap: {check} {tap} ({diff.size - nz.size} of {diff.size} elements exact; "
                     f"{_g(t['tol_ratio'])} of tolerance)", fontsize=9)
        ax.legend()
        fig.tight_layout()
        p = os.path.join(out_dir, "worst-tap-histogram.png")
        save_png(fig, p, "release report")
        plt.close(fig)
        paths.append(p)
    return paths


def baseline_text(b) -> str:
    if not b:
        return "none"
    return f"version {b.get('version')}, commit {str(b.get('commit'))[:12]}, created {b.get('created_utc')}"


def _env_lines(env: dict) -> list[str]:
    git = env.get("git") or {}
    return [
        f"Python {env['python']}, torch {env['torch']}, TensorFlow {env['tensorflow']}, bert-tensorflow "
        f"{env['bert_tensorflow']}, numpy {env['numpy']}, CUDA {env['cuda']}; device {env['device']}; "
        f"{env['platform']}",
        f"threads: {env['threads']}",
        f"TF32: {env['tf32']}; oneDNN: {env['onednn']}; determinism: {env['determinism']}",
        f"seeds: {env.get('seeds')}",
        f"git: {git.get('commit')} ({'dirty: ' + ', '.join(git.get('changed_files') or []) if git.get('dirty') else 'clean'})",
        describe_provenance(env.get("tf_cache")),
    ]


def markdown(report: dict) -> str:
    """report.md: the headline is the first line; then checks, gates, provenance, every tap."""
    lines = [f"# {report['headline']}", "",
             f"Version {report['version']}, commit {(report['git'] or {}).get('commit')}, {report['created_utc']}.", ""]
    if report["reasons"]:
        lines += ["## Why it fails", ""] + [f"- {r}" for r in report["reasons"]] + [""]
    lines += ["## Checks", "", "| check | verdict | summary | seconds |", "| --- | --- | --- | ---: |"]
    lines += [f"| `{s['name']}` | {'pass' if s['verdict'] == 'pass' else '**' + s['verdict'].upper() + '**'} | "
              f"{s['summary'].replace('|', '/')} | {s.get('seconds', '')} |" for s in report["checks"]]
    if report["checks_not_run"]:
        lines += ["", "Not run: " + "; ".join(f"`{k}` ({v})" for k, v in report["checks_not_run"].items())]
    r = report["ratchet"]
    lines += ["", "## Ratchet against the baseline", "",
              f"Baseline: {baseline_text(r['baseline'])}. Rule: {r['rule']}.", ""]
    if r["regressions"]:
        lines += ["| check | tap | kind | detail |", "| --- | --- | --- | --- |"]
        lines += [f"| `{x['check']}` | `{x['tap'] or '(the check)'}` | {x['kind']} | {x['detail']} |" for x in r["regressions"]]
    else:
        lines.append("No regressions.")
    lines += [f"- {n}" for n in r["notes"]]
    lines += ["", "## Waivers", ""]
    if report["waivers"]:
        lines += ["| id | check | taps | atol | rtol | expires | status | reason | detail |",
                  "| --- | --- | --- | ---: | ---: | --- | --- | --- | --- |"]
        lines += [f"| {w['id']} | `{w['check']}` | `{w['taps']}` | {w['atol']:g} | {w['rtol']:g} | {w['expires']} | "
                  f"{w['status']} | {w['reason']} | {w['detail']} |" for w in report["waivers"]]
    else:
        lines.append("None.")
    lines += ["", "## Provenance", ""] + [f"- {x}" for x in _env_lines(report["environment"])]
    lines += [f"  - sha256 `{k}`: `{v}`" for k, v in report["environment"]["sha256"].items()]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    for s in report["checks"]:
        if s.get("kind") != "layerwise" or not s.get("taps"):
            continue
        inp = s["inputs"]
        lines += ["", f"## `{s['name']}`: {s['verdict'].upper()}", "", s["summary"], "",
                  f"- Reference: {s['sides']['reference']}", f"- Candidate: {s['sides']['candidate']}",
                  f"- Inputs: batch {inp['batch_size']}, sequence {inp['seq_len']}, seed {inp['seed']}, "
                  f"{inp['padding_positions']} padding positions, sentences `{inp['sentences']}`", "",
                  "| " + " | ".join(TAP_COLUMNS) + " |", "|" + " --- |" * len(TAP_COLUMNS)]
        for t in s["taps"]:
            cells = tap_cells(t)
            cells[0] = f"`{cells[0]}`"
            cells[10] = cells[10] if t["passed"] else "**NO**"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def html(report: dict, report_dir: str) -> str:
    """A self-contained page: verdict banner, reasons, checks, ratchet, waivers, plots, provenance, taps."""
    e = _html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<link rel="icon" href="data:,">',
             f"<title>bert-parity release {e(report['version'])}: {report['verdict'].upper()}</title>",
             f"<style>{CSS}</style></head><body>",
             f'<div class="banner {report["verdict"]}" id="verdict">{e(report["headline"])}'
             f"<small>bert-parity {e(report['version'])} · commit {e(str((report['git'] or {}).get('commit')))}"
             f" · {e(report['created_utc'])}</small></div><main>"]
    if report["reasons"]:
        parts.append("<h2>Why it fails</h2><ul>" + "".join(f"<li>{e(r)}</li>" for r in report["reasons"]) + "</ul>")
    parts.append('<h2>Checks</h2><table id="checks"><tr><th>check</th><th>verdict</th><th>summary</th><th>seconds</th></tr>')
    for s in report["checks"]:
        parts.append(f'<tr class="{"" if s["verdict"] == "pass" else "bad"}"><td><code>{e(s["name"])}</code></td>'
                     f'<td><span class="pill {"pass" if s["verdict"] == "pass" else "fail"}">{e(s["verdict"])}</span></td>'
                     f'<td>{e(s["summary"])}</td><td class="num">{s.get("seconds", "")}</td></tr>')
    parts.append("</table>")
    if report["checks_not_run"]:
        parts.append("<p>Not run: " + "; ".join(f"<code>{e(k)}</code> ({e(v)})"
                                               for k, v in report["checks_not_run"].items()) + "</p>")
    r = report["ratchet"]
    parts.append(f"<h2>Ratchet against the baseline</h2><p>Baseline: {e(baseline_text(r['baseline']))}. "
                 f"Rule: {e(r['rule'])}.</p>")
    if r["regressions"]:
        parts.append('<table id="ratchet"><tr><th>check</th><th>tap</th><th>kind</th><th>detail</th></tr>'
                     + "".join(f'<tr class="bad"><td><code>{e(x["check"])}</code></td><td><code>{e(x["tap"] or "(the check)")}'
                               f'</code></td><td>{e(x["kind"])}</td><td>{e(str(x["detail"]))}</td></tr>'
                               for x in r["regressions"]) + "</table>")
    else:
        parts.append("<p>No regressions.</p>")
    if r["notes"]:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in r["notes"]) + "</ul>")
    parts.append("<h2>Waivers</h2>")
    if report["waivers"]:
        parts.append('<table id="waivers"><tr><th>id</th><th>check</th><th>taps</th><th>atol</th><th>rtol</th>'
                     "<th>expires</th><th>status</th><th>reason</th><th>detail</th></tr>")
        for w in report["waivers"]:
            parts.append(f'<tr class="{"bad" if w["fails_gate"] else "waived"}"><td>{e(w["id"])}</td>'
                         f'<td><code>{e(w["check"])}</code></td><td><code>{e(w["taps"])}</code></td>'
                         f'<td class="num">{w["atol"]:g}</td><td class="num">{w["rtol"]:g}</td><td>{e(w["expires"])}</td>'
                         f'<td>{e(w["status"])}</td><td>{e(w["reason"])}</td><td>{e(w["detail"])}</td></tr>')
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    if report.get("plots"):
        parts.append("<h2>Plots</h2>" + "".join(_img(os.path.join(report_dir, p)) for p in report["plots"]))
    env = report["environment"]
    parts.append("<h2>Provenance</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in _env_lines(env)) + "</ul>")
    parts.append('<table id="sha256"><tr><th>file</th><th>sha256</th></tr>' + "".join(
        f"<tr><td><code>{e(k)}</code></td><td><code>{e(v)}</code></td></tr>" for k, v in env["sha256"].items())
        + "</table>")
    for s in report["checks"]:
        if s.get("kind") != "layerwise" or not s.get("taps"):
            continue
        inp = s["inputs"]
        opened = " open" if s["name"] == report.get("primary_check") or s["verdict"] != "pass" else ""
        parts.append(f"<details{opened}><summary>{e(s['name'])}: {e(s['verdict'].upper())} — {e(s['summary'])}</summary>"
                     f"<p>Reference: {e(s['sides']['reference'])}<br>Candidate: {e(s['sides']['candidate'])}<br>"
                     f"Inputs: batch {inp['batch_size']}, sequence {inp['seq_len']}, seed {inp['seed']}, "
                     f"{inp['padding_positions']} padding positions, sentences <code>{e(str(inp['sentences']))}</code></p>"
                     f'<table class="taps" data-check="{e(s["name"])}"><tr>'
                     + "".join(f"<th>{c}</th>" for c in TAP_COLUMNS) + "</tr>")
        for t in s["taps"]:
            cls = "bad" if not t["passed"] else ("waived" if t.get("waiver") else "")
            cells = tap_cells(t)
            parts.append(f'<tr class="{cls}">' + "".join(
                f'<td class="{"num" if 2 <= i <= 9 else ""}">{"<code>" + e(c) + "</code>" if i == 0 else e(c)}</td>'
                for i, c in enumerate(cells)) + "</tr>")
        parts.append("</table></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
