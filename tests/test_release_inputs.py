"""The release command's own inputs (a baseline to promote or ratchet against, the waiver ledger) are checked
for the structure the release reads before they are used: a malformed one is exit 2 naming it, and nothing is
written."""
from __future__ import annotations

import json
import os

import pytest

from parity.release import gate as release_gate


@pytest.mark.parametrize("doc", [
    {"verdict": "pass", "checks": [], "checks_run": 5},
    {"verdict": "pass", "checks": [], "git": "abc"},
    {"verdict": "pass", "checks": [5, "x"]},
    {"verdict": "pass", "checks": [{"name": "layers", "kind": "layerwise", "inputs": {}, "taps": [3]}]},
    {"verdict": "pass", "checks": [{"name": "layers", "kind": "layerwise"}]},
    {"verdict": 1, "checks": []},
])
def test_a_malformed_report_is_not_promoted(tmp_path, capsys, doc):
    src, dst = tmp_path / "report.json", tmp_path / "baseline.json"
    src.write_text(json.dumps(doc))
    assert release_gate.main(["--promote", str(src), "--baseline", str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a release report" in err and str(src) in err, err
    assert not dst.exists()


@pytest.mark.parametrize("ledger, words", [
    ("waiver = 5", "array of tables"),
    ("waiver = [1, 2]", "array of tables"),
    ('[[waiver]]\nid = "a"\ntaps = "*"\natol = inf\nrtol = 0\nreason = "x"\nexpires = 2030-01-01', "finite"),
    ('[[waiver]]\nid = "a"\ntaps = "*"\natol = nan\nrtol = 0\nreason = "x"\nexpires = 2030-01-01', "finite"),
    ('[[waiver]]\nid = "a"\ntaps = "*"\natol = true\nrtol = 0\nreason = "x"\nexpires = 2030-01-01', "finite"),
])
def test_a_malformed_waiver_ledger_is_named_before_any_check_runs(tmp_path, capsys, ledger, words):
    path = tmp_path / "waivers.toml"
    path.write_text(ledger)
    code = release_gate.main(["--checks", "tokens", "--baseline", "", "--waivers", str(path),
                         "--work-dir", str(tmp_path / "w"), "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and words in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("checks", [",,", " ", ""])
def test_a_check_selection_naming_nothing_is_bad_input(tmp_path, capsys, checks):
    code = release_gate.main(["--checks", checks, "--baseline", "", "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--checks" in err, err
    assert not (tmp_path / "r").exists()


def test_the_release_options_read_the_tf_cache_variable_when_parsing(monkeypatch, tmp_path):
    """The defaults read from the environment ($BERT_PARITY_TF_CACHE, $PARITY_REQUIRE_DATA) are read when the
    command line is parsed, not when the module is imported."""
    from parity.release import options
    from parity.sides import refcache
    monkeypatch.delenv(refcache.CACHE_ENV, raising=False)
    monkeypatch.delenv(options.REQUIRE_DATA_ENV, raising=False)
    opts = options.ReleaseOptions.parse([])
    # The committed baseline and waiver ledger, found from the package (not the working directory).
    assert opts.baseline.endswith(os.path.join("reports", "baseline.json")) and os.path.isfile(opts.baseline)
    assert opts.waivers.endswith(os.path.join("parity", "waivers.toml")) and os.path.isfile(opts.waivers)
    assert (opts.tf_cache, opts.require_data) == (None, False)
    monkeypatch.setenv(refcache.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(options.REQUIRE_DATA_ENV, "1")
    opts = options.ReleaseOptions.parse([])
    assert opts.require_data and opts.tf_cache == str(tmp_path)


@pytest.mark.parametrize("floor", ["inf", "nan", -1.0, True, 1e400, None])
def test_a_calibration_floor_must_be_a_finite_non_negative_number(tmp_path, floor):
    """Floors feed diagnose's ladder and hints: an infinite, negative or non-numeric one is bad input naming
    the file and the tap, never a diagnosis resting on it."""
    from parity.diagnose.command import calibration_floors
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"taps": {"layer_0/output": {"floor": 1e-6}, "pooler/output": {"floor": floor}}})
                    .replace("1e+400", "1e400"))
    with pytest.raises(ValueError, match="pooler/output"):
        calibration_floors(str(path))
    path.write_text(json.dumps({"taps": {}}))
    with pytest.raises(ValueError, match="no taps"):
        calibration_floors(str(path))
    path.write_text(json.dumps({"taps": {"pooler/output": {"floor": 2e-6}}}))
    assert calibration_floors(str(path)) == {"pooler/output": 2e-6}


@pytest.mark.parametrize("tier", ["fp32", "tf32"])
def test_cast_mode_is_refused_for_a_float32_tier(tier):
    from parity.numerics.precision import PrecisionError, Tier
    with pytest.raises(PrecisionError, match="applies to bf16 and fp16"):
        Tier(tier, "cast")
    assert Tier("bf16", "cast").cast_dtype is not None
