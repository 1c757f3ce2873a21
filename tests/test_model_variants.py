"""BERT variants the official graph does not compute are bad input wherever a config is read: exit 2 and one
line naming the file, the field, its value and why, nothing written and no model run. bert_config.json is read
by every command through ``BertConfig``; an HF directory's config.json by ``--candidate hf:DIR`` and by
``convert --to-tf DIR``. Settings that change nothing computed stay accepted, and a chunked feed-forward layer
(the same function) is compared, run unchunked."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bert_torch import convert
from bert_torch.hf_dir import check_hf_config, read_hf_dir
from bert_torch.modeling import BertConfig
from bert_torch.tf_checkpoint import read_checkpoint
from parity.compare import command as cli
from parity import frontdoor
from parity.minilm import minilm_dir

OFFICIAL_EPS_AS_FLOAT32 = 9.999999960041972e-13   # 1e-12 rounded to float32, as a float32-minded writer saves it

# (field, value) of a variant in either vocabulary: bert_config.json and HF's config.json read these alike.
# Sizes against the tiny checkpoint's (tests/conftest.py TINY: hidden 16, 2 heads of 8).
VARIANTS = [
    ("position_embedding_type", "relative_key"), ("position_embedding_type", "relative_key_query"),
    ("position_embedding_type", None), ("position_embedding_type", "rotary"),
    ("is_decoder", True), ("add_cross_attention", True), ("is_encoder_decoder", True),
    ("layer_norm_eps", 1e-5), ("layer_norm_eps", 1e-6), ("layer_norm_eps", 0.0),
    ("model_type", "roberta"), ("model_type", "albert"), ("model_type", "distilbert"), ("model_type", "electra"),
    ("embedding_size", 8), ("num_hidden_groups", 1), ("head_dim", 4), ("num_key_value_heads", 1),
    ("pruned_heads", {"0": [1]}), ("rope_theta", 10000.0), ("attention_type", "block_sparse"),
    ("quantization_config", {"quant_method": "bitsandbytes", "load_in_8bit": True}),
    # Other BERT-family models' own fields: NEZHA, ERNIE, RemBERT, ConvBERT, and the epsilon spelled as GPT-2 does.
    ("use_relative_position", True), ("use_task_id", True),
    ("input_embedding_size", 8), ("output_embedding_size", 32), ("head_ratio", 2), ("conv_kernel_size", 9),
    ("num_groups", 2), ("layer_norm_epsilon", 1e-5),
]
# Activations neither the official graph nor bert_torch computes, in any vocabulary.
FOREIGN_ACTS = ["silu", "swish", "quick_gelu", "gelu_10", "mish", "relu6", "sigmoid"]

variants = (st.sampled_from(VARIANTS) | st.sampled_from(FOREIGN_ACTS).map(lambda a: ("hidden_act", a))
            | st.floats(1e-20, 1.0).filter(lambda e: np.float32(e) != np.float32(1e-12))   # another float32
            .map(lambda e: ("layer_norm_eps", e)))

# Keys that change nothing the official graph computes: HF's bookkeeping, Google's own notes (its Chinese and
# multilingual bert_config.json carry directionality and pooler_*), and variant fields at their official values.
HARMLESS = {
    "architectures": st.just(["BertModel"]), "transformers_version": st.sampled_from(["4.8.2", "5.25.0"]),
    "torch_dtype": st.sampled_from(["float32", "float16", "bfloat16"]), "dtype": st.just("float32"),
    "pad_token_id": st.integers(0, 3), "use_cache": st.booleans(), "classifier_dropout": st.sampled_from([None, 0.1]),
    "id2label": st.just({"0": "NEG", "1": "POS"}), "label2id": st.just({"NEG": 0, "POS": 1}),
    "gradient_checkpointing": st.booleans(), "output_attentions": st.booleans(),
    "output_hidden_states": st.booleans(), "return_dict": st.booleans(), "_name_or_path": st.text(max_size=8),
    "tie_word_embeddings": st.booleans(), "bos_token_id": st.none(), "eos_token_id": st.none(),
    "problem_type": st.none(), "tokenizer_class": st.just("BertTokenizer"),
    "directionality": st.just("bidi"), "pooler_fc_size": st.just(768), "pooler_num_fc_layers": st.just(3),
    "pooler_type": st.just("first_token_transform"),
    "model_type": st.just("bert"), "position_embedding_type": st.just("absolute"), "is_decoder": st.just(False),
    "add_cross_attention": st.just(False), "cross_attention_hidden_size": st.none(), "pruned_heads": st.just({}),
    "layer_norm_eps": st.sampled_from([1e-12, OFFICIAL_EPS_AS_FLOAT32]), "embedding_size": st.just(16),
    "chunk_size_feed_forward": st.integers(0, 64),
}
harmless = st.fixed_dictionaries({}, optional=HARMLESS)

SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def refused(code: int, err: str, where: str, field: str, value) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert where in lines[0] and f"{field} {value!r}" in lines[0], err
    assert "official" in lines[0] and "computes something else" in lines[0], err   # and why


@pytest.fixture(scope="module")
def hf_dir(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny checkpoint as a transformers directory (``convert --output-format hf``)."""
    out = str(tmp_path_factory.mktemp("variants") / "hf")
    assert convert.main(["--tf-checkpoint", tiny_checkpoint["dir"], "--output-format", "hf", "--output", out]) == 0
    return out


def hf_copy(hf_dir: str, root: str, **changes) -> str:
    """A copy of ``hf_dir`` whose config.json has ``changes``."""
    out = os.path.join(root, "hf")
    shutil.copytree(hf_dir, out)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    with open(path, "w") as f:
        json.dump({**cfg, **changes}, f)
    return out


# ---------------------------------------------------------------------------------------------
# bert_config.json: every command reads it through BertConfig.

@settings(max_examples=40, deadline=None, suppress_health_check=SUPPRESS)
@given(variant=variants)
def test_to_tf_refuses_a_bert_config_of_a_variant(tiny_checkpoint, capsys, variant):
    """``convert --to-tf`` writes no official checkpoint that would compute another model."""
    field, value = variant
    with tempfile.TemporaryDirectory() as root:
        config = os.path.join(root, "bert_config.json")
        with open(config, "w") as f:
            json.dump({**BertConfig.from_json_file(tiny_checkpoint["config"]).to_dict(), field: value}, f)
        capsys.readouterr()
        code = convert.main(["--to-tf", "--torch-weights", tiny_checkpoint["weights"], "--bert-config", config,
                             "--output", os.path.join(root, "out", "bert_model.ckpt")])
        refused(code, capsys.readouterr().err, config, field, value)
        assert not os.path.exists(os.path.join(root, "out"))


def test_a_decoder_with_cross_attention_is_refused_for_both(tiny_checkpoint, tmp_path, capsys):
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({**BertConfig.from_json_file(tiny_checkpoint["config"]).to_dict(),
                                  "is_decoder": True, "add_cross_attention": True}))
    code = convert.main(["--to-tf", "--torch-weights", tiny_checkpoint["weights"], "--bert-config", str(config),
                         "--output", str(tmp_path / "out" / "bert_model.ckpt")])
    err = capsys.readouterr().err
    refused(code, err, str(config), "is_decoder", True)
    assert "add_cross_attention True" in err and "causally" in err


def test_compare_refuses_a_bert_config_of_a_variant_before_any_model_runs(tiny_checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({**BertConfig.from_json_file(tiny_checkpoint["config"]).to_dict(),
                                  "position_embedding_type": "relative_key"}))
    monkeypatch.setattr(cli, "TFSide", None)   # reaching the reference at all would be exit 3, not 2
    code = frontdoor.main(["compare", "--tf-checkpoint", tiny_checkpoint["prefix"], "--bert-config", str(config),
                     "--torch-weights", tiny_checkpoint["weights"], "--seq-len", "16",
                     "--report-dir", str(tmp_path / "r")])
    refused(code, capsys.readouterr().err, str(config), "position_embedding_type", "relative_key")
    assert not (tmp_path / "r").exists()


@settings(max_examples=60, deadline=None)
@given(extra=harmless)
def test_harmless_keys_are_kept_and_change_nothing(extra):
    fields = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 24, "max_position_embeddings": 32, "type_vocab_size": 2}
    config = BertConfig.from_dict({**fields, **extra})
    assert config.extra == extra and BertConfig.from_dict(config.to_dict()) == config
    check_hf_config({**fields, "hidden_act": "gelu_new", **extra}, "config.json")


def test_to_tf_with_every_harmless_key(tiny_checkpoint, tmp_path):
    config = tmp_path / "bert_config.json"
    keys = {"architectures": ["BertModel"], "transformers_version": "4.8.2", "torch_dtype": "float16",
            "pad_token_id": 0, "use_cache": True, "classifier_dropout": None, "id2label": {"0": "NEG", "1": "POS"},
            "gradient_checkpointing": False, "output_hidden_states": True, "directionality": "bidi",
            "pooler_type": "first_token_transform", "model_type": "bert", "position_embedding_type": "absolute",
            "is_decoder": False, "add_cross_attention": False, "layer_norm_eps": 1e-12, "embedding_size": 16,
            "chunk_size_feed_forward": 8}
    config.write_text(json.dumps({**BertConfig.from_json_file(tiny_checkpoint["config"]).to_dict(), **keys}))
    out = tmp_path / "out" / "bert_model.ckpt"
    assert convert.main(["--to-tf", "--torch-weights", tiny_checkpoint["weights"], "--bert-config", str(config),
                         "--output", str(out)]) == 0
    a, b = read_checkpoint(tiny_checkpoint["prefix"]), read_checkpoint(str(out))
    assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)


def test_real_hf_config_json_still_loads():
    """all-MiniLM-L6-v2's config.json as transformers 4.8 saved it: position_embedding_type, layer_norm_eps,
    use_cache, gradient_checkpointing... all at their official meaning."""
    folder = minilm_dir()
    path = os.path.join(folder, "config.json")
    config = BertConfig.from_json_file(path)
    assert config.extra["position_embedding_type"] == "absolute" and config.extra["layer_norm_eps"] == 1e-12
    with open(path) as f:
        check_hf_config(json.load(f), path)
    tensors, hf_config = read_hf_dir(folder, lazy=True)
    assert hf_config.hidden_act == "gelu_erf" and "encoder.layer.5.output.dense.weight" in tensors


# ---------------------------------------------------------------------------------------------
# HF directories: --candidate hf:DIR and convert --to-tf DIR.

@settings(max_examples=25, deadline=None, suppress_health_check=SUPPRESS)
@given(variant=variants)
def test_hf_candidate_of_a_variant_is_refused_before_any_model_runs(tiny_checkpoint, hf_dir, capsys, monkeypatch,
                                                                    variant):
    transformers = pytest.importorskip("transformers")
    field, value = variant

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "TFSide", never)
    monkeypatch.setattr(transformers.BertModel, "from_pretrained", never)
    with tempfile.TemporaryDirectory() as root:
        candidate = hf_copy(hf_dir, root, **{field: value})
        capsys.readouterr()
        code = frontdoor.main(["compare", "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate", f"hf:{candidate}",
                         "--seq-len", "16", "--batch-size", "2", "--report-dir", os.path.join(root, "r")])
        refused(code, capsys.readouterr().err, f"hf:{os.path.join(candidate, 'config.json')}", field, value)
        assert not os.path.exists(os.path.join(root, "r"))


@pytest.mark.parametrize("field,value", [("position_embedding_type", "relative_key"), ("is_decoder", True)])
def test_diagnose_refuses_an_hf_variant(tiny_checkpoint, hf_dir, tmp_path, capsys, field, value):
    candidate = hf_copy(hf_dir, str(tmp_path), **{field: value})
    code = frontdoor.main(["diagnose", "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate", f"hf:{candidate}",
                     "--seq-len", "16", "--batch-size", "2", "--report-dir", str(tmp_path / "r")])
    refused(code, capsys.readouterr().err, f"hf:{os.path.join(candidate, 'config.json')}", field, value)
    assert not (tmp_path / "r").exists()


@settings(max_examples=25, deadline=None, suppress_health_check=SUPPRESS)
@given(variant=variants)
def test_to_tf_refuses_an_hf_directory_of_a_variant(hf_dir, capsys, variant):
    field, value = variant
    with tempfile.TemporaryDirectory() as root:
        source = hf_copy(hf_dir, root, **{field: value})
        capsys.readouterr()
        code = convert.main(["--to-tf", "--torch-weights", source, "--output", os.path.join(root, "out", "c")])
        refused(code, capsys.readouterr().err, os.path.join(source, "config.json"), field, value)
        assert not os.path.exists(os.path.join(root, "out"))


def test_hf_erf_gelu_is_no_variant(hf_dir, tmp_path):
    """HF's "gelu" is the erf form, which the official graph's 2018 release computed: read by meaning."""
    _, config = read_hf_dir(hf_copy(hf_dir, str(tmp_path), hidden_act="gelu"))
    assert config.hidden_act == "gelu_erf"


# ---------------------------------------------------------------------------------------------
# chunk_size_feed_forward: the same function, compared.

def test_to_tf_of_a_chunked_hf_directory_is_the_same_checkpoint(tiny_checkpoint, hf_dir, tmp_path):
    out = str(tmp_path / "back" / "bert_model.ckpt")
    assert convert.main(["--to-tf", "--torch-weights", hf_copy(hf_dir, str(tmp_path), chunk_size_feed_forward=3),
                         "--output", out]) == 0
    a, b = read_checkpoint(tiny_checkpoint["prefix"]), read_checkpoint(out)
    assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)


@settings(max_examples=6, deadline=None, suppress_health_check=SUPPRESS)
@given(chunk=st.integers(1, 20), seq_len=st.integers(2, 16))
def test_chunked_hf_candidate_publishes_every_tap_once_and_matches(tiny_checkpoint, hf_dir, chunk, seq_len):
    """Against bert_torch on the same weights (no TensorFlow): every contract tap compared, all within fp32."""
    pytest.importorskip("transformers")
    from parity.candidates.factory import CandidateSpec, make_candidate
    from parity.compare.core import compare_sides
    from parity.inputs import make_inputs
    from parity.numerics.metrics import get_profile
    from parity.sides.base import TorchSide
    config = BertConfig.from_json_file(tiny_checkpoint["config"])
    vocab = os.path.join(tiny_checkpoint["dir"], "vocab.txt")
    inputs = make_inputs(vocab, 2, seq_len, 0, vocab_size=config.vocab_size, type_vocab_size=config.type_vocab_size)
    with tempfile.TemporaryDirectory() as root:
        candidate = make_candidate(CandidateSpec("hf", hf_copy(hf_dir, root, chunk_size_feed_forward=chunk)),
                                   config=config)
        report = compare_sides(TorchSide.from_weights(tiny_checkpoint["weights"], config), candidate, inputs,
                               get_profile("fp32-cpu"))
    assert report["verdict"] == "pass", report["first_divergence"]
    assert report["taps_compared"] == 5 + 11 * config.num_hidden_layers + 1
    assert f"chunk_size_feed_forward {chunk} run unchunked" in report["sides"]["candidate"]


@pytest.mark.heavy
def test_chunked_hf_candidate_passes_against_the_official_graph(tiny_checkpoint, hf_dir, tmp_path, capsys):
    pytest.importorskip("transformers")
    candidate = hf_copy(hf_dir, str(tmp_path), chunk_size_feed_forward=4)
    code = frontdoor.main(["compare", "--tf-checkpoint", tiny_checkpoint["dir"], "--candidate", f"hf:{candidate}",
                     "--seq-len", "16", "--batch-size", "2", "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert code == 0 and report["verdict"] == "pass", out
    assert report["taps_compared"] == 5 + 11 * tiny_checkpoint["num_layers"] + 1
    assert "published twice" not in out.out + out.err
    assert "chunk_size_feed_forward 4 run unchunked" in report["sides"]["candidate"]
