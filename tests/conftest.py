"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest
import torch

from bert_torch import BertConfig
from bert_torch.convert import main as convert_main
from bert_torch.weights import build_model, model_tensors, write_weights

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> dict:
    """A random 2-layer model: its safetensors file, and an official-format TF checkpoint of it (written by
    ``bert_torch.convert --to-tf``, no TensorFlow) with bert_config.json and a 40-token WordPiece vocab."""
    d = tmp_path_factory.mktemp("tiny-ckpt")
    torch.manual_seed(0)
    model = build_model(TINY, None)
    weights = str(d / "model.safetensors")
    write_weights(weights, model_tensors(model))
    TINY.to_json_file(str(d / "bert_config.json"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += [f"##{c}" for c in "aeiostn"] + ["the", "."]
    assert len(words) == TINY.vocab_size
    (d / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    prefix = str(d / "bert_model.ckpt")
    assert convert_main(["--to-tf", "--torch-weights", weights, "--bert-config", str(d / "bert_config.json"),
                         "--output", prefix]) == 0
    return {"dir": str(d), "prefix": prefix, "weights": weights, "config": str(d / "bert_config.json"),
            "tensors": model_tensors(model), "num_layers": TINY.num_hidden_layers}
