"""``bert-parity evaluate``: task-level parity of a fine-tuned checkpoint (CONTRACT.md, "Being added").

The official graph with the checkpoint's own head against a candidate, on dev features made by the official code:
a faithful conversion passes (MRPC and SQuAD), as every candidate kind does (bert_torch, hf:, ppb:, onnx:, module:)
and --transform compile (exact rule); planted faults fail with a hint naming them (the classifier's rows swapped,
SQuAD's start and end swapped, a quantized embedding table: every prediction alike, its logits far outside the
rounding noise); lossy forms (--transform int8-dynamic, an int8 ONNX file, bf16) are judged by --min-ratio; and bad
input is one line, exit 2.
The checkpoints are tiny official random ones with a head (``random_checkpoint``) and the data the committed
samples (parity/data: the first 64 pairs of GLUE MRPC dev.tsv, byte for byte, and 20 SQuAD v1.1 dev questions).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import textwrap

import numpy as np
import pytest

from bert_torch import convert
from parity import frontdoor
from parity.checkpoints import CONFIGS
from parity.evaluate import judge
from parity.evaluate.data import MRPC_LABELS, hf_label_columns
from parity.files import sample

# tiny-1layer with BERT's own vocabulary (real word pieces for both samples) and room for SQuAD's windows.
CFG = dict(CONFIGS["tiny-1layer"], vocab_size=30522, max_position_embeddings=128)
SQUAD_SIZES = ["--max-seq-length", "128", "--doc-stride", "64", "--max-query-length", "32", "--max-examples", "8"]


class Result:
    def __init__(self, code: int, out: str, err: str, report_dir: str):
        self.code, self.out, self.err, self.report_dir = code, out, err, report_dir
        path = os.path.join(report_dir, "report.json")
        self.report = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.report = json.load(f)

    def file(self, name: str) -> str:
        with open(os.path.join(self.report_dir, name), encoding="utf-8") as f:
            return f.read()


@pytest.fixture
def evaluate(tmp_path, capsys):
    """``bert-parity evaluate`` in-process (TensorFlow and torch are imported once per session)."""
    def run(*argv: str) -> Result:
        report_dir = str(tmp_path / f"report{len(list(tmp_path.iterdir()))}")
        code = frontdoor.main(["evaluate", *argv, "--report-dir", report_dir])
        out, err = capsys.readouterr()
        return Result(code, out, err, report_dir)
    return run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A --data-dir of the committed samples: mrpc/dev.tsv (GLUE's own format: a BOM'd header, 5 tab-separated
    columns) and squad/dev-v1.1.json."""
    root = tmp_path_factory.mktemp("data")
    (root / "mrpc").mkdir()
    (root / "squad").mkdir()
    shutil.copy(sample("mrpc_sample.tsv"), root / "mrpc" / "dev.tsv")
    shutil.copy(sample("squad_dev_sample.json"), root / "squad" / "dev-v1.1.json")
    return str(root)


@pytest.fixture(scope="module")
def classifier(random_checkpoint) -> dict:
    return random_checkpoint(CFG, head="classifier", num_labels=2, perturb=0.02)


@pytest.fixture(scope="module")
def squad_ckpt(random_checkpoint) -> dict:
    return random_checkpoint(CFG, head="squad", perturb=0.02)


def planted(src: str, out: str, change) -> str:
    """A copy of the weights file ``src`` with ``change(tensors)`` applied."""
    from safetensors.numpy import load_file, save_file
    tensors = load_file(src)
    change(tensors)
    save_file(tensors, out)
    return out


def swap_rows(*names: str):
    def change(tensors):
        for name in names:
            tensors[name] = np.ascontiguousarray(tensors[name][::-1])
    return change


@pytest.fixture(scope="module")
def mrpc_pass(classifier, data_dir, tmp_path_factory) -> Result:
    """The faithful conversion on the 64 MRPC pairs, run once for the tests that read its report."""
    out = str(tmp_path_factory.mktemp("mrpc_pass") / "report")
    code = frontdoor.main(["evaluate", "--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                           "--torch-weights", classifier["torch_weights"], "--report-dir", out])
    return Result(code, "", "", out)


# ---------------------------------------------------------------------------------------------
# End to end.

@pytest.mark.heavy
def test_mrpc_faithful_conversion_passes(mrpc_pass):
    r = mrpc_pass.report
    assert mrpc_pass.code == 0, r and r["verdict"]
    assert r["verdict"] == "pass" and r["agreement"] == 1.0 and r["examples"] == 64
    assert r["metrics"]["reference"] == r["metrics"]["candidate"]
    assert r["differing"] == [] and r["mcnemar"]["p_value"] == 1.0 and r["mcnemar"]["discordant"] == 0
    assert r["logit_differences"]["max"] < 1e-5 and r["hints"] == []
    assert not r["form"]["lossy"] and "rounding noise" in r["rule"]


@pytest.mark.heavy
def test_report_fields_have_the_contracts_types(mrpc_pass):
    r = mrpc_pass.report
    assert isinstance(r["task"], str) and r["task"] == "mrpc"
    assert isinstance(r["examples"], int) and not isinstance(r["examples"], bool)
    assert isinstance(r["agreement"], float) and 0.0 <= r["agreement"] <= 1.0
    for side in ("reference", "candidate"):
        assert set(r["metrics"][side]) == {"accuracy", "f1"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in r["metrics"][side].values())
    assert r["transform"] is None
    assert isinstance(r["rule"], str) and r["rule"]
    assert r["verdict"] in ("pass", "fail")
    d = r["logit_differences"]
    assert d["count"] == 64 * 2 and all(isinstance(d[k], float) for k in ("max", "p50", "p99"))
    assert {"reference_only_correct", "candidate_only_correct", "discordant", "p_value"} <= set(r["mcnemar"])
    assert r["environment"]["tf_cache"] is not None and r["seconds"]["total"] > 0
    assert mrpc_pass.file("report.md").splitlines()[2].startswith("**verdict: pass (exact form")   # verdict first
    predictions = json.loads(mrpc_pass.file("predictions.json"))["examples"]
    assert len(predictions) == 64 and {"example", "reference", "candidate", "label"} <= set(predictions[0])


@pytest.mark.heavy
def test_squad_faithful_conversion_passes(evaluate, squad_ckpt, data_dir):
    run = evaluate("--tf-checkpoint", squad_ckpt["dir"], "--task", "squad", "--data-dir", data_dir,
                   "--torch-weights", squad_ckpt["torch_weights"], *SQUAD_SIZES)
    r = run.report
    assert run.code == 0, run.out + run.err
    assert r["examples"] == 8 and r["features"] > 8   # doc_stride windows
    assert r["agreement"] == 1.0 and r["metrics"]["reference"] == r["metrics"]["candidate"]
    assert set(r["metrics"]["reference"]) == {"exact_match", "f1"}
    assert set(r["logit_differences"]["taps"]) == {"squad/start_logits", "squad/end_logits"}
    assert "verdict: pass" in run.out.splitlines()[0] and "f1" in run.out


@pytest.mark.heavy
def test_swapped_classifier_rows_fail_with_the_label_order_hint(evaluate, classifier, data_dir, tmp_path):
    weights = planted(classifier["torch_weights"], str(tmp_path / "swapped.safetensors"),
                      swap_rows("classifier.weight", "classifier.bias"))
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--torch-weights", weights)
    assert run.code == 1, run.out + run.err
    r = run.report
    assert r["verdict"] == "fail" and r["agreement"] < 0.1 and r["rule_numbers"]["counted"] > 50
    assert [h["cause"] for h in r["hints"]] == ["label_order"]
    assert "label order" in r["hints"][0]["evidence"] and "label order" in run.out
    first = r["differing"][0]
    assert first["margin"] > first["noise"] > 0 and first["rounding"] is not None   # measured by a float64 run
    assert "label_order" in run.file("report.md")


@pytest.mark.heavy
def test_swapped_squad_start_and_end_fail_naming_it(evaluate, squad_ckpt, data_dir, tmp_path):
    weights = planted(squad_ckpt["torch_weights"], str(tmp_path / "swapped.safetensors"),
                      swap_rows("qa_outputs.weight", "qa_outputs.bias"))
    run = evaluate("--tf-checkpoint", squad_ckpt["dir"], "--task", "squad", "--data-dir", data_dir,
                   "--torch-weights", weights, *SQUAD_SIZES)
    assert run.code == 1, run.out + run.err
    assert [h["cause"] for h in run.report["hints"]] == ["start_end_swapped"]
    assert "start and end logits swapped" in run.out


def int8_like(tensors) -> None:
    """Every Linear weight rounded to 255 symmetric levels per output row, as dynamic int8 quantization stores it."""
    for name, w in tensors.items():
        if name.endswith(".weight") and w.ndim == 2 and "embeddings" not in name:
            scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
            tensors[name] = (np.round(w / np.where(scale > 0, scale, 1)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def relabelled(mrpc_pass, tmp_path_factory) -> str:
    """A --data-dir of the 64 MRPC pairs labelled with the reference's own predictions: the reference scores 1.0,
    so whatever a lossy candidate loses shows in its metrics."""
    labels = {p["example"]: p["reference"] for p in json.loads(mrpc_pass.file("predictions.json"))["examples"]}
    with open(sample("mrpc_sample.tsv"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = [lines[0]] + [str(labels[f"dev-{i}"]) + line[1:] for i, line in enumerate(lines[1:], 1) if line]
    root = tmp_path_factory.mktemp("relabelled")
    (root / "mrpc").mkdir()
    (root / "mrpc" / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(root)


@pytest.mark.heavy
def test_lossy_forms_are_judged_by_the_ratio_rule(evaluate, classifier, relabelled, tmp_path):
    base = ["--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", relabelled]
    # --transform int8-dynamic: torch's dynamic int8 Linear layers, a lossy form.
    run = evaluate(*base, "--torch-weights", classifier["torch_weights"], "--transform", "int8-dynamic",
                   "--min-ratio", "0.5")
    r = run.report
    assert r is not None and r["transform"] == "int8-dynamic", run.out + run.err
    assert r["form"] == {"lossy": True, "name": "--transform int8-dynamic (int8 Linear layers)"}
    assert "--min-ratio" in r["rule"] and r["rule_numbers"]["min_ratio"] == 0.5
    assert r["metrics"]["reference"]["accuracy"] == 1.0 and r["logit_differences"]["max"] > 1e-4   # really int8
    assert run.code == 0 and "lossy form, --transform int8-dynamic" in run.out.splitlines()[0], run.out
    # int8-like weights run in bf16: lossy (--precision bf16), judged by --min-ratio only.
    weights = planted(classifier["torch_weights"], str(tmp_path / "int8like.safetensors"), int8_like)
    run = evaluate(*base, "--torch-weights", weights, "--precision", "bf16", "--min-ratio", "0.5")
    r = run.report
    assert r["metrics"]["reference"]["accuracy"] == 1.0
    assert r["form"]["lossy"] and "bf16" in r["form"]["name"] and "--min-ratio" in r["rule"]
    numbers = r["rule_numbers"]
    assert numbers["min_ratio"] == 0.5 and set(numbers["metrics"]) == {"accuracy", "f1"}
    assert run.code == 0 and r["logit_differences"]["max"] > 1e-4, (run.out, r["logit_differences"])
    # Inverted predictions lose the metric: below 0.99 x the reference's, whatever the agreement says.
    swapped = planted(weights, str(tmp_path / "swapped.safetensors"), swap_rows("classifier.weight", "classifier.bias"))
    run = evaluate(*base, "--torch-weights", swapped, "--precision", "bf16")
    assert run.code == 1 and run.report["form"]["lossy"]
    assert not run.report["rule_numbers"]["metrics"]["accuracy"]["passed"] and "below" in run.out


@pytest.mark.heavy
def test_hf_candidate_labels_are_read_in_id2label_order(evaluate, classifier, data_dir, tmp_path):
    pytest.importorskip("transformers")
    hf = str(tmp_path / "hf")
    assert convert.main(["--tf-checkpoint", classifier["dir"], "--output", hf, "--output-format", "hf"]) == 0
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(hf).num_labels == 2   # the classifier's rows, as written by convert
    # An unchanged folder is the faithful conversion: every prediction alike.
    assert evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                    "--candidate", f"hf:{hf}").code == 0
    from safetensors.numpy import load_file, save_file
    tensors = load_file(os.path.join(hf, "model.safetensors"))
    swap_rows("classifier.weight", "classifier.bias")(tensors)
    save_file(tensors, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["id2label"] = {"0": "equivalent", "1": "not_equivalent"}   # the rows swapped, and said so
    cfg["label2id"] = {"equivalent": 0, "not_equivalent": 1}
    with open(os.path.join(hf, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--candidate", f"hf:{hf}")
    assert run.code == 0 and run.report["agreement"] == 1.0, run.out + run.err
    assert any("id2label" in n for n in run.report["notes"])


# ---------------------------------------------------------------------------------------------
# Every candidate kind and transform, on a few pairs: the faithful conversion in each form passes its rule.

FEW = ["--max-examples", "16"]


def assert_exact_pass(run: Result, examples: int = 16) -> dict:
    r = run.report
    assert run.code == 0, run.out + run.err
    assert r["verdict"] == "pass" and not r["form"]["lossy"] and r["examples"] == examples
    assert r["agreement"] == 1.0 and r["metrics"]["reference"] == r["metrics"]["candidate"]
    outside = r["rule_numbers"]["logits_outside_noise"]
    assert outside["examples"] == 0 and outside["max_times_noise"] < 1 and r["logit_differences"]["max"] < 1e-5
    return r


@pytest.mark.heavy
def test_ppb_candidate_passes(evaluate, random_checkpoint, data_dir, tmp_path):
    """The original port's BertForSequenceClassification, saved as the port saves it (a state dict, torch.save),
    against an erf-GELU checkpoint: the port has no tanh GELU (its "gelu" is erf)."""
    if importlib.util.find_spec("pytorch_pretrained_bert") is None:   # not importorskip: it imports boto3 unstubbed
        pytest.skip("the ppb extra (pytorch-pretrained-bert 0.6.2) is not installed")
    import torch
    from safetensors.torch import load_file
    from parity.candidates.ppb import import_ppb
    ppb = import_ppb()
    ck = random_checkpoint(dict(CFG, hidden_act="gelu_erf"), head="classifier", perturb=0.02)
    with open(ck["bert_config"], encoding="utf-8") as f:
        cfg = {**json.load(f), "hidden_act": "gelu"}   # the port's name of the erf GELU
    (tmp_path / "bert_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    model = ppb.BertForSequenceClassification(ppb.BertConfig.from_dict(cfg), num_labels=2)
    model.load_state_dict({k if k.startswith("classifier.") else "bert." + k: v
                           for k, v in load_file(ck["torch_weights"]).items()}, strict=True)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    run = evaluate("--tf-checkpoint", ck["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--candidate", f"ppb:{tmp_path / 'pytorch_model.bin'}", *FEW)
    r = assert_exact_pass(run)
    assert r["candidate"]["kind"] == "ppb" and "pytorch-pretrained-bert" in r["sides"]["candidate"]


@pytest.fixture(scope="module")
def onnx_files(classifier, tmp_path_factory) -> dict:
    """export-onnx of the tiny classifier: as exported, and with --quantize int8 (onnxruntime's dynamic int8 of the
    MatMul nodes)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, extra in (("plain", []), ("int8", ["--quantize", "int8"])):
        files[name] = str(out / f"{name}.onnx")
        assert frontdoor.main(["export-onnx", "--candidate", f"bert_torch:{classifier['torch_weights']}",
                               "--bert-config", classifier["bert_config"], "--output", files[name], *extra]) == 0
    return files


@pytest.mark.heavy
def test_onnx_export_passes_the_exact_rule(evaluate, classifier, data_dir, onnx_files):
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--candidate", f"onnx:{onnx_files['plain']}", *FEW)
    r = assert_exact_pass(run)
    assert r["candidate"]["kind"] == "onnx" and r["form"]["name"] == "float32"


@pytest.mark.heavy
def test_onnx_int8_is_judged_by_the_lossy_rule(evaluate, classifier, relabelled, onnx_files):
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", relabelled,
                   "--candidate", f"onnx:{onnx_files['int8']}", "--min-ratio", "0.5")
    r = run.report
    assert r is not None, run.err
    assert r["form"]["lossy"] and "quantized ONNX file" in r["form"]["name"] and "bert_parity.quantize" in \
        r["form"]["name"] and r["transform"] is None
    assert "--min-ratio" in r["rule"] and set(r["rule_numbers"]["metrics"]) == {"accuracy", "f1"}
    assert r["metrics"]["reference"]["accuracy"] == 1.0 and r["logit_differences"]["max"] > 1e-4   # really int8
    assert run.code == 0 and "lossy form, a quantized ONNX file" in run.out.splitlines()[0], run.out


@pytest.mark.heavy
def test_module_candidate_with_a_head_passes(evaluate, classifier, data_dir, tmp_path, monkeypatch):
    """A user's factory: transformers' BertForSequenceClassification from the converted HF folder, its classifier
    module's output mapped to classifier/logits."""
    pytest.importorskip("transformers")
    hf = str(tmp_path / "hf")
    assert convert.main(["--tf-checkpoint", classifier["dir"], "--output", hf, "--output-format", "hf"]) == 0
    (tmp_path / "evaluate_tiny_classifier.py").write_text(textwrap.dedent(f"""
        import transformers

        def factory(config):
            model = transformers.BertForSequenceClassification.from_pretrained({hf!r}, local_files_only=True)
            return {{"model": model, "taps": {{"classifier": "classifier/logits"}}, "head": "classifier"}}
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--candidate", "module:evaluate_tiny_classifier:factory", *FEW)
    r = assert_exact_pass(run)
    assert r["candidate"]["kind"] == "module" and "BertForSequenceClassification" in r["sides"]["candidate"]


@pytest.mark.heavy
def test_compiled_candidate_is_judged_by_the_exact_rule(evaluate, classifier, data_dir):
    # 8 pairs in one batch: one input shape, so one compilation (the slow part).
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--torch-weights", classifier["torch_weights"], "--transform", "compile", "--max-examples", "8")
    r = assert_exact_pass(run, 8)
    assert r["transform"] == "compile" and r["form"]["name"] == "--transform compile (float32)"
    assert r["compile"]["shapes"] == 1 and r["compile"]["compile_seconds"] > 0
    assert any(n.startswith("--transform compile: compiling took") for n in r["notes"])


def int8_table(name: str):
    """The table ``name`` rounded to 255 symmetric levels (one scale for the tensor), as an int8 table stores it."""
    def change(tensors):
        w = tensors[name]
        scale = np.abs(w).max() / 127.0
        tensors[name] = (np.round(w / scale) * scale).astype(np.float32)
    return change


@pytest.mark.heavy
def test_a_quantized_embedding_table_fails_the_exact_rule_naming_it(evaluate, classifier, data_dir, tmp_path):
    weights = planted(classifier["torch_weights"], str(tmp_path / "int8-table.safetensors"),
                      int8_table("embeddings.word_embeddings.weight"))
    run = evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                   "--torch-weights", weights)
    r = run.report
    assert run.code == 1, run.out + run.err
    assert not r["form"]["lossy"] and r["verdict"] == "fail"
    # Every prediction alike (the predictions alone would pass it): the head logits are what give it away.
    assert r["agreement"] == 1.0 and r["rule_numbers"]["counted"] == 0
    outside = r["rule_numbers"]["logits_outside_noise"]
    assert outside["examples"] > 32 and outside["worst"]["times_noise"] > 10, outside
    assert "head logits outside the rounding noise" in run.out.splitlines()[0]
    assert [h["cause"] for h in r["hints"]] == ["quantized_embeddings"]
    line = next(x for x in run.out.splitlines() if x.startswith("hint quantized_embeddings:"))
    assert "embeddings.word_embeddings.weight" in line and "8-bit levels" in line and "int8" in line
    assert "quantized_embeddings" in run.file("report.md")


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming it, nothing written.

def assert_bad_input(run: Result, *words: str) -> None:
    assert run.code == 2, run.out + run.err
    assert run.err.count("\n") == 1 and all(w in run.err for w in words), run.err
    assert not os.path.exists(run.report_dir)


def test_unknown_task_is_a_usage_error(evaluate, tmp_path):
    assert_bad_input(evaluate("--tf-checkpoint", str(tmp_path), "--task", "cola", "--torch-weights", __file__),
                     "--task", "cola")


@pytest.mark.heavy
@pytest.mark.parametrize("head,task,words", [(None, "mrpc", ("no mrpc head", "output_weights")),
                                             ("squad", "mrpc", ("no mrpc head", "run_squad head")),
                                             ("classifier", "squad", ("no squad head", "cls/squad/output_weights"))])
def test_a_checkpoint_without_the_tasks_head_is_refused(evaluate, random_checkpoint, data_dir, head, task, words):
    ck = random_checkpoint(CFG, head=head, perturb=0.02)
    assert_bad_input(evaluate("--tf-checkpoint", ck["dir"], "--task", task, "--data-dir", data_dir,
                              "--torch-weights", ck["torch_weights"]), ck["dir"], *words)


@pytest.mark.heavy
def test_a_candidate_without_the_head_is_refused(evaluate, classifier, squad_ckpt, data_dir):
    assert_bad_input(evaluate("--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--data-dir", data_dir,
                              "--torch-weights", squad_ckpt["torch_weights"]),
                     squad_ckpt["torch_weights"], "classifier/logits")


@pytest.mark.heavy
def test_missing_and_malformed_dev_files_are_named(evaluate, classifier, squad_ckpt, tmp_path):
    ck = ["--tf-checkpoint", classifier["dir"], "--task", "mrpc", "--torch-weights", classifier["torch_weights"]]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad_input(evaluate(*ck, "--data-dir", str(empty)), str(empty), os.path.join("mrpc", "dev.tsv"))
    bad = tmp_path / "bad"
    (bad / "mrpc").mkdir(parents=True)
    (bad / "mrpc" / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tfour columns\n",
                                          encoding="utf-8")
    assert_bad_input(evaluate(*ck, "--data-dir", str(bad)), str(bad / "mrpc" / "dev.tsv"), "row 1", "columns")
    (bad / "squad").mkdir()
    (bad / "squad" / "dev-v1.1.json").write_text('{"data": [{"paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    assert_bad_input(evaluate("--tf-checkpoint", squad_ckpt["dir"], "--task", "squad", "--data-dir", str(bad),
                              "--torch-weights", squad_ckpt["torch_weights"], *SQUAD_SIZES),
                     "dev-v1.1.json", "context")


def test_flag_relations_are_checked_before_any_work(evaluate, tmp_path):
    base = ["--tf-checkpoint", str(tmp_path), "--torch-weights", __file__]
    assert_bad_input(evaluate(*base, "--task", "mrpc", "--doc-stride", "32"), "--doc-stride", "squad")
    assert_bad_input(evaluate(*base, "--task", "squad", "--max-seq-length", "64", "--max-query-length", "64"),
                     "--max-query-length")
    assert_bad_input(evaluate("--tf-checkpoint", str(tmp_path), "--task", "mrpc"), "--torch-weights")
    assert_bad_input(evaluate(*base, "--task", "mrpc", "--min-ratio", "1.5"), "--min-ratio")


# ---------------------------------------------------------------------------------------------
# The judgement's parts, on planted numbers.

def test_mcnemar_is_exact_and_one_without_discordant_pairs():
    same = np.array([True, False, True])
    assert judge.mcnemar(same, same)["p_value"] == 1.0
    ref, cand = np.array([True] * 10), np.array([False] * 10)
    m = judge.mcnemar(ref, cand)
    assert m["reference_only_correct"] == 10 and m["discordant"] == 10
    assert m["p_value"] == pytest.approx(2 * 0.5 ** 10)   # exact two-sided binomial


def test_label_order_hint_finds_a_permutation_and_spares_a_faithful_candidate():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 3)).astype(np.float32)
    perm = [2, 0, 1]
    cand = ref[:, perm]
    hint = judge.label_order_hint(ref, cand, [], [])
    assert hint["cause"] == "label_order" and "label order" in hint["evidence"]
    assert judge.label_order_hint(ref, ref + 1e-7, [], []) is None


def test_start_end_hint():
    rng = np.random.default_rng(1)
    ref = {"squad/start_logits": rng.standard_normal((4, 16)), "squad/end_logits": rng.standard_normal((4, 16))}
    swapped = {"squad/start_logits": ref["squad/end_logits"], "squad/end_logits": ref["squad/start_logits"]}
    assert judge.start_end_hint(ref, swapped)["cause"] == "start_end_swapped"
    assert judge.start_end_hint(ref, ref) is None


def test_a_margin_within_the_noise_is_excused_and_one_above_it_is_not():
    from parity.numerics.metrics import get_profile
    profile = get_profile(judge.NOISE_PROFILE)
    ref = {"classifier/logits": np.array([[0.5, 0.5 + 1e-7], [0.0, 1.0]], np.float32)}
    m = judge.margins("mrpc", ref, None, ["a", "b"])
    noise = [judge.margin_noise(x, profile, {"classifier/logits": 1.0}, None) for x in m]
    assert m[0].value <= noise[0] and m[1].value > noise[1]
    assert noise[0] == pytest.approx(2 * (1e-5 + 3e-5 * 1.0) + 1e-5 * (0.5 + 0.5 + 1e-7), rel=1e-6)
    # the candidate's own measured rounding widens it (rounding_k x rounding per logit)
    assert judge.margin_noise(m[0], profile, {"classifier/logits": 1.0}, 1e-3) > noise[0] + 2 * 8 * 1e-3 - 1e-9


def test_the_lossy_rule_is_a_ratio_per_metric():
    passed = judge.judge_lossy({"accuracy": 0.8, "f1": 0.9}, {"accuracy": 0.795, "f1": 0.9}, 0.99, True)
    assert passed["verdict"] == "pass"
    failed = judge.judge_lossy({"accuracy": 0.8, "f1": 0.9}, {"accuracy": 0.78, "f1": 0.9}, 0.99, True)
    assert failed["verdict"] == "fail" and not failed["numbers"]["metrics"]["accuracy"]["passed"]
    assert judge.judge_lossy({"f1": 0.9}, {"f1": 0.9}, 0.99, False)["verdict"] == "fail"   # a NaN logit


def test_forms():
    assert not judge.form_of(None, "fp32", "fp32", None).lossy
    assert not judge.form_of("compile", "fp32", "fp32", None).lossy
    assert judge.form_of("int8-dynamic", "fp32", "fp32", None).lossy
    assert judge.form_of(None, "bf16", "bf16 (autocast)", None).lossy
    assert judge.form_of(None, "fp32", "fp32", "metadata bert_parity.quantize=int8").lossy


@pytest.mark.parametrize("id2label,order", [({"0": "LABEL_0", "1": "LABEL_1"}, None),
                                            ({"0": "1", "1": "0"}, [1, 0]),
                                            ({"0": "not_equivalent", "1": "equivalent"}, None),
                                            ({"0": "equivalent", "1": "not_equivalent"}, [1, 0])])
def test_hf_label_columns(tmp_path, id2label, order):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": id2label}), encoding="utf-8")
    assert hf_label_columns(str(tmp_path), "hf:x") == (order, None)
    assert len(MRPC_LABELS) == 2


def test_logits_outside_the_rounding_noise_fail_the_exact_rule():
    from parity.numerics.metrics import get_profile
    profile = get_profile(judge.NOISE_PROFILE)
    ref = {"classifier/logits": np.array([[0.5, -0.5], [1.0, -1.0]], np.float32)}
    magnitude = {"classifier/logits": 1.0}
    near = {"classifier/logits": ref["classifier/logits"] + np.float32(1e-6)}
    ratio, _ = judge.logit_excess(ref, near, profile, magnitude)
    assert (ratio < 1).all()
    off = {"classifier/logits": ref["classifier/logits"] + np.array([[0, 0], [0, 1e-3]], np.float32)}
    ratio, where = judge.logit_excess(ref, off, profile, magnitude)
    assert ratio[0] < 1 < ratio[1] and where[1]["position"] == 1
    assert where[1]["difference"] == pytest.approx(1e-3, rel=1e-4)
    # the candidate's own measured float32 rounding widens that row's noise (rounding_k x rounding)
    assert judge.logit_excess(ref, off, profile, magnitude, {1: 1e-3})[0][1] < 1
    metrics = {"accuracy": 1.0, "f1": 1.0}
    outside = {"examples": 1, "rows": 1, "worst": where[1]}
    assert judge.judge_exact([], metrics, metrics, True, "", outside)["verdict"] == "fail"
    assert judge.judge_exact([], metrics, metrics, True, "")["verdict"] == "pass"


def test_int8_grids_are_recognised_and_float_tensors_are_not():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 32)).astype(np.float32) * 0.05
    assert judge.int8_grid(w) is None
    scale = np.abs(w).max() / 127
    assert "per tensor" in judge.int8_grid(np.round(w / scale) * scale)
    rows = np.abs(w).max(axis=1, keepdims=True) / 127
    assert "per row" in judge.int8_grid(np.round(w / rows) * rows)
    lo, step = w.min(), (w.max() - w.min()) / 255
    assert "asymmetric" in judge.int8_grid(lo + np.round((w - lo) / step) * step)
    tf_w = {"embeddings.word_embeddings.weight": w, "pooler.dense.weight": w[:32]}
    pt_w = {"embeddings.word_embeddings.weight": (np.round(w / scale) * scale).astype(np.float32),
            "pooler.dense.weight": w[:32]}
    hints = judge.weights_hints(tf_w, pt_w)
    assert [h["cause"] for h in hints] == ["quantized_embeddings"] and "8-bit levels" in hints[0]["evidence"]
    assert judge.weights_hints(tf_w, dict(tf_w)) == []
