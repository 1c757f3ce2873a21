"""Renders comparisons for people (compare, diagnose; the release report builds on it in
``parity.release.render``): a self-contained page, PNG plots, the per-tap table as CSV, and the number
formats every report shares.

The HTML has no scripts and no external resources: CSS is inline and the plots are embedded
as data URIs, so the file can be mailed, attached to a CI run or opened offline.
"""
from __future__ import annotations
import base64
import html as _html
import os
import re
from typing import Optional
import numpy as np


# Per-layer tap kinds, in forward order (CONTRACT.md): the columns of the heatmap.
LAYER_KINDS = ["attention/query", "attention/key", "attention/value", "attention/scores", "attention/probs",
               "attention/context", "attention/dense", "attention/output", "intermediate", "output/dense", "output"]


ZERO = 1e-12   # where an exact zero error is drawn on a log scale


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")


def layer_grid(section: dict, key: str) -> tuple[np.ndarray, int]:
    """[L, kinds] array of ``key`` per tap (NaN where absent)."""
    taps = {t["name"]: t for t in section["taps"]}
    layers = sorted({int(m.group(1)) for n in taps for m in [re.match(r"layer_(\d+)/", n)] if m})
    L = (layers[-1] + 1) if layers else 0
    grid = np.full((L, len(LAYER_KINDS)), np.nan)
    for i in range(L):
        for j, kind in enumerate(LAYER_KINDS):
            t = taps.get(f"layer_{i}/{kind}")
            if t is not None and num(t.get(key)) is not None:
                grid[i, j] = num(t[key])
    return grid, L


def num(x) -> Optional[float]:
    """A report number as a float: strict JSON writes NaN/Inf as "nan"/"inf"/"-inf" (CONTRACT.md);
    None, and anything that is no number, is None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(x, spec: str = ".3g") -> str:
    """A number for people; "—" when absent; NaN and Inf spelled out. Never raises."""
    v = num(x)
    return "—" if v is None else (format(v, spec) if np.isfinite(v) else str(v))


def _g(x) -> str:
    return fmt(x)


TAP_COLUMNS = ["tap", "shape", "max_abs", "max_rel", "mean_abs", "rms", "cosine", "atol", "rtol", "tol_ratio",
               "passed", "worst_index", "waiver"]


def tap_cells(t: dict) -> list[str]:
    return [t["name"], str(t.get("shape")), _g(t.get("max_abs")), _g(t.get("max_rel")), _g(t.get("mean_abs")),
            _g(t.get("rms")), fmt(t.get("cosine"), ".9f"), fmt(t.get("atol"), "g"), fmt(t.get("rtol"), "g"),
            _g(t.get("tol_ratio")), "yes" if t["passed"] else "NO", str(t.get("worst_index")), t.get("waiver") or ""]


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
.banner{padding:18px 24px;color:#fff;font-size:20px;font-weight:600}
.banner.pass{background:#1f7a3f}.banner.fail{background:#b3261e}
.banner small{display:block;font-size:13px;font-weight:400;opacity:.9;margin-top:4px}
h2{margin:28px 0 8px;font-size:18px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #d8dce3;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fde8e6}tr.waived td{background:#fff6dc}tr.first td{border-top:2px solid #b3261e;border-bottom:2px solid #b3261e}
.pill{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;color:#fff}
.pill.pass{background:#1f7a3f}.pill.fail{background:#b3261e}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
img{max-width:100%;background:#fff;border:1px solid #d8dce3;margin:6px 0}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
ul{margin:4px 0}
"""


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{_html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def draw_ratio_heatmap(ax, ratio: np.ndarray, passed: np.ndarray, first: Optional[tuple] = None):
    """Layer x tap kind of tol_ratio on a log colour scale centred on 1 (blue within tolerance, red past
    it, the scale symmetric so that 70x past reads as far as 1/70 within); failures marked with a cross,
    the first divergence boxed."""
    import matplotlib.patches as patches
    data = np.log10(np.clip(ratio, 1e-3, 1e3))
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3)
    L, K = ratio.shape
    for i in range(L):
        for j in range(K):
            if np.isfinite(ratio[i, j]):
                text = f"{ratio[i, j]:.2g}" + (" ✗" if not passed[i, j] else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                        color="white" if abs(data[i, j]) > 1.8 else "black",
                        fontweight="bold" if not passed[i, j] else "normal")
    if first is not None:
        ax.add_patch(patches.Rectangle((first[1] - 0.5, first[0] - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
    ax.set_xticks(range(K))
    ax.set_xticklabels(LAYER_KINDS[:K], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(L))
    ax.set_yticklabels([f"layer_{i}" for i in range(L)], fontsize=7)
    return im


def _grid(taps: list[dict], key: str) -> np.ndarray:
    return layer_grid({"taps": taps}, key)[0]


def save_png(fig, path: str, what: str = "--report-dir") -> None:
    """A figure written as PNG under a temporary name and renamed into place: a run killed while
    matplotlib writes leaves no half picture at the final name."""
    from bert_torch._io import atomic_output
    with atomic_output(path, what) as tmp:
        fig.savefig(tmp, format="png")


def _first_cell(first: Optional[str]) -> Optional[tuple]:
    m = re.match(r"layer_(\d+)/(.+)$", first or "")
    return (int(m.group(1)), LAYER_KINDS.index(m.group(2))) if m and m.group(2) in LAYER_KINDS else None


def compare_plots(report: dict, out_dir: str, stem: str = "report") -> list[str]:
    """``stem``-growth.png (each tap kind's error through the layers, dashed: that kind's own tolerance)
    and ``stem``-heatmap.png (the centred tolerance heatmap). Returns the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    taps = report["taps"]
    err, L = layer_grid({"taps": taps}, "max_abs")
    if L == 0:
        return []
    atol = _grid(taps, "atol")
    ratio = _grid(taps, "tol_ratio")
    passed = np.array([[next((bool(t["passed"]) for t in taps if t["name"] == f"layer_{i}/{k}"), True)
                        for k in LAYER_KINDS] for i in range(L)])
    first = _first_cell(report.get("first_divergence"))
    names = []
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=110)
    x = np.arange(L)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, kind in enumerate(LAYER_KINDS):
        c = colours[j % len(colours)]
        y = np.where(np.isfinite(err[:, j]) & (err[:, j] > 0), err[:, j], ZERO)
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color=c, label=kind)
        ax.plot(x, atol[:, j], lw=0.8, ls=":", color=c)   # this kind's own allowed error per layer
        bad = ~passed[:, j]
        if bad.any():
            ax.scatter(x[bad], y[bad], marker="x", s=60, color="red", zorder=5)
    if first is not None:
        ax.axvline(first[0], color="red", lw=0.8, ls="--", label=f"first divergence: {report['first_divergence']}")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("layer")
    ax.set_ylabel("max |candidate - reference| (dotted: its atol)")
    ax.set_title("error through the layers; red crosses: taps past their tolerance", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_png(fig, os.path.join(out_dir, f"{stem}-growth.png"))
    names.append(f"{stem}-growth.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.45 * L), dpi=110)
    im = draw_ratio_heatmap(ax, ratio, passed, first)
    ax.set_title("fraction of the tolerance used (worst element); 1 = at the tolerance; ✗ failed; "
                 "box: first divergence", fontsize=8)
    fig.colorbar(im, ax=ax, label="log10 tol_ratio (0 = at the tolerance)")
    fig.tight_layout()
    save_png(fig, os.path.join(out_dir, f"{stem}-heatmap.png"))
    names.append(f"{stem}-heatmap.png")
    plt.close(fig)
    return names


def worst_taps(taps: list[dict], n: int = 8) -> list[dict]:
    """Failures first, then by the fraction of the tolerance used."""
    def key(t):
        r = num(t.get("tol_ratio"))
        return (bool(t["passed"]), -(r if r is not None and np.isfinite(r) else np.inf))
    return sorted(taps, key=key)[:n]


def compare_html(report: dict, report_dir: str, plots: list[str]) -> str:
    """One comparison's self-contained page: the verdict, the worst taps, the first divergence highlighted,
    GELU, hints and notes, the plots, and every tap."""
    e = _html.escape
    first = report.get("first_divergence")
    title = (f"{report['verdict'].upper()}: " + (f"first divergence {first}" if first else
                                                 f"all {len(report['taps'])} taps within tolerance"))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', '<link rel="icon" href="data:,">',
             f"<title>bert-parity compare: {e(title)}</title><style>{CSS}</style></head><body>",
             f'<div class="banner {e(report["verdict"])}" id="verdict">{e(title)}<small>'
             f"profile {e(report['profile']['name'])} · reference {e(report['sides']['reference'])} · candidate "
             f"{e(report['sides']['candidate'])}</small></div><main>"]
    gelu = (report["sides"].get("gelu") or {})
    if gelu:
        parts.append(f"<p>GELU: reference {e(str(gelu.get('reference')))}, candidate {e(str(gelu.get('candidate')))}"
                     + (" <b>(they differ)</b>" if gelu.get("reference") and gelu.get("candidate")
                        and gelu["reference"] != gelu["candidate"] else "") + "</p>")
    for label, items in (("Hints", [f"{h['cause']}: {h['evidence']}" for h in report.get("hints", [])]),
                         ("Notes", report.get("notes", []))):
        if items:
            parts.append(f"<h2>{label}</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in items) + "</ul>")
    parts.append('<h2>Worst taps</h2><table id="worst"><tr><th>tap</th><th>max_abs</th><th>atol</th>'
                 "<th>fraction of tolerance</th><th>verdict</th></tr>")
    worst = worst_taps(report["taps"])
    lead = [t for t in report["taps"] if t["name"] == first]   # the first divergence leads, whatever its ratio
    for t in (lead + [t for t in worst if t["name"] != first])[:len(worst)]:
        cls = "bad" if not t["passed"] else ""
        mark = " (first divergence)" if t["name"] == first else ""
        parts.append(f'<tr class="{cls}"><td><code>{e(t["name"])}</code>{mark}</td><td class="num">{fmt(t["max_abs"])}'
                     f'</td><td class="num">{fmt(t["atol"])}</td><td class="num">{fmt(t.get("tol_ratio"))}</td>'
                     f'<td>{"ok" if t["passed"] else e("FAIL: " + str(t.get("reason")))}</td></tr>')
    parts.append("</table>")
    if report.get("not_observable"):
        parts.append("<h2>Not observable in this candidate</h2><ul>" + "".join(
            f"<li><code>{e(x['name'])}</code>: {e(x['reason'])}</li>" for x in report["not_observable"]) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(_img(os.path.join(report_dir, p)) for p in plots))
    parts.append('<h2>Every tap</h2><table class="taps" id="taps"><tr>'
                 + "".join(f"<th>{c}</th>" for c in TAP_COLUMNS) + "</tr>")
    for t in report["taps"]:
        cls = "bad" if not t["passed"] else ""
        parts.append(f'<tr class="{cls}{" first" if t["name"] == first else ""}">' + "".join(
            f'<td class="{"num" if 2 <= i <= 9 else ""}">{"<code>" + e(c) + "</code>" if i == 0 else e(c)}</td>'
            for i, c in enumerate(tap_cells(t))) + "</tr>")
    parts.append("</table></main></body></html>")
    return "\n".join(parts) + "\n"


CSV_COLUMNS = ["name", "shape", "max_abs", "max_rel", "mean_abs", "rms", "cosine", "atol", "rtol", "tol_ratio",
               "passed", "worst_index", "reason", "rounding"]


def taps_frame(taps: list[dict]):
    """The per-tap table as a pandas DataFrame (report.csv): one row per tap, the contract's columns."""
    import pandas as pd
    frame = pd.DataFrame(taps)
    return frame.reindex(columns=[c for c in CSV_COLUMNS if c in frame.columns] +
                         [c for c in frame.columns if c not in CSV_COLUMNS and not isinstance(taps[0].get(c), dict)])
