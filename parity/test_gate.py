"""The release gate: PyTorch against Google's official graph, every tap, real and random weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bert_torch.taps import tap_names
from parity.checkpoints import CONFIGS, SEQ   # the configurations, shared with the release report
from parity.compare.schema import check_json_file


def assert_all_taps_pass(run, num_layers: int, head=None):
    assert run.code == 0, run.out
    names = [t["name"] for t in run.report["taps"]]
    assert names == tap_names(num_layers, head)
    for t in run.report["taps"]:
        assert t["passed"] and t["max_abs"] is not None, t
        assert t["cosine"] is not None and t["cosine"] > 0.99999, t
    assert run.report["verdict"] == "pass" and run.report["first_divergence"] is None


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.heavy) if n == "bert-base-2layer" else n
                                  for n in sorted(CONFIGS)])   # BERT-base width: seconds, the heavy tier
def test_random_checkpoints_pass(name, random_checkpoint, compare):
    cfg = dict(CONFIGS[name], hidden_act="gelu")
    ck = random_checkpoint(cfg, perturb=0.02)
    run = compare(ck["dir"], ck["torch_weights"], "--batch-size", "4", "--seq-len", str(SEQ[name]))
    assert_all_taps_pass(run, cfg["num_hidden_layers"])
    assert run.report["inputs"]["padding_positions"] > 0
    # Real signal, not zeros: the last layer of a perturbed random model is far from constant.
    assert run.tap(f"layer_{cfg['num_hidden_layers'] - 1}/output")["shape"] == [4, SEQ[name], cfg["hidden_size"]]


@pytest.mark.parametrize("head,num_labels", [("classifier", 3), ("squad", 2)])
def test_task_heads_pass(head, num_labels, random_checkpoint, compare):
    cfg = dict(CONFIGS["tiny-1layer"], num_hidden_layers=2)
    ck = random_checkpoint(cfg, head=head, num_labels=num_labels, perturb=0.02)
    run = compare(ck["dir"], ck["torch_weights"], "--batch-size", "3", "--seq-len", "20")
    assert_all_taps_pass(run, 2, head)
    shapes = {t["name"]: t["shape"] for t in run.report["taps"]}
    if head == "classifier":
        assert shapes["classifier/logits"] == [3, num_labels]
    else:
        assert shapes["squad/start_logits"] == shapes["squad/end_logits"] == [3, 20]


def test_pretraining_checkpoint_with_optimizer_state(random_checkpoint, compare, capsys):
    """A checkpoint as Google ships one: cls/ heads and Adam slots. Slots are skipped and counted."""
    cfg = dict(CONFIGS["tiny-1layer"])
    ck = random_checkpoint(cfg, pretraining_heads=True, optimizer_slots=True, perturb=0.02)
    from bert_torch import convert
    out = ck["dir"] + "/again.safetensors"
    assert convert.main(["--tf-checkpoint", ck["dir"], "--output", out]) == 0
    summary = capsys.readouterr().out
    names = load_file(out)
    heads = [n for n in names if n.startswith("cls.")]
    assert sorted(heads) == ["cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
                             "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias",
                             "cls.predictions.transform.dense.weight", "cls.seq_relationship.bias",
                             "cls.seq_relationship.weight"]
    n_mapped = len(names)
    assert f"mapped {n_mapped} variables; skipped {2 * n_mapped + 1} optimizer slots" in summary, summary
    run = compare(ck["dir"], out, "--batch-size", "2", "--seq-len", "16")
    assert_all_taps_pass(run, 1)


@pytest.fixture(scope="module")
def minilm_run(minilm, tmp_path_factory):
    from parity import frontdoor
    report_dir = tmp_path_factory.mktemp("minilm-report")
    code = frontdoor.main(["compare", "--tf-checkpoint", minilm["dir"], "--torch-weights", minilm["torch_weights"],
                     "--report-dir", str(report_dir), "--batch-size", "8", "--seq-len", "128"])
    return code, check_json_file(str(report_dir / "report.json"), "report")


def test_real_minilm_weights_match_the_official_graph(minilm_run):
    """Real pretrained weights, batch 8 x 128, padded rows, two segments, fp32 CPU."""
    code, report = minilm_run
    assert code == 0 and report["verdict"] == "pass"
    taps = {t["name"]: t for t in report["taps"]}
    assert len(taps) == 5 + 11 * 6 + 1
    for i in range(6):
        assert taps[f"layer_{i}/output"]["max_abs"] < 2e-5, taps[f"layer_{i}/output"]
    assert taps["pooler/output"]["max_abs"] < 2e-6
    # The lookups are exact: same table, same ids, no arithmetic.
    for name in ("embeddings/word_embeddings", "embeddings/token_type_embeddings", "embeddings/position_embeddings"):
        assert taps[name]["max_abs"] == 0.0
    inputs = report["inputs"]
    assert inputs["rows_with_padding"] == 7 and inputs["padding_positions"] > 0
    env = report["environment"]
    assert env["bert_tensorflow"] == "1.0.4" and len(env["sha256"]["tf_checkpoint.data"]) == 64


@pytest.mark.heavy
def test_erf_gelu_on_both_sides_also_matches(minilm, compare, tmp_path):
    """hidden_act=gelu_erf: the TF side swaps only the activation for erf, and says so."""
    cfg = json.load(open(minilm["bert_config"]))
    cfg["hidden_act"] = "gelu_erf"
    path = tmp_path / "erf_config.json"
    path.write_text(json.dumps(cfg))
    run = compare(minilm["dir"], minilm["torch_weights"], "--bert-config", str(path), "--vocab-file",
                  minilm["vocab"], "--batch-size", "2", "--seq-len", "64")
    assert run.code == 0, run.out
    assert "erf" in run.report["sides"]["reference"]
    assert run.tap("pooler/output")["max_abs"] < 2e-6


def _mutated(src: str, dst, mutate) -> str:
    tensors = load_file(src)
    tensors.pop("embeddings.position_ids", None)
    mutate(tensors)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst))
    return str(dst)


def _swap(a: str, b: str):
    def mutate(t):
        t[a], t[b] = t[b].copy(), t[a].copy()
    return mutate


def _transpose(name: str):
    def mutate(t):
        t[name] = t[name].T.copy()
    return mutate


def _shift_positions(t):
    t["embeddings.position_embeddings.weight"] = np.roll(t["embeddings.position_embeddings.weight"], -2, axis=0)


# Conversion faults a port really makes, and the tap where each must first show.
FAULTS = {
    "swapped query/key kernels": (_swap("encoder.layer.2.attention.self.query.weight",
                                        "encoder.layer.2.attention.self.key.weight"), "layer_2/attention/query"),
    "transposed attention output kernel": (_transpose("encoder.layer.1.attention.output.dense.weight"),
                                           "layer_1/attention/dense"),
    "swapped LayerNorm gamma/beta": (_swap("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"),
                                     "embeddings/output"),
    "transposed value kernel": (_transpose("encoder.layer.4.attention.self.value.weight"), "layer_4/attention/value"),
    "swapped token type rows": (lambda t: t["embeddings.token_type_embeddings.weight"].__setitem__(
        slice(None), t["embeddings.token_type_embeddings.weight"][::-1].copy()), "embeddings/token_type_embeddings"),
    "position embedding offset of 2": (_shift_positions, "embeddings/position_embeddings"),
    "transposed pooler kernel": (_transpose("pooler.dense.weight"), "pooler/output"),
}


# `make test` keeps one fault of each kind (swapped, transposed, shifted); the rest are the heavy tier's.
@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.heavy) if f in (
    "transposed pooler kernel", "transposed value kernel", "swapped token type rows") else f for f in sorted(FAULTS)])
def test_conversion_faults_fail_at_the_right_tap(fault, minilm, minilm_golden, compare, tmp_path):
    """Against the official graph's recorded taps (conftest's minilm_golden: one TF run for the seven faults,
    replayed bit for bit); the erf port below is judged live."""
    mutate, expected = FAULTS[fault]
    weights = _mutated(minilm["torch_weights"], tmp_path / "bad.safetensors", mutate)
    run = compare(minilm_golden, weights, golden=True)
    assert run.code == 1, run.out
    assert run.report["verdict"] == "fail"
    assert run.report["first_divergence"] == expected
    failing = run.tap(expected)
    assert not failing["passed"] and failing["reason"] and failing["max_abs"] > failing["atol"]
    # Everything upstream of the fault still passes: the report localises it.
    names = [t["name"] for t in run.report["taps"]]
    assert all(t["passed"] for t in run.report["taps"][: names.index(expected)])


def test_erf_port_against_the_tanh_graph_fails_at_the_activation(minilm, compare, tmp_path):
    cfg = json.load(open(minilm["bert_config"]))
    cfg["hidden_act"] = "gelu_erf"
    path = tmp_path / "erf.json"
    path.write_text(json.dumps(cfg))
    run = compare(minilm["dir"], minilm["torch_weights"], "--torch-bert-config", str(path),
                  "--batch-size", "2", "--seq-len", "32")
    assert run.code == 1
    assert run.report["first_divergence"] == "layer_0/intermediate"
    assert "erf" not in run.report["sides"]["reference"] and "gelu_erf" in run.report["sides"]["candidate"]
