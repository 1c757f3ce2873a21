"""The converter: the name map, both directions, strictness, and file formats (no TensorFlow needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from bert_torch import BertConfig
from bert_torch.convert import file_to_tf_name, main, tf_to_file_name, tf_to_torch, torch_to_tf
from bert_torch.tf_checkpoint import read_checkpoint, write_checkpoint
from bert_torch.weights import WeightsError, build_model, expected_shapes, load_model, model_tensors, read_weights

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)


@pytest.mark.parametrize("head", [None, "classifier", "squad", "pretraining"])
def test_name_map_is_a_bijection_over_every_model_name(head):
    names = list(expected_shapes(CONFIG, head, 3))
    tf_names = [file_to_tf_name(n)[0] for n in names]
    assert len(set(tf_names)) == len(names)
    for name, tf_name in zip(names, tf_names):
        assert tf_to_file_name(tf_name)[0] == name
        assert tf_name.startswith(("bert/", "cls/", "output_"))


def test_official_names_map_to_hf_names():
    assert tf_to_file_name("bert/encoder/layer_11/attention/self/query/kernel") == \
        ("encoder.layer.11.attention.self.query.weight", True)
    assert tf_to_file_name("bert/embeddings/LayerNorm/gamma") == ("embeddings.LayerNorm.weight", False)
    assert tf_to_file_name("bert/embeddings/word_embeddings") == ("embeddings.word_embeddings.weight", False)
    assert tf_to_file_name("cls/squad/output_weights") == ("qa_outputs.weight", False)
    assert tf_to_file_name("cls/predictions/transform/LayerNorm/beta") == \
        ("cls.predictions.transform.LayerNorm.bias", False)
    assert tf_to_file_name("optimizer/thing") == (None, False)


def tf_vars_of(model, extra=None) -> dict:
    out = torch_to_tf(model_tensors(model), model.config)
    out.update(extra or {})
    return out


def test_round_trip_is_bit_exact_and_counts_optimizer_slots():
    torch.manual_seed(0)
    model = build_model(CONFIG, "pretraining")
    tf_vars = tf_vars_of(model)
    assert tf_vars["bert/encoder/layer_1/intermediate/dense/kernel"].shape == (16, 24)   # [in, out]
    slots = {f"{n}/adam_m": v for n, v in tf_vars.items()} | {f"{n}/adam_v": v for n, v in tf_vars.items()}
    back, summary = tf_to_torch({**tf_vars, **slots, "global_step": np.int64(7)}, CONFIG)
    assert summary.mapped == len(tf_vars) and summary.skipped == {"adam_m": len(tf_vars), "adam_v": len(tf_vars),
                                                                  "global_step": 1}
    assert str(summary).startswith(f"mapped {len(tf_vars)} variables; skipped {2 * len(tf_vars) + 1} optimizer slots")
    original = model_tensors(model)
    assert back.keys() == original.keys()
    assert all(np.array_equal(back[k], original[k]) for k in back)


def test_unknown_missing_and_misshapen_variables_are_each_named():
    model = build_model(CONFIG)
    tf_vars = tf_vars_of(model, {"bert/encoder/layer_0/attention/self/rotary": np.zeros(3, np.float32)})
    del tf_vars["bert/pooler/dense/bias"]
    tf_vars["bert/encoder/layer_1/output/dense/bias"] = np.zeros(17, np.float32)
    with pytest.raises(WeightsError) as e:
        tf_to_torch(tf_vars, CONFIG, where="ck")
    assert sorted(e.value.problems) == sorted([
        "ck: missing bert/pooler/dense/bias (expected shape [16])",
        "ck: bert/encoder/layer_1/output/dense/bias has shape [17], the config expects [16]",
        "ck: unmapped bert/encoder/layer_0/attention/self/rotary [3]: not part of a BERT of this config",
    ])


def test_converted_file_loads_into_transformers_strictly(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    write_checkpoint(str(tmp_path / "ck" / "bert_model.ckpt"), tf_vars_of(build_model(CONFIG, "pretraining")))
    CONFIG.to_json_file(str(tmp_path / "ck" / "bert_config.json"))
    out = tmp_path / "body.safetensors"
    assert main(["--tf-checkpoint", str(tmp_path / "ck"), "--output", str(out), "--body-only"]) == 0
    hf = transformers.BertModel(transformers.BertConfig(**{k: v for k, v in CONFIG.to_dict().items()}))
    state = {k: torch.from_numpy(v) for k, v in load_file(str(out)).items()}
    hf.load_state_dict(state, strict=True)   # raises on any missing or unexpected key
    # Without --body-only the heads come along, under transformers' head names.
    full = tmp_path / "full.safetensors"
    assert main(["--tf-checkpoint", str(tmp_path / "ck"), "--output", str(full)]) == 0
    heads = set(load_file(str(full))) - set(state)
    pre = transformers.BertForPreTraining(hf.config)
    assert heads and heads <= {k for k in pre.state_dict()}


def test_pt_to_tf_to_pt_and_bin_files(tmp_path, capsys):
    torch.manual_seed(2)
    model = build_model(CONFIG, "classifier", num_labels=3)
    bin_path = tmp_path / "w.bin"
    # An HF task-model file: body under "bert.", plus buffers we must ignore.
    state = {("bert." + k if not k.startswith("classifier") else k): torch.from_numpy(v)
             for k, v in model_tensors(model).items()}
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    torch.save(state, bin_path)
    cfg = tmp_path / "bert_config.json"
    CONFIG.to_json_file(str(cfg))
    assert main(["--to-tf", "--torch-weights", str(bin_path), "--bert-config", str(cfg),
                 "--output", str(tmp_path / "tf" / "bert_model.ckpt")]) == 0
    tf_vars = read_checkpoint(str(tmp_path / "tf" / "bert_model.ckpt"))
    assert tf_vars["output_weights"].shape == (3, 16)   # the official classifier layout: [labels, hidden]
    assert main(["--tf-checkpoint", str(tmp_path / "tf"), "--output", str(tmp_path / "back.bin")]) == 0
    back = load_model(str(tmp_path / "back.bin"), CONFIG)
    assert type(back).__name__ == "BertForSequenceClassification" and back.num_labels == 3
    for k, v in model_tensors(back).items():
        assert np.array_equal(v, model_tensors(model)[k]), k


def test_bin_files_are_never_unpickled_as_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.bin"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="evil.bin: unreadable"):
        read_weights(str(path))


def test_cli_errors_are_one_line_each(tmp_path, capsys):
    torch.manual_seed(3)
    tensors = model_tensors(build_model(CONFIG))
    del tensors["pooler.dense.weight"]
    tensors["encoder.layer.0.output.dense.bias"] = np.zeros(5, np.float32)
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    cfg = tmp_path / "c.json"
    CONFIG.to_json_file(str(cfg))
    code = main(["--to-tf", "--torch-weights", str(path), "--bert-config", str(cfg), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert any("missing pooler.dense.weight" in line for line in err)
    assert any("encoder.layer.0.output.dense.bias has shape [5]" in line for line in err)
    assert main(["--to-tf", "--torch-weights", str(tmp_path / "nope.safetensors"), "--bert-config", str(cfg),
                 "--output", str(tmp_path / "o")]) == 2
    assert "argument --torch-weights" in (err := capsys.readouterr().err) and "nope.safetensors: no such file" in err
