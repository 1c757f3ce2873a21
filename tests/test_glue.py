"""bert_torch.glue: MRPC reading, features and metrics (feature parity with the official code is in
parity/test_finetune.py)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bert_torch import glue
from parity.inputs import SAMPLE


class WordTokenizer:
    """A stand-in tokenizer: whitespace words, ids = word lengths."""

    def tokenize(self, text):
        return text.split()

    def convert_tokens_to_ids(self, tokens):
        return [len(t) for t in tokens]


@settings(max_examples=50, deadline=None)
@given(a=st.integers(0, 40), b=st.integers(0, 40), n=st.integers(0, 50))
def test_truncate_seq_pair_official_rule(a, b, n):
    ta, tb = list(range(a)), list(range(100, 100 + b))
    glue.truncate_seq_pair(ta, tb, n)
    assert len(ta) + len(tb) == min(a + b, n)
    assert ta == list(range(len(ta))) and tb == list(range(100, 100 + len(tb)))   # cut from the end
    if a + b > n:   # the longer side is cut first, b on ties: a keeps the larger half
        assert len(ta) == min(a, max(n - b, (n + 1) // 2))


def test_feature_layout():
    ex = glue.InputExample("dev-1", "aa bbb c", "dddd ee", "1")
    f = glue.convert_single_example(ex, ["0", "1"], 10, WordTokenizer())
    assert f.input_ids == [5, 2, 3, 1, 5, 4, 2, 5, 0, 0]   # [CLS]=5 letters, [SEP]=5
    assert f.segment_ids == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert f.input_mask == [1] * 8 + [0, 0] and f.label_id == 1
    with pytest.raises(glue.DataError, match="label '2'"):
        glue.convert_single_example(glue.InputExample("x", "a", "b", "2"), ["0", "1"], 10, WordTokenizer())


def test_processor_reads_sample(tmp_path):
    import shutil
    shutil.copyfile(SAMPLE, tmp_path / "dev.tsv")
    ex = glue.MrpcProcessor().get_dev_examples(str(tmp_path))
    assert len(ex) == 64 and ex[0].guid == "dev-1" and ex[0].label in ("0", "1")
    (tmp_path / "train.tsv").write_text("h\th\th\th\th\n1\t2\t3\tonly four\n", encoding="utf-8")
    with pytest.raises(glue.DataError, match=r"train.tsv row 1: 4 columns"):
        glue.MrpcProcessor().get_train_examples(str(tmp_path))
    with pytest.raises(glue.DataError, match="cannot read"):
        glue.MrpcProcessor().get_test_examples(str(tmp_path))


def test_accuracy_and_f1():
    m = glue.accuracy_and_f1([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))   # tp 2, fp 1, fn 1
    assert glue.accuracy_and_f1([0, 0], [0, 0])["f1"] == 0.0


# ---- the command-line runners (tiny random model: these test plumbing, exit codes and outputs;
# training parity itself is parity/test_finetune.py) ----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from bert_torch.modeling import BertConfig, BertModel
    from bert_torch.weights import model_tensors, write_weights
    from parity.minilm import minilm_dir
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, type_vocab_size=2)
    config.to_json_file(str(d / "bert_config.json"))
    write_weights(str(d / "w.safetensors"), model_tensors(BertModel(config)))
    import shutil
    for split in ("train", "dev"):
        shutil.copyfile(SAMPLE, d / f"{split}.tsv")
    import os
    return {"dir": str(d), "config": str(d / "bert_config.json"), "weights": str(d / "w.safetensors"),
            "vocab": os.path.join(minilm_dir(), "vocab.txt")}


def test_run_classifier_trains_and_evaluates(tiny, tmp_path, capsys):
    from bert_torch import run_classifier
    from bert_torch.weights import read_weights
    out = tmp_path / "out"
    code = run_classifier.main(["--task_name", "MRPC", "--do_train", "--do_eval", "--do_lower_case",
                                "--data_dir", tiny["dir"], "--vocab_file", tiny["vocab"],
                                "--bert_config_file", tiny["config"], "--init_checkpoint", tiny["weights"],
                                "--max_seq_length", "32", "--train_batch_size", "16",
                                "--gradient_accumulation_steps", "2", "--num_train_epochs", "1.5",
                                "--learning_rate", "1e-3", "--output_dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "train [" in captured.err and "eval [" in captured.err            # the progress bars
    results = dict(line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines())
    assert int(results["train_steps"]) == int(64 / 16 * 1.5) == 6           # the official count
    assert 0.0 <= float(results["eval_accuracy"]) <= 1.0 and int(results["eval_examples"]) == 64
    trained = read_weights(str(out / "pytorch_model.safetensors"))
    assert "classifier.weight" in trained
    start = read_weights(tiny["weights"])
    assert not np.array_equal(trained["pooler.dense.weight"], start["pooler.dense.weight"])   # it trained


@pytest.mark.heavy
def test_run_classifier_no_dropout_trains_deterministically_and_logs_each_step(tiny, tmp_path):
    """--no_dropout: the run is a function of the seed and the data; one pass per step or accumulation 4 use
    the same examples per step and give the same losses and dev logits (float32 summation order apart);
    train_log.json records each step; with the config's dropout (the default) two accumulations differ."""
    import json
    from bert_torch import run_classifier

    def run(out, *extra):
        code = run_classifier.main(["--do_train", "--do_eval", "--do_lower_case", "--data_dir", tiny["dir"],
                                    "--vocab_file", tiny["vocab"], "--bert_config_file", tiny["config"],
                                    "--init_checkpoint", tiny["weights"], "--max_seq_length", "32",
                                    "--train_batch_size", "16", "--num_train_epochs", "1", "--learning_rate", "1e-3",
                                    "--seed", "7", "--no_progress", "--output_dir", str(tmp_path / out), *extra])
        assert code == 0
        return (json.loads((tmp_path / out / "train_log.json").read_text()),
                np.load(tmp_path / out / "eval_logits.npy"))

    (a, la), (b, lb) = run("a", "--no_dropout"), run("b", "--no_dropout", "--gradient_accumulation_steps", "4")
    assert a["steps"] == b["steps"] == 4 and a["dropout"] == {"hidden_dropout_prob": 0.0,
                                                               "attention_probs_dropout_prob": 0.0}
    assert (a["gradient_accumulation_steps"], b["gradient_accumulation_steps"], a["processes"]) == (1, 4, 1)
    assert a["step_examples"] == b["step_examples"] and all(len(e) == 16 for e in a["step_examples"])
    assert sorted(sum(a["step_examples"], [])) == list(range(64))   # one epoch: every example once
    assert b["step_losses"] == pytest.approx(a["step_losses"], rel=1e-5) and a["step_lrs"] == b["step_lrs"]
    assert lb == pytest.approx(la, abs=1e-4) and la.shape == (64, 2)
    saved = json.loads((tmp_path / "a" / "bert_config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.0   # the config trained with
    (c, _), (d, _) = run("c"), run("d", "--gradient_accumulation_steps", "4")   # dropout 0.1: masks differ
    assert c["dropout"]["hidden_dropout_prob"] == 0.1 and c["step_examples"] == a["step_examples"]
    assert c["step_losses"][1:] != pytest.approx(d["step_losses"][1:], rel=1e-5)


@pytest.mark.parametrize("extra,message", [
    (["--hidden_dropout_prob", "1.5"], "--hidden_dropout_prob: 1.5 is out of range: must be >= 0 and < 1"),
    (["--hidden_dropout_prob", "1"], "--hidden_dropout_prob: 1 is out of range: must be >= 0 and < 1"),
    (["--no_dropout", "--attention_probs_dropout_prob", "0.1"], "--no_dropout with --attention_probs_dropout_prob"),
    (["--gradient_accumulation_steps", "3"], "multiple of --gradient_accumulation_steps"),
    (["--max_seq_length", "1000"], "exceeds max_position_embeddings"),
    (["--task_name", "cola"], "supported tasks"),
    (["--init_checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--fp16", "--bf16"], "choose one"),
    (["--fp16", "--optimize_on_cpu"], "--fp16 with --optimize_on_cpu"),
])
def test_run_classifier_bad_input_exit_2(tiny, tmp_path, capsys, extra, message):
    from bert_torch import run_classifier
    code = run_classifier.main(["--do_eval", "--data_dir", tiny["dir"], "--vocab_file", tiny["vocab"],
                                "--bert_config_file", tiny["config"], "--output_dir", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_extract_features_matches_model(tiny, tmp_path):
    import json
    import torch
    from bert_torch import extract_features
    from bert_torch.tokenization import FullTokenizer
    from bert_torch.weights import load_model
    from bert_torch.modeling import BertConfig
    (tmp_path / "in.txt").write_text("Hello world ||| A second sentence.\nJust one.\n", encoding="utf-8")
    out = tmp_path / "f.jsonl"
    assert extract_features.main(["--input_file", str(tmp_path / "in.txt"), "--output_file", str(out),
                                  "--vocab_file", tiny["vocab"], "--bert_config_file", tiny["config"],
                                  "--init_checkpoint", tiny["weights"], "--layers=-1,-2", "--max_seq_length", "16",
                                  "--do_lower_case", "--no_progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["linex_index"] for r in rows] == [0, 1]
    assert [f["token"] for f in rows[1]["features"]] == ["[CLS]", "just", "one", ".", "[SEP]"]
    model = load_model(tiny["weights"], BertConfig.from_json_file(tiny["config"]))
    ids = FullTokenizer(tiny["vocab"]).convert_tokens_to_ids(["[CLS]", "just", "one", ".", "[SEP]"])
    with torch.no_grad():
        layers, _ = model(torch.tensor([ids]))
    got = np.array([f["layers"][1]["values"] for f in rows[1]["features"]])   # index -2
    assert got == pytest.approx(layers[-2][0].numpy(), abs=1e-6)   # unpadded == padded-and-masked
