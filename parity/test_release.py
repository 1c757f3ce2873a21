"""The release gate (parity/release/): ratchet, waivers, verdict and exit codes, the report files, the HTML
page in a real browser. Real weights against the real official graph throughout."""
from __future__ import annotations

import datetime
import json
import os
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from bert_torch import modeling
from bert_torch.modeling import BertConfig
from parity import files
from parity.release import checks as release_checks
from parity.release import context as release_context
from parity.release import gate as release_gate
from parity.release import ratchet as release_ratchet
from parity.release import waivers as release_waivers
from parity.release import render as release_render
from parity.inputs import make_inputs
from parity.numerics.metrics import PROFILES
from parity.sides.base import Capabilities, SideBase, TFSide, TorchSide

TODAY = datetime.date(2026, 6, 1)
MINILM = "layerwise/minilm-l6-v2"


# ------------------------------------------------------------------ the growth rule (pure arithmetic)

@settings(max_examples=200, deadline=None)
@given(base=st.floats(0, 3), now=st.floats(0, 3))
def test_growth_rule_is_factor_above_the_noise_floor(base, now):
    flagged = release_ratchet.grew(base, now, factor=2.0, floor=0.05)
    assert flagged == (now > 2.0 * max(base, 0.05))
    if now <= 0.1:   # at most twice the floor: float32 noise however much it "grew"
        assert not flagged
    if base >= 0.05 and now > 2 * base:
        assert flagged


def test_noise_below_the_floor_is_not_a_regression():
    # 1e-7 against atol 2e-5 is tol_ratio 0.005; a kernel change that doubles it (or x10) is noise.
    assert not release_ratchet.grew(0.005, 0.01) and not release_ratchet.grew(0.005, 0.05)
    assert release_ratchet.grew(0.005, 0.11)      # past twice the floor: real
    assert release_ratchet.grew(0.3, 0.61) and not release_ratchet.grew(0.3, 0.59)


# ------------------------------------------------------------------ real comparisons of MiniLM

def make_ctx(tmp_path, waivers=(), today=TODAY) -> release_context.Context:
    return release_context.Context(report_dir=str(tmp_path), work_dir=str(tmp_path), data_dir=None,
                           profile=PROFILES["fp32-cpu"], waivers=list(waivers), today=today, pytest_args=[])


@pytest.fixture(scope="module")
def minilm_sides(minilm):
    """The official graph on real MiniLM weights (kept open), the clean PyTorch side, 2 x 32 real inputs."""
    config = BertConfig.from_json_file(minilm["bert_config"])
    inputs = make_inputs(minilm["vocab"], 2, 32, 0, vocab_size=config.vocab_size)
    tf = TFSide(minilm["prefix"], config)
    yield {"tf": tf, "config": config, "inputs": inputs,
           "torch": TorchSide.from_weights(minilm["torch_weights"], config), "weights": minilm["torch_weights"]}
    tf.close()


def torch_with_eps(sides, eps: float, monkeypatch) -> TorchSide:
    """bert_torch as if someone edited LayerNorm's default epsilon (the official graph: 1e-12)."""
    monkeypatch.setattr(modeling.LayerNorm.__init__, "__defaults__", (eps,))
    side = TorchSide.from_weights(sides["weights"], sides["config"])
    monkeypatch.undo()
    assert all(m.eps == eps for m in side.model.modules() if isinstance(m, modeling.LayerNorm))
    return side


def section(sides, candidate, tmp_path, waivers=(), today=TODAY) -> dict:
    ctx = make_ctx(tmp_path, waivers, today)
    return release_checks.compare_layerwise(ctx, MINILM, sides["tf"], candidate, sides["inputs"]), ctx


def gate(ctx, sections, baseline=None) -> dict:
    checks = [release_context.Check(s["name"], lambda c, s=s: s, "precomputed") for s in sections]
    return release_gate.run_release(ctx, checks, {}, baseline, "test")


@pytest.fixture(scope="module")
def clean_section(minilm_sides, tmp_path_factory):
    s, _ = section(minilm_sides, minilm_sides["torch"], tmp_path_factory.mktemp("clean"))
    assert s["verdict"] == "pass", s["summary"]
    return s


@pytest.mark.heavy
def test_same_model_twice_does_not_move_the_ratchet(minilm_sides, clean_section, tmp_path):
    again, ctx = section(minilm_sides, minilm_sides["torch"], tmp_path)
    report = gate(ctx, [again], {"checks": [clean_section]})
    assert report["verdict"] == "pass", report["headline"]
    assert report["ratchet"]["regressions"] == []


class _Planted(SideBase):
    """A candidate side that returns the clean side's taps with one element of one tap moved by ``delta``."""

    capabilities = Capabilities(float64=True)

    def __init__(self, side, tap: str, delta: float):
        self.side, self.tap, self.delta = side, tap, delta
        self.name, self.description, self.tap_names = side.name, side.description + " (planted)", side.tap_names

    def run(self, inputs, fetch=None, inject=None):
        out = self.side.run(inputs, fetch, inject)
        if self.tap in out:
            out[self.tap] = out[self.tap].copy()
            out[self.tap].flat[0] += self.delta
        return out

    def float64(self):   # the planted error is part of the model: its float64 twin has it too
        return _Planted(self.side.float64(), self.tap, self.delta)


def test_the_same_model_comparison_sees_a_planted_growth(minilm_sides, clean_section, tmp_path):
    """Not vacuous, on any machine: the rerun above is compared tap by tap, so an error planted at half the
    tolerance of a tap that is exact on every machine (a lookup) is flagged as growth, still within tolerance.
    (Natural rounding noise differs between CPUs: on one it used 0.2 of the tolerance, on another 0.03.)"""
    tap = "embeddings/word_embeddings"
    base = next(t for t in clean_section["taps"] if t["name"] == tap)
    assert base["max_abs"] == 0.0   # a table lookup: bit-identical on both sides, whatever the CPU
    planted, ctx = section(minilm_sides, _Planted(minilm_sides["torch"], tap, 0.5 * base["atol"]), tmp_path)
    assert planted["verdict"] == "pass", planted["summary"]
    report = gate(ctx, [planted], {"checks": [clean_section]})
    regs = report["ratchet"]["regressions"]
    assert [r["tap"] for r in regs] == [tap], regs
    assert regs[0]["kind"] == "error growth" and 0.4 < regs[0]["now"] < 0.6, regs[0]


@pytest.mark.heavy
def test_regressed_epsilon_within_tolerance_fails_the_ratchet_and_names_the_taps(
        minilm_sides, clean_section, tmp_path, monkeypatch):
    """LayerNorm epsilon 1e-8 instead of 1e-12: every tap still passes, yet errors grow several-fold."""
    regressed, ctx = section(minilm_sides, torch_with_eps(minilm_sides, 1e-8, monkeypatch), tmp_path)
    assert regressed["verdict"] == "pass", regressed["summary"]          # the tolerance alone would ship it
    report = gate(ctx, [regressed], {"checks": [clean_section]})
    assert report["verdict"] == "fail"
    regs = report["ratchet"]["regressions"]
    assert regs, report["ratchet"]
    for r in regs:   # every flagged tap: grown past the rule, still within tolerance
        assert r["kind"] == "error growth" and r["growth"] > 2 and r["now"] > 2 * max(r["baseline"], 0.05), r
        assert "still within tolerance" in r["detail"]
    assert max(r["max_abs_now"] / r["max_abs_baseline"] for r in regs) > 3   # a real change, not rounding
    assert report["headline"].startswith("Release gate FAIL: ratchet:")
    assert f"{MINILM}:{regs[0]['tap']}" in report["headline"]


def test_real_failure_is_a_new_failure_for_the_ratchet(minilm_sides, clean_section, tmp_path, monkeypatch):
    broken, ctx = section(minilm_sides, torch_with_eps(minilm_sides, 1e-6, monkeypatch), tmp_path)
    assert broken["verdict"] == "fail" and broken["first_divergence"] == "embeddings/output"
    report = gate(ctx, [broken], {"checks": [clean_section]})
    assert report["verdict"] == "fail"
    assert report["headline"].startswith(f"Release gate FAIL: {MINILM}: ") and "embeddings/output" in report["headline"]
    kinds = {(r["tap"], r["kind"]) for r in report["ratchet"]["regressions"]}
    assert (None, "new failure") in kinds and ("embeddings/output", "new failure") in kinds


# ------------------------------------------------------------------ waivers

def waiver(**kw) -> release_waivers.Waiver:
    base = dict(id="w1", taps="*", check="layerwise/*", atol=2e-4, rtol=1e-4, reason="test",
                expires=datetime.date(2026, 12, 31))
    base.update(kw)
    return release_waivers.Waiver(**base)


def test_needed_waiver_is_applied_and_printed(minilm_sides, tmp_path, monkeypatch):
    """eps 1e-7 fails some taps (which ones depends on the profile); a 10x looser waiver covers them."""
    w = waiver()
    s, ctx = section(minilm_sides, torch_with_eps(minilm_sides, 1e-7, monkeypatch), tmp_path, [w])
    assert s["verdict"] == "pass", s["summary"]
    waived = [t for t in s["taps"] if not t["without_waiver"]["passed"]]
    assert waived and all(t["waiver"] == "w1" and t["passed"] for t in waived)
    report = gate(ctx, [s])
    assert report["verdict"] == "pass", report["headline"]
    (row,) = report["waivers"]
    assert row["status"] == "applied" and row["needed_by"] == [f"{MINILM}:{t['name']}" for t in waived]
    md = release_render.markdown(report)
    assert "| w1 |" in md and "applied" in md


def test_unneeded_waiver_fails_the_gate(minilm_sides, tmp_path):
    s, ctx = section(minilm_sides, minilm_sides["torch"], tmp_path, [waiver()])
    report = gate(ctx, [s])
    assert report["verdict"] == "fail"
    (row,) = report["waivers"]
    assert row["status"] == "unneeded" and row["fails_gate"]
    assert report["headline"].startswith("Release gate FAIL: waiver w1") and "no longer needed" in report["headline"]


def test_waiver_matching_no_tap_is_unneeded(minilm_sides, tmp_path):
    s, ctx = section(minilm_sides, minilm_sides["torch"], tmp_path, [waiver(taps="layer_99/*")])
    assert gate(ctx, [s])["waivers"][0]["status"] == "unneeded"


def test_expired_waiver_grants_nothing_and_fails_the_gate(minilm_sides, tmp_path, monkeypatch):
    w = waiver(expires=TODAY - datetime.timedelta(days=1))
    s, ctx = section(minilm_sides, torch_with_eps(minilm_sides, 1e-7, monkeypatch), tmp_path, [w])
    assert s["verdict"] == "fail" and not any(t.get("waiver") for t in s["taps"])
    report = gate(ctx, [s])
    (row,) = report["waivers"]
    assert row["status"] == "expired" and row["fails_gate"]
    assert any(r.startswith("waiver w1") and "expired on 2026-05-31" in r for r in report["reasons"])


def test_waiver_ledger_is_checked(tmp_path, capsys):
    good = tmp_path / "ok.toml"
    good.write_text('[[waiver]]\nid = "a"\ntaps = "pooler/*"\natol = 1e-4\nrtol = 0\nreason = "r"\n'
                    'expires = 2027-01-01\n')
    (w,) = release_waivers.load_waivers(str(good))
    assert (w.check, w.expires) == ("*", datetime.date(2027, 1, 1))
    cases = {"missing": '[[waiver]]\nid = "a"\ntaps = "x"\natol = 1\nrtol = 0\nexpires = 2027-01-01\n',
             "bad date": '[[waiver]]\nid = "a"\ntaps = "x"\natol = 1\nrtol = 0\nreason = "r"\nexpires = "soon"\n',
             "not toml": "[[waiver]\n"}
    for name, text in cases.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        assert release_gate.main(["--waivers", str(p), "--checks", "layerwise/minilm*", "--report-dir",
                             str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {p}") and "\n" not in err, (name, err)
    # The committed ledger parses, and every waiver in it has a future expiry and a reason.
    for w in release_waivers.load_waivers(release_waivers.DEFAULT_WAIVERS):
        assert w.reason.strip()


def test_committed_baseline_is_a_passing_release_report():
    with open(release_ratchet.DEFAULT_BASELINE) as f:
        base = json.load(f)
    assert base["verdict"] == "pass" and base["headline"].startswith("Release gate PASS")
    names = [s["name"] for s in base["checks"]]
    assert MINILM in names and sum(n.startswith("layerwise/random-") for n in names) >= 3
    minilm = next(s for s in base["checks"] if s["name"] == MINILM)
    assert len(minilm["taps"]) == 5 + 11 * 6 + 1 and all(t["passed"] for t in minilm["taps"])
    assert minilm["inputs"]["batch_size"] == 8 and minilm["inputs"]["seq_len"] == 128
    env = base["environment"]
    assert env["git"]["commit"] and env["bert_tensorflow"] == "1.0.4"
    assert all(len(v) == 64 for v in env["sha256"].values())


def test_promote_refuses_a_failing_report(tmp_path, capsys):
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({"verdict": "fail", "headline": "Release gate FAIL: x", "checks": []}))
    dst = tmp_path / "baseline.json"
    assert release_gate.main(["--promote", str(failing), "--baseline", str(dst)]) == 2
    assert "only a passing report" in capsys.readouterr().err and not dst.exists()
    passing = tmp_path / "pass.json"
    passing.write_text(json.dumps({"verdict": "pass", "headline": "Release gate PASS", "checks": []}))
    assert release_gate.main(["--promote", str(passing), "--baseline", str(dst)]) == 0
    assert json.loads(dst.read_text())["verdict"] == "pass"


# ------------------------------------------------------------------ end to end: python -m parity.release

def run_main(tmp_path, name, *extra) -> tuple[int, str]:
    out = tmp_path / name
    code = release_gate.main(["--checks", "layerwise/random-tiny-1layer", "--report-dir", str(out),
                         "--work-dir", str(tmp_path / "work"), *extra])
    return code, str(out)


@pytest.fixture(scope="module")
def clean_release(tmp_path_factory):
    """The release command end to end on one official random checkpoint, against a baseline of itself."""
    tmp = tmp_path_factory.mktemp("release")
    code, first = run_main(tmp, "first", "--baseline", "", "--waivers", "")
    assert code == 0
    base = tmp / "baseline.json"
    assert release_gate.main(["--promote", os.path.join(first, "report.json"), "--baseline", str(base)]) == 0
    code, out = run_main(tmp, "second", "--baseline", str(base), "--waivers", "")
    return code, out, tmp


def test_release_writes_the_report_folder(clean_release):
    code, out, _ = clean_release
    assert code == 0
    files = sorted(os.listdir(out))
    for f in ("report.json", "report.md", "report.html", "worst-tap-histogram.png",
              "growth-layerwise-random-tiny-1layer.png", "heatmap-layerwise-random-tiny-1layer.png"):
        assert f in files, files
    report = json.load(open(os.path.join(out, "report.json")))
    # The contract's top-level fields, for the primary comparison, plus the release's own.
    for key in ("verdict", "first_divergence", "profile", "inputs", "environment", "taps", "checks", "ratchet",
                "waivers", "checks_run", "checks_not_run"):
        assert key in report
    assert report["verdict"] == "pass" and report["ratchet"]["baseline"] is not None
    assert report["ratchet"]["regressions"] == []
    assert "gate-suite" in report["checks_not_run"] and report["checks_run"] == ["layerwise/random-tiny-1layer"]
    env = report["environment"]
    for key in ("python", "torch", "tensorflow", "bert_tensorflow", "numpy", "cuda", "device", "threads", "tf32",
                "onednn", "determinism", "seeds", "git", "sha256"):
        assert key in env
    assert env["seeds"] == {"layerwise/random-tiny-1layer:checkpoint": 0, "layerwise/random-tiny-1layer:inputs": 0}
    assert set(env["git"]) >= {"commit", "dirty"} and len(env["git"]["commit"]) == 40
    assert any(k.endswith("tf_checkpoint.data") for k in env["sha256"])
    md = open(os.path.join(out, "report.md")).read()
    assert md.splitlines()[0].startswith("# Release gate PASS")


def test_real_failure_makes_the_release_exit_nonzero(clean_release, monkeypatch):
    _, _, tmp = clean_release
    monkeypatch.setattr(modeling.LayerNorm.__init__, "__defaults__", (1e-3,))
    code, out = run_main(tmp, "broken", "--baseline", str(tmp / "baseline.json"), "--waivers", "")
    assert code == 1
    first = open(os.path.join(out, "report.md")).readline()
    assert first.startswith("# Release gate FAIL: layerwise/random-tiny-1layer:"), first
    assert "first divergence embeddings/output" in first
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["verdict"] == "fail" and report["first_divergence"] == "embeddings/output"
    html = open(os.path.join(out, "report.html")).read()
    assert 'class="banner fail"' in html


def test_makefile_report_runs_the_release_and_propagates_its_exit():
    env = {k: v for k, v in os.environ.items()   # not a make report's own variables, when it runs this test
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REPORT_DIR", "TF_CACHE", "DATA_DIR")}
    out = subprocess.run(["make", "-n", "report", "baseline", "BIN=py"], capture_output=True, text=True,
                         cwd=files.REPO_ROOT, env=env)
    lines = [line for line in out.stdout.splitlines() if "bert-parity release" in line]
    assert len(lines) == 2 and "--report-dir reports/" in lines[0] and "--promote" in lines[1], out.stdout
    assert "|| true" not in out.stdout and not lines[0].lstrip().startswith("-")


# ------------------------------------------------------------------ the HTML page in a real browser

@pytest.mark.heavy
def test_html_report_in_a_real_browser(clean_release, tmp_path, browser):
    # The console check can fail: a page that logs an error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("planted")</script></body></html>')
    assert any("planted" in m for m in browser.console_messages(browser.run("--dump-dom", bad.as_uri()).stderr))

    _, out, _ = clean_release
    page = "file://" + os.path.abspath(os.path.join(out, "report.html"))
    html = browser.dom(os.path.join(out, "report.html"))
    assert 'id="verdict"' in html and "Release gate PASS" in html
    assert 'id="checks"' in html and 'class="taps"' in html and html.count("<tr") > 17
    assert html.count('src="data:image/png;base64,') == 3 and "http://" not in html and "https://" not in html
    shot = os.path.join(out, "report.png")
    run = browser.run(f"--screenshot={shot}", "--window-size=1280,1800", "--hide-scrollbars", page)
    assert run.returncode == 0 and browser.console_messages(run.stderr) == []
    with open(shot, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1280
    assert os.path.getsize(shot) > 20_000   # a rendered page, not a blank one


def test_check_that_cannot_run_here_is_listed_not_failed(tmp_path):
    def needs_data(ctx):
        raise release_context.NotRun("needs the MRPC data set")
    report = release_gate.run_release(make_ctx(tmp_path), [release_context.Check("finetune", needs_data, "x")], {}, None, "test")
    assert report["checks_not_run"] == {"finetune": "needs the MRPC data set"} and report["checks_run"] == []
    assert report["verdict"] == "fail" and report["reasons"] == ["no check ran"]   # nothing ran: nothing proven


# ------------------------------------------------------------------ --candidate: another model in the release report

@pytest.mark.slow
def test_release_report_proves_the_candidate_given(minilm, tmp_path):
    """`--candidate hf:DIR` (the real MiniLM weights as a transformers directory) in the primary check: it
    passes with the candidate recorded; the same directory saying hidden_act "gelu" (erf, in HF's words)
    against the shipped tanh graph fails that check, first at layer_0's intermediate output."""
    from bert_torch import convert
    hf = str(tmp_path / "hf")
    assert convert.main(["--tf-checkpoint", minilm["dir"], "--output-format", "hf", "--output", hf]) == 0
    work = tmp_path / "work"

    def run(candidate: str, out: str):
        code = release_gate.main(["--checks", "layerwise/minilm-l6-v2", "--candidate", candidate, "--baseline", "",
                             "--report-dir", str(tmp_path / out), "--work-dir", str(work)])
        return code, json.loads((tmp_path / out / "report.json").read_text())

    code, report = run(f"hf:{hf}", "good")
    section = report["checks"][0]
    assert code == 0 and section["verdict"] == "pass", section["summary"]
    assert section["candidate"]["kind"] == "hf" and section["sides"]["gelu"]["candidate"] == "tanh"
    assert len(section["taps"]) == 5 + 11 * 6 + 1
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    code, report = run(f"hf:{hf}", "erf")
    section = report["checks"][0]
    assert code == 1 and section["verdict"] == "fail" and section["sides"]["gelu"]["candidate"] == "erf"
    assert section["first_divergence"] == "layer_0/intermediate"


def test_release_candidate_bad_spec_is_one_line(tmp_path, capsys):
    code = release_gate.main(["--checks", "layerwise/minilm-l6-v2", "--candidate", "tflite:model.tflite", "--baseline", "",
                         "--report-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--candidate 'tflite:model.tflite'" in err[0], err
