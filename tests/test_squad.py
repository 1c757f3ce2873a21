"""bert_torch.squad: SQuAD v1.1 examples, doc_stride features, write_predictions and EM/F1, against the
official run_squad on committed samples (parity/data/squad_finetune*_sample.json)."""
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from bert_torch import squad  # noqa: E402
from parity.finetune import features as finetune_features
from parity.minilm import minilm_dir  # noqa: E402

VOCAB = os.path.join(minilm_dir(), "vocab.txt")


@pytest.mark.parametrize("seq,stride", [(384, 128), (96, 32)])   # 96/32: many doc_stride windows per context
def test_eval_features_identical_to_official(seq, stride):
    r = finetune_features.squad_feature_check(finetune_features.squad_features(finetune_features.SQUAD_SAMPLE, VOCAB, False, seq, stride, 64))
    assert r["verdict"] == "pass", r["mismatches"]
    assert r["examples"] == 55
    if seq == 96:
        assert r["features"] > 2 * r["examples"]   # windows really slid


def test_training_features_identical_to_official():
    built = finetune_features.squad_features(finetune_features.SQUAD_TRAIN_SAMPLE, VOCAB, True, 96, 32, 24)
    r = finetune_features.squad_feature_check(built)
    assert r["verdict"] == "pass", r["mismatches"]
    ex, feats = built.examples, built.features
    assert any(f.start_position == 0 for f in feats) and any(f.start_position > 0 for f in feats)
    assert all(e.orig_answer_text for e in ex)


def test_feature_check_catches_wrong_stride():
    """A planted fault: our side with doc_stride 33 against the official 32."""
    ref = finetune_features.squad_features(finetune_features.SQUAD_SAMPLE, VOCAB, False, 96, 32, 64)
    from bert_torch.tokenization import FullTokenizer
    mine = squad.convert_examples_to_features(ref.examples, FullTokenizer(VOCAB), 96, 33, 64, False)
    assert [f.input_ids for f in mine] != [f.input_ids for f in ref.ref_features]


@pytest.fixture(scope="module")
def windows():
    return finetune_features.squad_features(finetune_features.SQUAD_SAMPLE, VOCAB, False, 96, 32, 64)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_write_predictions_identical_to_official(windows, seed):
    """Same random logits in, same answers and n-best lists (texts, probabilities) out."""
    r = finetune_features.squad_predictions_check(windows, finetune_features.random_results(windows.features, seed))
    assert r["verdict"] == "pass", r["differences"]


def test_get_final_text_projects_to_original():
    assert squad.get_final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
    assert squad.get_final_text("1895", "(1895-1943).", True) == "1895"
    assert squad.get_final_text("xyz", "Steve Smith's", True) == "Steve Smith's"   # not found: whole text


def test_em_f1_as_official_v11_script():
    assert squad.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad.exact_match_score("the Denver Broncos", "Denver Broncos.")
    assert squad.f1_score("Denver Broncos team", "Denver Broncos") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert squad.f1_score("a", "the") == 0.0
    data = [{"paragraphs": [{"qas": [{"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "Broncos"}]},
                                     {"id": "q2", "answers": [{"text": "Santa Clara"}]}]}]}]
    m = squad.evaluate(data, {"q1": "broncos", "q2": "Levi's Stadium"})
    assert m["exact_match"] == pytest.approx(50.0) and m["f1"] == pytest.approx(50.0)
    m = squad.evaluate(data, {"q1": "the Denver Broncos"})
    assert m["exact_match"] == pytest.approx(50.0) and m["unanswered"] == 1


def test_bad_input_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(squad.SquadError, match="bad.json: not a SQuAD json file"):
        squad.read_squad_examples(str(bad), False)
    with pytest.raises(squad.SquadError, match="max_seq_length 60 must exceed"):
        squad.convert_examples_to_features([], None, 60, 32, 64, False)
    multi = tmp_path / "multi.json"
    multi.write_text(json.dumps({"data": [{"paragraphs": [{"context": "a b", "qas": [
        {"id": "q", "question": "?", "answers": [{"text": "a", "answer_start": 0}] * 2}]}]}]}), encoding="utf-8")
    with pytest.raises(squad.SquadError, match="question q has 2 answers"):
        squad.read_squad_examples(str(multi), True)


@pytest.mark.heavy
def test_run_squad_trains_and_predicts(tmp_path, capsys):
    import torch
    from bert_torch import run_squad
    from bert_torch.modeling import BertConfig, BertModel
    from bert_torch.weights import model_tensors, write_weights
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, type_vocab_size=2)
    config.to_json_file(str(tmp_path / "bert_config.json"))
    write_weights(str(tmp_path / "w.safetensors"), model_tensors(BertModel(config)))
    out = tmp_path / "out"
    code = run_squad.main(["--do_train", "--do_predict", "--do_lower_case", "--train_file", finetune_features.SQUAD_TRAIN_SAMPLE,
                           "--predict_file", finetune_features.SQUAD_SAMPLE, "--vocab_file", VOCAB,
                           "--bert_config_file", str(tmp_path / "bert_config.json"),
                           "--init_checkpoint", str(tmp_path / "w.safetensors"), "--max_seq_length", "96",
                           "--doc_stride", "32", "--max_query_length", "24", "--train_batch_size", "8",
                           "--num_train_epochs", "1", "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "predict [" in err
    predictions = json.loads((out / "predictions.json").read_text())
    data = json.load(open(finetune_features.SQUAD_SAMPLE))["data"]
    assert set(predictions) == {qa["id"] for p in data[0]["paragraphs"] for qa in p["qas"]}
    results = dict(line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines())
    assert float(results["exact_match"]) == pytest.approx(squad.evaluate(data, predictions)["exact_match"])
    log = json.loads((out / "train_log.json").read_text())   # the runners' shared per-step record
    assert len(log["step_losses"]) == len(log["step_examples"]) == log["steps"] == int(results["train_steps"])
    assert log["dropout"] == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}   # the config's
    code = run_squad.main(["--do_predict", "--vocab_file", VOCAB, "--bert_config_file", str(tmp_path / "bert_config.json"),
                           "--output_dir", str(out), "--max_seq_length", "60"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
