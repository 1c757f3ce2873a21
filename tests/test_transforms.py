"""``--transform compile|int8-dynamic`` (parity.candidates.transforms), ``export-onnx --optimize/--quantize int8``
and the hints of transformed candidates (parity.numerics.hints), on the tiny random checkpoint of tests/conftest.py.

The end-to-end tests (marked heavy) run whole commands in this process against the official TF graph, at batch 2 x
sequence 8; torch.compile compiles once in this module (one compare), the slowest step here (~10-20 s on 2 cores).
The hints are also checked on planted signatures, without a model.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bert_torch import BertConfig
from bert_torch.weights import build_model, model_tensors, write_weights

from parity import frontdoor
from parity.candidates.transforms import LOSSY_MIN_COSINE, lossy_rule, output_taps
from parity.compare.schema import check_json_file
from parity.numerics.hints import (CAUSES, compiled_rounding_hint, int8_weight_type_hint,
                                   quantized_embeddings_hint)

SHAPE = ["--batch-size", "2", "--seq-len", "8"]
TRANSFORM_CAUSES = ("compiled_rounding", "int8_weight_type", "quantized_embeddings")


def run(capsys, tmp_path, *argv: str, command: str = "compare"):
    """``bert-parity COMMAND`` in this process: (exit code, report or None, stdout, stderr)."""
    report_dir = tmp_path / f"report{len(list(tmp_path.glob('report*')))}"
    code = frontdoor.main([command, *argv, "--report-dir", str(report_dir)])
    out, err = capsys.readouterr()
    path = report_dir / ("report.json" if command == "compare" else "diagnosis.json")
    report = check_json_file(str(path), "report") if path.exists() and command == "compare" else None
    return code, report, out, err


def causes(report: dict) -> list[str]:
    return [h["cause"] for h in report.get("hints", [])]


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory, tiny_checkpoint) -> str:
    """Weights of the same shape as the tiny checkpoint's, drawn with another seed: a planted wrong model."""
    config = BertConfig.from_json_file(tiny_checkpoint["config"])
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("other") / "other.safetensors")
    write_weights(path, model_tensors(build_model(config, None)))
    return path


def ckpt_args(tiny_checkpoint, weights=None) -> list[str]:
    return ["--tf-checkpoint", tiny_checkpoint["dir"], "--torch-weights", weights or tiny_checkpoint["weights"]]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before anything loads.

def test_transform_on_onnx_is_refused(capsys, tmp_path, tiny_checkpoint):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not read: refused before loading")
    code, report, _, err = run(capsys, tmp_path, "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate",
                               f"onnx:{fake}", "--transform", "compile")
    assert code == 2 and report is None
    assert err.strip().count("\n") == 0
    assert "--transform applies to PyTorch candidates; for ONNX use export-onnx --optimize/--quantize" in err


@pytest.mark.parametrize("argv, words", [
    (["--precision", "bf16", "--transform", "compile"], "runs in float32 only; --precision bf16"),
    (["--precision", "fp16", "--transform", "int8-dynamic"], "runs in float32 only; --precision fp16"),
    (["--device", "cuda", "--transform", "int8-dynamic"], "a CPU kernel; --device cuda does not apply"),
    (["--transform", "int4"], "invalid choice: 'int4'"),
])
def test_transform_combinations_refused(capsys, tmp_path, tiny_checkpoint, argv, words):
    code, report, _, err = run(capsys, tmp_path, *ckpt_args(tiny_checkpoint), *SHAPE, *argv)
    assert code == 2 and report is None
    assert words in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("transform, words", [("compile", "cannot be fed intermediate values"),
                                              ("int8-dynamic", "exceed by design")])
def test_diagnose_refuses_transforms(capsys, tmp_path, tiny_checkpoint, transform, words):
    code, _, _, err = run(capsys, tmp_path, *ckpt_args(tiny_checkpoint), *SHAPE, "--transform", transform,
                          command="diagnose")
    assert code == 2 and words in err and err.strip().count("\n") == 0, err
    assert not any(tmp_path.glob("report*/diagnosis.json"))


def test_export_weight_type_needs_quantize(capsys, tmp_path, tiny_checkpoint):
    code = frontdoor.main(["export-onnx", "--candidate", f"bert_torch:{tiny_checkpoint['weights']}", "--bert-config",
                           tiny_checkpoint["config"], "--output", str(tmp_path / "m.onnx"), "--weight-type", "QUInt8"])
    assert code == 2 and "--weight-type QUInt8 applies to --quantize int8" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------
# compile and int8-dynamic, end to end.

@pytest.mark.heavy
def test_compile_compare_passes(capsys, tmp_path, tiny_checkpoint):
    """Every tap comes through the compiled model (the graph is cut at each tap point: measured, and said), the
    verdict is the float32 one, compile time is recorded apart from run time, the hint stays silent."""
    code, report, out, _ = run(capsys, tmp_path, *ckpt_args(tiny_checkpoint), *SHAPE, "--transform", "compile")
    assert code == 0, out
    assert report["verdict"] == "pass" and report["transform"] == "compile"
    assert report["candidate"]["transform"] == "compile"
    assert report["not_observable"] == [] and report["taps_compared"] == 5 + 11 * 2 + 1
    info = report["compile"]
    assert info["compile_seconds"] > 0 and info["run_seconds"] > 0 and info["graphs"] > 1
    assert info["graph_breaks"] > 0 and "graph breaks" in report["sides"]["candidate"]
    check = info["float64_check"]
    assert set(check) == {"layer_1/output", "pooler/output"}
    assert all(v["compiled_error"] < 1e-5 for v in check.values())
    assert "compiled_rounding" not in causes(report)   # a clean compile
    assert "transform: compile" in out and "--transform compile: compiling took" in out
    assert "rule" not in report   # an exact form keeps compare's own verdict


@pytest.mark.heavy
def test_int8_dynamic_judged_by_the_lossy_rule(capsys, tmp_path, tiny_checkpoint):
    code, report, out, _ = run(capsys, tmp_path, *ckpt_args(tiny_checkpoint), *SHAPE, "--transform", "int8-dynamic")
    assert code == 0, out
    assert report["transform"] == "int8-dynamic" and report["verdict"] == "pass"
    assert f"cosine >= {LOSSY_MIN_COSINE}" in report["rule"] and "rule: lossy form" in out
    lossy = report["lossy"]
    assert lossy["passed"] and [o["name"] for o in lossy["outputs"]] == ["layer_1/output", "pooler/output"]
    # where the error enters: the embeddings (float32) are within float32 tolerance, the first Linear's output not
    rows = {t["name"]: t for t in report["taps"]}
    assert all(rows[n]["passed"] for n in rows if n.startswith("embeddings/"))
    assert report["first_divergence"].startswith("layer_0/attention/")
    assert lossy["taps_within_float32_tolerance"] < len(report["taps"])
    assert "reduced_precision" not in causes(report) and not set(causes(report)) & set(TRANSFORM_CAUSES)
    assert "int8-dynamic" in report["sides"]["candidate"] and report["candidate"]["transform"] == "int8-dynamic"


@pytest.mark.heavy
def test_int8_dynamic_planted_wrong_weights_fail(capsys, tmp_path, tiny_checkpoint, other_weights):
    """Another model's weights, quantized: the outputs point elsewhere, and the lossy rule fails them."""
    code, report, _, _ = run(capsys, tmp_path, *ckpt_args(tiny_checkpoint, other_weights), *SHAPE,
                             "--transform", "int8-dynamic")
    assert code == 1 and report["verdict"] == "fail"
    assert not report["lossy"]["passed"] and "cosine" in report["lossy"]["reason"]
    assert min(o["cosine"] for o in report["lossy"]["outputs"]) < LOSSY_MIN_COSINE


# ---------------------------------------------------------------------------------------------
# export-onnx --optimize / --quantize int8

def export(tmp_path, tiny_checkpoint, name: str, *extra: str, candidate: str = None) -> str:
    out = str(tmp_path / name)
    code = frontdoor.main(["export-onnx", "--candidate", candidate or f"bert_torch:{tiny_checkpoint['weights']}",
                           "--bert-config", tiny_checkpoint["config"], "--output", out, *extra])
    assert code == 0
    return out


def metadata(path: str) -> dict:
    import onnx
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def onnx_side(path: str, tiny_checkpoint):
    from parity.candidates.factory import make_candidate, parse_candidate
    return make_candidate(parse_candidate(f"onnx:{path}"), config=BertConfig.from_json_file(tiny_checkpoint["config"]))


@pytest.mark.heavy
def test_export_optimize_declares_the_fused_taps(tmp_path, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    path = export(tmp_path, tiny_checkpoint, "opt.onnx", "--optimize")
    meta = metadata(path)
    assert meta["bert_parity.optimize"] == "bert" and json.loads(meta["bert_parity.fusions"])
    hidden = json.loads(meta["bert_parity.unobservable"])
    side = onnx_side(path, tiny_checkpoint)
    # measured: bert_torch's keys are folded into the scores' matmul; the taps that survive are graph outputs
    assert set(hidden) == {"layer_0/attention/key", "layer_1/attention/key"}
    assert side.unobservable == hidden and "transformer fusions" in side.unobservable["layer_0/attention/key"]
    assert set(side.tap_names) == set(json.loads(meta["bert_parity.taps"]))
    assert side.optimize == "bert" and side.quantization is None
    assert not os.listdir(tmp_path) or all(not n.endswith(".tmp") for n in os.listdir(tmp_path))


@pytest.mark.heavy
def test_export_optimize_hf_hides_attention_insides(tmp_path, tiny_checkpoint):
    """An HF export: SkipLayerNormalization swallows the dense taps, the tapping attention's scores and probs go."""
    transformers = pytest.importorskip("transformers")
    config = BertConfig.from_json_file(tiny_checkpoint["config"])
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**{**config.to_dict(), "hidden_act": "gelu_new",
                                                           "layer_norm_eps": 1e-12}))
    hf.save_pretrained(str(tmp_path / "hf"))
    path = export(tmp_path, tiny_checkpoint, "hf-opt.onnx", "--optimize", candidate=f"hf:{tmp_path / 'hf'}")
    side = onnx_side(path, tiny_checkpoint)
    fused = json.loads(metadata(path)["bert_parity.fusions"])
    assert fused.get("SkipLayerNormalization")
    for tap in ("layer_0/attention/dense", "layer_0/output/dense", "layer_0/attention/scores", "embeddings/sum"):
        assert "transformer fusions" in side.unobservable[tap]
    assert "layer_0/output" in side.tap_names and "pooler/output" in side.tap_names


@pytest.mark.heavy
def test_export_quantize_int8_compares_as_lossy(capsys, tmp_path, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    path = export(tmp_path, tiny_checkpoint, "q.onnx", "--quantize", "int8")
    meta = metadata(path)
    assert meta["bert_parity.quantize"] == "int8-dynamic" and meta["bert_parity.weight_type"] == "QInt8"
    side = onnx_side(path, tiny_checkpoint)
    assert side.unobservable == {} and side.quantization["weight_type"] == "QInt8"
    assert "MatMulInteger" in side.quantization["operators"] and side.quantization["quantized_lookups"] == 0
    code, report, _, _ = run(capsys, tmp_path, "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate",
                             f"onnx:{path}", *SHAPE)
    assert code == 0 and report["transform"] is None and report["lossy"]["passed"]
    assert report["rule"].startswith("lossy form (ONNX int8 (int8-dynamic, weights QInt8))")
    # this machine's weight-type trap is for a CPU without VNNI; the embeddings are float32: no hint of either
    assert "quantized_embeddings" not in causes(report)
    u8 = onnx_side(export(tmp_path, tiny_checkpoint, "q8.onnx", "--quantize", "int8", "--weight-type", "QUInt8"),
                   tiny_checkpoint)
    assert u8.quantization["weight_type"] == "QUInt8"


@pytest.mark.heavy
def test_quantized_embeddings_hint_on_onnxruntime_defaults(capsys, tmp_path, tiny_checkpoint):
    """Planted: onnxruntime's quantize_dynamic with its default operators quantizes the Gather lookups too."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    plain = export(tmp_path, tiny_checkpoint, "plain.onnx")
    path = str(tmp_path / "default-q.onnx")
    quantize_dynamic(plain, path, weight_type=QuantType.QInt8)
    code, report, _, _ = run(capsys, tmp_path, "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate",
                             f"onnx:{path}", *SHAPE)
    assert report["candidate"]["quantization"]["quantized_lookups"] > 0
    h = next(h for h in report["hints"] if h["cause"] == "quantized_embeddings")
    assert h["block"] == "embeddings" and "quantized lookups" in h["evidence"]


# ---------------------------------------------------------------------------------------------
# The hints and the lossy rule on planted signatures (no model).

def test_transform_causes_are_documented():
    assert set(TRANSFORM_CAUSES) <= set(CAUSES)


def test_compiled_rounding_hint():
    clean = {"layer_1/output": {"compiled_error": 5.9e-7, "eager_error": 4.4e-7, "scale": 2.6}}   # measured
    assert compiled_rounding_hint(clean) is None
    planted = {"pooler/output": {"compiled_error": 3e-5, "eager_error": 1e-7, "scale": 1.0}}
    h = compiled_rounding_hint(planted)
    assert h["cause"] == "compiled_rounding" and h["evidence"].startswith("pooler/output")
    assert compiled_rounding_hint({"t": {"compiled_error": 2e-7, "eager_error": 0.0, "scale": 1.0}}) is None


def test_int8_weight_type_hint():
    q8 = {"method": "int8-dynamic", "weight_type": "QInt8"}
    h = int8_weight_type_hint(q8, frozenset({"avx2", "avx512f"}), "x86_64")
    assert h["cause"] == "int8_weight_type" and "VPMADDUBSW" in h["evidence"] and "QUInt8" in h["evidence"]
    assert int8_weight_type_hint(q8, frozenset({"avx2", "avx512_vnni"}), "x86_64") is None   # VNNI: no saturation
    assert int8_weight_type_hint({**q8, "weight_type": "QUInt8"}, frozenset({"avx2"}), "x86_64") is None
    assert int8_weight_type_hint(q8, frozenset({"asimd"}), "aarch64") is None
    assert int8_weight_type_hint(q8, frozenset(), "x86_64") is None   # flags unknown: no evidence, no hint
    assert int8_weight_type_hint(None, frozenset({"avx2"}), "x86_64") is None


def _row(name, passed=True, cosine=1.0, max_abs=0.0, **more):
    return {"name": name, "passed": passed, "cosine": cosine, "max_abs": max_abs, **more}


def test_quantized_embeddings_hint():
    clean = [_row("embeddings/output"), _row("layer_0/attention/query", passed=False, cosine=0.9999, max_abs=3e-3)]
    assert quantized_embeddings_hint(clean, "--transform int8-dynamic") is None
    planted = [_row("embeddings/word_embeddings", passed=False, cosine=0.9995, max_abs=2e-3)] + clean
    h = quantized_embeddings_hint(planted, "ONNX int8", {"quantized_lookups": 3})
    assert h["cause"] == "quantized_embeddings" and "3 quantized lookups" in h["evidence"]
    assert quantized_embeddings_hint(planted, None) is None   # not quantized: another story (weights, formula)


def test_fp16_overflow_in_scores_is_named():
    """fp16 overflow in the attention scores is the existing fp16_overflow hint (parity.numerics.precision), which
    names the first tap holding Inf/NaN: planted at layer_0/attention/scores."""
    from parity.numerics.precision import Tier, fp16_overflow_hint
    names = ["layer_0/attention/query", "layer_0/attention/scores", "layer_0/attention/probs"]
    c64 = {n: np.full((1, 1, 2, 2), 7e4) for n in names}
    cand = {n: np.full((1, 1, 2, 2), 1.0, np.float32) for n in names}
    cand["layer_0/attention/scores"] = np.array([[[[np.inf, 1.0], [1.0, 1.0]]]], np.float32)
    cand["layer_0/attention/probs"] = np.full((1, 1, 2, 2), np.nan, np.float32)
    h = fp16_overflow_hint(names, cand, c64, Tier("fp16"))
    assert h["cause"] == "fp16_overflow" and h["evidence"].startswith("layer_0/attention/scores")
    clean = {n: np.ones((1, 1, 2, 2), np.float32) for n in names}
    assert fp16_overflow_hint(names, clean, c64, Tier("fp16")) is None
    assert fp16_overflow_hint(names, cand, c64, Tier("fp32")) is None


def test_lossy_rule_on_planted_reports():
    names = ["embeddings/output", "layer_0/output", "layer_1/output", "pooler/output", "classifier/logits"]
    assert output_taps(names) == ["layer_1/output", "pooler/output", "classifier/logits"]

    def report(**rows):
        taps = [_row(n, passed=False, cosine=0.9999, max_abs=1e-3) for n in names]
        for t in taps:
            t.update(rows.get(t["name"].replace("/", "_"), {}))
        return {"verdict": "fail", "first_divergence": "layer_0/output", "taps": taps,
                "sides": {"gelu": {"reference": "tanh", "candidate": "tanh"}}}
    ok = report()
    assert lossy_rule(ok, "int8")["passed"] and ok["verdict"] == "pass" and ok["first_divergence"] == "layer_0/output"
    far = report(pooler_output={"cosine": 0.5})
    assert not lossy_rule(far, "int8")["passed"] and far["verdict"] == "fail"
    assert far["lossy"]["reason"] == "pooler/output: cosine 0.5 < 0.99"
    nan = report(layer_0_output={"non_finite": {"pytorch": {"nan": 1, "inf": 0, "-inf": 0, "first_index": [0]}}})
    assert not lossy_rule(nan, "int8")["passed"]
    missing = report(classifier_logits={"max_abs": None, "cosine": None})
    assert not lossy_rule(missing, "int8")["passed"]
    gelu = report()
    gelu["sides"]["gelu"]["candidate"] = "erf"
    assert not lossy_rule(gelu, "int8")["passed"]
