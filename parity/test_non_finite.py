"""NaN and Inf are results, not crashes (issue #12): a checkpoint holding a NaN, converted bit for bit.

compare must fail with words (side, count, first index) and a strict-JSON report; diagnose must
name the NaN and where it entered, never blame the (bit-identical) weights.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from bert_torch import convert
from bert_torch.tf_checkpoint import read_checkpoint, write_checkpoint
from parity.compare import command as cli
from parity import frontdoor
from parity.numerics.metrics import compare_tap, get_profile
from parity.compare.schema import check_json_file, strict_loads, validate

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")
PLANTED = "bert/encoder/layer_1/attention/self/query/kernel"   # [in, out]; file name below, transposed
PLANTED_FILE = "encoder.layer.1.attention.self.query.weight"


@pytest.fixture
def nan_ckpt(random_checkpoint, tmp_path):
    """The tiny official checkpoint with one NaN planted in layer 1's query kernel, converted exactly."""
    src = random_checkpoint(TINY, perturb=0.02)
    dst = tmp_path / "ckpt"
    shutil.copytree(src["dir"], dst)
    prefix = str(dst / "bert_model.ckpt")
    tensors = read_checkpoint(prefix)
    tensors[PLANTED][3, 5] = np.nan
    write_checkpoint(prefix, tensors)
    weights = str(tmp_path / "nan.safetensors")
    assert convert.main(["--tf-checkpoint", str(dst), "--output", weights]) == 0
    return {"dir": str(dst), "torch_weights": weights}


def test_compare_fails_with_words_and_strict_json(nan_ckpt, compare):
    run = compare(nan_ckpt["dir"], nan_ckpt["torch_weights"], "--batch-size", "2", "--seq-len", "16")
    assert run.code == 1 and run.report["verdict"] == "fail", run.out   # the verdict, not a crash
    assert "Traceback" not in run.err
    assert run.report["first_divergence"] == "layer_1/attention/query"
    earlier = [t for t in run.report["taps"] if t["name"].startswith(("embeddings/", "layer_0/"))]
    assert earlier and all(t["passed"] for t in earlier)   # the NaN entered at layer 1, not before
    tap = run.tap("layer_1/attention/query")
    # Column 5 of the kernel is head 0 (D = 8), element 5 of every token: B*T = 32 NaNs on each side.
    assert tap["non_finite"]["tensorflow"]["nan"] == 32 and tap["non_finite"]["pytorch"]["nan"] == 32
    assert tap["non_finite"]["pytorch"]["first_index"] == [0, 0, 0, 5]
    assert "tensorflow holds 32 NaN, first at [0, 0, 0, 5]" in tap["reason"]
    text = (run.report_dir / "report.json").read_text()
    strict_loads(text)   # no bare NaN/Infinity token anywhere
    assert "FAIL" in run.out and "layer_1/attention/query" in run.out


def test_diagnose_names_the_nan_not_the_weights(nan_ckpt, tmp_path, capsys):
    out = tmp_path / "d"
    code = frontdoor.main(["diagnose", "--tf-checkpoint", nan_ckpt["dir"], "--torch-weights", nan_ckpt["torch_weights"],
                     "--report-dir", str(out), "--batch-size", "2", "--seq-len", "16"])
    assert code == 1, capsys.readouterr()
    d = check_json_file(str(out / "diagnosis.json"), "diagnosis")
    assert d["weights"]["differences"] == [] and d["weights"]["bit_equal"] == d["weights"]["checked"]
    assert d["culprit"] == "layer_1/attention" and d["culprit"] != "weights"
    causes = [h["cause"] for h in d["hints"]]
    assert causes[0] == "non_finite" and not {"weights_differ", "formula_difference"} & set(causes), causes
    evidence = d["hints"][0]["evidence"]
    assert "layer_1/attention/query" in evidence and PLANTED_FILE in evidence and "[5, 3]" in evidence, evidence
    assert "non_finite" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_tap_counts_each_kind(bad):
    ref = np.zeros((2, 3, 4), np.float32)
    cand = ref.copy()
    cand[1, 2, 0] = cand[1, 2, 3] = bad
    row = compare_tap("layer_0/output", ref, cand, get_profile("fp32-cpu"), rounding=float("nan"))
    assert not row["passed"] and np.isfinite(row["atol"])   # a NaN rounding estimate adds nothing
    nf = row["non_finite"]["pytorch"]
    key = "nan" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    assert nf[key] == 2 and sum(nf[k] for k in ("nan", "inf", "-inf")) == 2 and nf["first_index"] == [1, 2, 0]
    assert "tensorflow" not in row["non_finite"] and "pytorch holds 2" in row["reason"]
    # The whole report row, through the project's encoder, is strict JSON and valid against the schema.
    from bert_torch._io import dumps
    doc = {"verdict": "fail", "first_divergence": "layer_0/output", "inputs": {"batch_size": 2, "seq_len": 3},
           "profile": get_profile("fp32-cpu").to_dict(), "taps": [row]}
    validate(strict_loads(dumps(doc)), "report")


def test_printers_never_crash_on_non_finite(capsys):
    """print_summary, the markdown of compare and of the release report, on rows holding NaN/Inf
    (as floats in memory and as strings read back from strict JSON)."""
    from parity.compare.core import render_markdown
    from parity.compare.render import tap_cells
    ref = np.ones((2, 4), np.float32)
    cand = ref.copy()
    cand[0, 0] = np.inf
    row = compare_tap("pooler/output", ref, cand, get_profile("fp32-cpu"))
    read_back = dict(row, max_abs="inf", tol_ratio="inf", rounding="nan")
    for t in (row, read_back):
        report = {"verdict": "fail", "first_divergence": t["name"], "taps": [t],
                  "sides": {"reference": "r", "candidate": "c"}, "profile": get_profile("fp32-cpu").to_dict(),
                  "inputs": {"batch_size": 2, "seq_len": 4, "seed": 0, "padding_positions": 0,
                             "rows_with_padding": 0, "sentences": "s"}}
        cli.print_summary(report, "report.json")
        assert "inf" in render_markdown(report).lower()
        assert tap_cells(t)[2] in ("inf", "—")
    assert "pooler/output" in capsys.readouterr().out


def test_schemas_know_every_cause_and_reject_what_they_should():
    import jsonschema
    from parity.numerics.hints import CAUSES
    from parity.compare.schema import schema
    assert set(CAUSES) <= set(schema("diagnosis")["$defs"]["hint"]["properties"]["cause"]["enum"])
    row = compare_tap("pooler/output", np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), get_profile("fp32-cpu"))
    good = {"verdict": "pass", "first_divergence": None, "inputs": {"batch_size": 2, "seq_len": 3},
            "profile": get_profile("fp32-cpu").to_dict(), "taps": [row]}
    validate(good, "report")
    for broken in ({**good, "verdict": "ok"}, {**good, "taps": [{**row, "max_abs": "NaN"}]},
                   {**good, "taps": [{**row, "passed": False, "reason": None}]}):   # planted faults
        with pytest.raises(jsonschema.ValidationError):
            validate(broken, "report")
    with pytest.raises(ValueError, match="bare NaN"):
        strict_loads('{"max_abs": NaN}')
    with pytest.raises(jsonschema.ValidationError):
        validate({"verdict": "fail", "culprit": "weights", "hints": [{"cause": "bad_luck", "evidence": "x"}]},
                 "diagnosis")
