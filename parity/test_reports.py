"""Every comparison's own report for people (compare and diagnose): report.html with the worst taps first and
the first divergence marked, report.csv (pandas), plots whose colours read right around the tolerance."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from parity.compare import render as report_render
from parity.checkpoints import CONFIGS


def _cell_rgb(fig, ax, row: int, col: int) -> np.ndarray:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    x, y = ax.transData.transform((col, row))           # the cell's centre, in display pixels
    h = rgba.shape[0]
    return rgba[int(h - y), int(x) + 12, :3].astype(float)   # a little right of the centre: off the label text


def test_the_heatmap_colour_scale_is_centred_on_the_tolerance():
    """A tap 71x past its tolerance reads red and far from one at 0.8 (blue); the old scale stopped at 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratio = np.array([[0.8, 71.0, 0.01]])
    fig, ax = plt.subplots(figsize=(6, 2), dpi=100)
    report_render.draw_ratio_heatmap(ax, ratio, np.array([[True, False, True]]), first=(0, 1))
    within, past, tiny = (_cell_rgb(fig, ax, 0, j) for j in range(3))
    plt.close(fig)
    assert past[0] > past[2] + 60, past            # red: past the tolerance
    assert tiny[2] > tiny[0] + 60, tiny            # blue: far within it
    assert np.abs(within - past).sum() > 150       # 0.8 and 71 are not the same colour any more


def broken_compare(compare, random_checkpoint, tmp_path):
    """compare on a planted fault (one position row shifted) in a small official checkpoint."""
    from bert_torch.weights import read_weights, write_weights
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    tensors = dict(read_weights(ck["torch_weights"]))
    tensors["embeddings.position_embeddings.weight"] = np.roll(tensors["embeddings.position_embeddings.weight"], 1, 0)
    broken = str(tmp_path / "broken.safetensors")
    write_weights(broken, tensors)
    run = compare(ck["dir"], broken, "--batch-size", "2", "--seq-len", "16")
    assert run.code == 1
    return run


def test_compare_writes_html_csv_and_plots_for_its_own_run(compare, random_checkpoint, tmp_path):
    """A planted fault (one position row shifted): every output names it."""
    run = broken_compare(compare, random_checkpoint, tmp_path)
    d = run.report_dir
    written = run.report["files"]["written"]
    for name in ("report.html", "report.csv", "report-growth.png", "report-heatmap.png"):
        assert name in written and (d / name).stat().st_size > 0, name
    page = (d / "report.html").read_text()
    first = run.report["first_divergence"]
    assert first == "embeddings/position_embeddings"
    worst = page[page.index('id="worst"'):page.index("</table>", page.index('id="worst"'))]
    assert f"<code>{first}</code> (first divergence)" in worst and "FAIL" in worst
    assert worst.index("<tr", worst.index("</tr>")) == worst.index(f'<tr class="bad"><td><code>{first}</code>')
    assert 'class="bad first"' in page and "data:image/png;base64," in page
    frame = pd.read_csv(d / "report.csv")
    assert list(frame["name"]) == [t["name"] for t in run.report["taps"]]
    assert not bool(frame.loc[frame["name"] == first, "passed"].item())
    assert json.loads((d / "report.json").read_text())["files"]["not_written"] == {}


@pytest.mark.heavy
def test_compare_page_in_a_real_browser(compare, random_checkpoint, tmp_path, browser):
    """The failing run's own page, as a browser renders it: worst taps first with the first divergence
    marked, both plots embedded, nothing fetched from anywhere, nothing logged to the console."""
    d = broken_compare(compare, random_checkpoint, tmp_path).report_dir
    dom = browser.dom(str(d / "report.html"))
    worst = dom[dom.index('id="worst"'):]
    assert worst.index("embeddings/position_embeddings") < worst.index("</table>")
    assert dom.count('src="data:image/png;base64,') == 2 and "http://" not in dom and "https://" not in dom
    shot = tmp_path / "page.png"
    run = browser.run(f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars",
                      "file://" + str(d / "report.html"))
    assert run.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_page_with_nan_taps_renders(tmp_path):
    """NaN and Inf are results: the page, the CSV and the plots are written, never a crash."""
    taps = [{"name": f"layer_0/{k}", "shape": [1], "max_abs": float("nan") if k == "output" else 1e-6,
             "max_rel": None, "mean_abs": None, "rms": None, "cosine": None, "atol": 1e-5, "rtol": 1e-5,
             "passed": k != "output", "worst_index": [0], "tol_ratio": "nan" if k == "output" else 0.1,
             "reason": "pytorch holds 1 NaN, first at [0]" if k == "output" else None}
            for k in report_render.LAYER_KINDS]
    report = {"verdict": "fail", "first_divergence": "layer_0/output", "taps": taps,
              "profile": {"name": "fp32-cpu"}, "sides": {"reference": "r", "candidate": "c"}}
    plots = report_render.compare_plots(report, str(tmp_path))
    assert plots == ["report-growth.png", "report-heatmap.png"]
    page = report_render.compare_html(report, str(tmp_path), plots)
    assert "nan" in page and "layer_0/output" in page
    assert len(report_render.taps_frame(taps)) == len(taps)
