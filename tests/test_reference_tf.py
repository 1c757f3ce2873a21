"""reference_tf: the official TF graph, its taps, injection, and the random-checkpoint writer.

Tiny configs keep it fast. Numpy recomputations from the checkpoint's weights pin each tap's
meaning and layout; checkpoints are perturbed so that biases and LayerNorm parameters are not the
official 0/1 initial values (which would hide bias and layout mistakes).
"""
import json
import math
import os
import sys

import numpy as np
import pytest

import reference_tf
from reference_tf import ReferenceError, TFReference, write_random_checkpoint

import tensorflow.compat.v1 as tf1  # noqa: E402  (after reference_tf, which sets up TF for the official code)
from bert import modeling  # noqa: E402  (imported by reference_tf with its tf.contrib stand-in)
from bert_torch.taps import tap_names, tap_shape  # noqa: E402

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
B, T, H, N, I = 3, 16, 32, 4, 37
D = H // N
L = CONFIG["num_hidden_layers"]


def shape_of(name, batch=B, seq=T, num_labels=2):
    return tap_shape(name, batch, seq, H, N, I, num_labels)


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG["vocab_size"], (B, T))
    types = np.zeros((B, T), np.int64)
    types[:, T // 2:] = 1
    mask = np.ones((B, T), np.int64)
    mask[1, 10:] = 0
    mask[2, 13:] = 0
    return ids, types, mask


INPUTS = make_inputs()


def layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))


def close(actual, expected, atol=2e-5):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A head-less checkpoint that also carries pretraining heads, Adam slots and a vocab."""
    out = tmp_path_factory.mktemp("base")
    vocab = out / "src_vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return write_random_checkpoint(str(out / "ckpt"), CONFIG, seed=1, pretraining_heads=True,
                                   optimizer_slots=True, vocab_file=str(vocab), perturb=0.05)


@pytest.fixture(scope="module")
def weights(ckpt):
    reader = tf1.train.load_checkpoint(ckpt)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def ref(ckpt):
    with TFReference(ckpt, CONFIG, intra_op_threads=2) as r:
        yield r


@pytest.fixture(scope="module")
def out(ref):
    return ref.run(*INPUTS)


def dense(x, w, prefix):
    return x @ w[prefix + "/kernel"] + w[prefix + "/bias"]


def test_all_taps_present_with_contract_shapes(ref, out):
    assert ref.tap_names == tap_names(L) and list(out) == ref.tap_names
    assert len(out) == 5 + 11 * L + 1
    for name, value in out.items():
        assert value.dtype == np.float32 and value.shape == shape_of(name), name
        assert np.isfinite(value).all(), name
    assert ref.description == "official bert-tensorflow 1.0.4 graph (GELU: tanh, as shipped)"


@pytest.mark.filterwarnings("ignore:`tf.layers.dense` is deprecated")
def test_encoder_and_pooler_equal_the_official_accessors(ckpt, out):
    """An independent official BertModel graph, restored with a plain Saver, gives the same tensors."""
    graph = tf1.Graph()
    with graph.as_default():
        ids, types, mask = (tf1.constant(a, tf1.int32) for a in INPUTS)
        model = modeling.BertModel(modeling.BertConfig.from_dict(CONFIG), is_training=False, input_ids=ids,
                                   input_mask=mask, token_type_ids=types, use_one_hot_embeddings=False)
        with tf1.Session(graph=graph) as session:
            tf1.train.Saver().restore(session, ckpt)
            seq, pooled, layers, emb = session.run([model.get_sequence_output(), model.get_pooled_output(),
                                                    model.get_all_encoder_layers(), model.get_embedding_output()])
    close(out[f"layer_{L - 1}/output"], seq, atol=1e-6)
    close(out["pooler/output"], pooled, atol=1e-6)
    close(out["embeddings/output"], emb, atol=1e-6)
    for i in range(L):
        close(out[f"layer_{i}/output"], layers[i], atol=1e-6)


def test_attention_probs_and_mask(out):
    masked_keys = INPUTS[2][:, None, None, :] == 0  # [B,1,1,T]
    for i in range(L):
        probs, scores = out[f"layer_{i}/attention/probs"], out[f"layer_{i}/attention/scores"]
        close(probs.sum(-1), np.ones((B, N, T)), atol=1e-5)
        assert (np.broadcast_to(masked_keys, probs.shape) == (probs < 1e-30)).all()
        shifted = np.where(masked_keys, scores + 10000.0, scores)
        assert np.abs(shifted).max() < 50, "masked scores are raw scores plus -10000"
        assert np.abs(scores[np.broadcast_to(masked_keys, scores.shape)] + 10000.0).max() < 50


def test_embedding_taps_recomputed_in_numpy(out, weights):
    ids, types, _ = INPUTS
    e = "bert/embeddings/"
    word, tok, pos = (weights[e + n] for n in ("word_embeddings", "token_type_embeddings", "position_embeddings"))
    np.testing.assert_array_equal(out["embeddings/word_embeddings"], word[ids])
    np.testing.assert_array_equal(out["embeddings/token_type_embeddings"], tok[types])
    np.testing.assert_array_equal(out["embeddings/position_embeddings"], pos[:T])
    close(out["embeddings/sum"], word[ids] + tok[types] + pos[:T])
    close(out["embeddings/output"], layer_norm(out["embeddings/sum"], weights[e + "LayerNorm/gamma"],
                                               weights[e + "LayerNorm/beta"]))


def attention_numpy(x, w, prefix, mask):
    """query, key, value [B,N,T,D], scores, probs [B,N,T,T], context [B,T,H] of one layer."""
    q, k, v = (dense(x, w, f"{prefix}/attention/self/{n}").reshape(B, T, N, D).transpose(0, 2, 1, 3)
               for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + (1.0 - mask[:, None, None, :]) * -10000.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
    return q, k, v, scores, probs, context


def test_layer_taps_recomputed_in_numpy(out, weights):
    w = weights
    for i in range(L):
        p, t = f"bert/encoder/layer_{i}", f"layer_{i}/"
        x = out["embeddings/output"] if i == 0 else out[f"layer_{i - 1}/output"]
        q, k, v, scores, probs, context = attention_numpy(x, w, p, INPUTS[2])
        for name, expected in zip(("query", "key", "value", "scores", "probs", "context"),
                                  (q, k, v, scores, probs, context)):
            close(out[t + "attention/" + name], expected, atol=5e-5 if name == "scores" else 2e-5)
        close(out[t + "attention/dense"], dense(out[t + "attention/context"], w, p + "/attention/output/dense"))
        close(out[t + "attention/output"], layer_norm(out[t + "attention/dense"] + x,
                                                      w[p + "/attention/output/LayerNorm/gamma"],
                                                      w[p + "/attention/output/LayerNorm/beta"]))
        pre = dense(out[t + "attention/output"], w, p + "/intermediate/dense")
        close(out[t + "intermediate"], gelu_tanh(pre))
        assert np.abs(out[t + "intermediate"] - gelu_erf(pre)).max() > 1e-5, "tanh GELU, not erf"
        close(out[t + "output/dense"], dense(out[t + "intermediate"], w, p + "/output/dense"))
        close(out[t + "output"], layer_norm(out[t + "output/dense"] + out[t + "attention/output"],
                                            w[p + "/output/LayerNorm/gamma"], w[p + "/output/LayerNorm/beta"]))
    close(out["pooler/output"], np.tanh(dense(out[f"layer_{L - 1}/output"][:, 0], w, "bert/pooler/dense")))


def test_injecting_a_tap_with_its_own_value_reproduces_everything(ref, out):
    for name in ref.tap_names:
        again = ref.run(*INPUTS, inject={name: out[name]})
        for other in ref.tap_names:
            np.testing.assert_array_equal(again[other], out[other], err_msg=f"injected {name}, compared {other}")


def test_injecting_zeros_changes_downstream_only(ref, out):
    zeros = np.zeros(shape_of("layer_0/output"), np.float32)
    got = ref.run(*INPUTS, inject={"layer_0/output": zeros})
    np.testing.assert_array_equal(got["layer_0/output"], zeros)
    for name in ref.tap_names:
        if name.startswith("embeddings/") or (name.startswith("layer_0/") and name != "layer_0/output"):
            np.testing.assert_array_equal(got[name], out[name], err_msg=name)
        elif name != "layer_0/output":
            assert np.abs(got[name] - out[name]).max() > 1e-3, f"{name} ignored the injection"


def test_injection_into_query_and_context(ref, out, weights):
    rng = np.random.default_rng(5)
    query = rng.normal(size=shape_of("layer_0/attention/query")).astype(np.float32)
    got = ref.run(*INPUTS, inject={"layer_0/attention/query": query},
                  fetch=["layer_0/attention/query", "layer_0/attention/scores", "layer_0/attention/key"])
    np.testing.assert_array_equal(got["layer_0/attention/query"], query)
    np.testing.assert_array_equal(got["layer_0/attention/key"], out["layer_0/attention/key"])
    adder = (1.0 - INPUTS[2][:, None, None, :]) * -10000.0
    close(got["layer_0/attention/scores"], query @ got["layer_0/attention/key"].transpose(0, 1, 3, 2) / math.sqrt(D)
          + adder, atol=5e-5)

    context = rng.normal(size=shape_of("layer_0/attention/context")).astype(np.float32)
    got = ref.run(*INPUTS, inject={"layer_0/attention/context": context},
                  fetch=["layer_0/attention/context", "layer_0/attention/dense"])
    np.testing.assert_array_equal(got["layer_0/attention/context"], context)
    close(got["layer_0/attention/dense"], dense(context, weights, "bert/encoder/layer_0/attention/output/dense"))


def test_erf_variant_substitutes_only_the_activation(ckpt, out, weights):
    with TFReference(ckpt, {**CONFIG, "hidden_act": "gelu_erf"}) as erf:
        assert "erf substituted" in erf.description
        got = erf.run(*INPUTS, fetch=["layer_0/attention/output", "layer_0/intermediate"])
    np.testing.assert_array_equal(got["layer_0/attention/output"], out["layer_0/attention/output"])
    assert np.abs(got["layer_0/intermediate"] - out["layer_0/intermediate"]).max() > 1e-5
    pre = dense(got["layer_0/attention/output"], weights, "bert/encoder/layer_0/intermediate/dense")
    close(got["layer_0/intermediate"], gelu_erf(pre))


@pytest.mark.parametrize("head", ["classifier", "squad"])
def test_task_heads(tmp_path, head):
    prefix = write_random_checkpoint(str(tmp_path), CONFIG, seed=2, head=head, num_labels=3, perturb=0.05)
    reader = tf1.train.load_checkpoint(prefix)
    with TFReference(prefix, CONFIG, head=head, num_labels=3) as r:
        assert r.tap_names == tap_names(L, head)
        got = r.run(*INPUTS)
    if head == "classifier":
        w, b = reader.get_tensor("output_weights"), reader.get_tensor("output_bias")
        assert got["classifier/logits"].shape == (B, 3)
        close(got["classifier/logits"], got["pooler/output"] @ w.T + b)
    else:
        w, b = reader.get_tensor("cls/squad/output_weights"), reader.get_tensor("cls/squad/output_bias")
        logits = got[f"layer_{L - 1}/output"] @ w.T + b
        for j, name in enumerate(("squad/start_logits", "squad/end_logits")):
            assert got[name].shape == (B, T)
            close(got[name], logits[..., j])


def test_hidden_size_mismatch_names_variable_and_both_shapes(ckpt):
    with pytest.raises(ReferenceError) as e:
        TFReference(ckpt, {**CONFIG, "hidden_size": 48})
    message = str(e.value)
    assert "\n" not in message
    assert "bert/embeddings/word_embeddings has shape [99, 32] in the checkpoint but [99, 48]" in message


def test_missing_variable_is_named(ckpt, tmp_path):
    with pytest.raises(ReferenceError, match=r"variable output_weights \(shape \[2, 32\]\) is missing"):
        TFReference(ckpt, CONFIG, head="classifier")
    with pytest.raises(ReferenceError, match="cannot read checkpoint"):
        TFReference(str(tmp_path / "bert_model.ckpt"), CONFIG)


def test_bad_fetch_inject_and_inputs(ref):
    with pytest.raises(ReferenceError, match="unknown tap 'layer_9/output'"):
        ref.run(*INPUTS, fetch=["layer_9/output"])
    with pytest.raises(ReferenceError, match="unknown tap 'classifier/logits'"):
        ref.run(*INPUTS, inject={"classifier/logits": np.zeros((B, 2))})
    with pytest.raises(ReferenceError, match=r"injected tap layer_0/attention/query: shape \[3, 16, 4, 8\], "
                                             r"expected \[3, 4, 16, 8\]"):
        ref.run(*INPUTS, inject={"layer_0/attention/query": np.zeros((B, T, N, D))})
    with pytest.raises(ReferenceError, match="exceeds max_position_embeddings"):
        ref.run(*(np.zeros((1, 65), int) for _ in range(3)))


def test_dynamic_shapes_one_graph(ref, out):
    ids, types, mask = INPUTS
    fetch = ["embeddings/position_embeddings", "layer_1/attention/probs", "pooler/output"]
    sub = ref.run(ids[1:2], types[1:2], mask[1:2], fetch=fetch)
    close(sub["layer_1/attention/probs"], out["layer_1/attention/probs"][1:2], atol=1e-6)
    close(sub["pooler/output"], out["pooler/output"][1:2], atol=1e-6)
    short = ref.run(ids[:, :7], types[:, :7], mask[:, :7], fetch=fetch)
    assert short["layer_1/attention/probs"].shape == (B, N, 7, 7)
    np.testing.assert_array_equal(short["embeddings/position_embeddings"], out["embeddings/position_embeddings"][:7])


def test_checkpoint_writer_layout(ckpt, weights, tmp_path):
    directory = os.path.dirname(ckpt)
    assert os.path.basename(ckpt) == "bert_model.ckpt"
    assert open(os.path.join(directory, "vocab.txt")).read().startswith("[PAD]")
    written = json.load(open(os.path.join(directory, "bert_config.json")))
    assert written == {**CONFIG, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                       "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
    for name in ("cls/predictions/output_bias", "cls/predictions/transform/dense/kernel",
                 "cls/predictions/transform/LayerNorm/gamma", "cls/seq_relationship/output_weights",
                 "bert/encoder/layer_1/output/dense/kernel/adam_m", "bert/pooler/dense/bias/adam_v", "global_step"):
        assert name in weights, name
    assert np.abs(weights["bert/encoder/layer_0/output/dense/bias"]).min() > 0, "perturbed away from zero"
    first, same, other = (tf1.train.load_checkpoint(write_random_checkpoint(str(tmp_path / d), CONFIG, seed=seed))
                          for d, seed in (("a", 1), ("b", 1), ("c", 2)))
    table = "bert/embeddings/word_embeddings"
    np.testing.assert_array_equal(first.get_tensor(table), same.get_tensor(table))
    assert not np.array_equal(first.get_tensor(table), other.get_tensor(table))
    np.testing.assert_array_equal(first.get_tensor("bert/encoder/layer_0/output/LayerNorm/gamma"), np.ones(H))


def test_config_path_activation_names_and_process_state(ckpt):
    config_path = os.path.join(os.path.dirname(ckpt), "bert_config.json")
    with TFReference(ckpt, config_path) as r:
        assert "tanh, as shipped" in r.description
    for act, words in (("gelu_new", "tanh, as shipped"), ("GELU_EXACT", "erf substituted"), ("relu", "activation: relu")):
        with TFReference(ckpt, {**CONFIG, "hidden_act": act}) as r:
            assert words in r.description
    with pytest.raises(ReferenceError, match="hidden_act 'swish'"):
        TFReference(ckpt, {**CONFIG, "hidden_act": "swish"})
    # The TF1 shims do not leak: TF2 TensorShape semantics are back, no tf.contrib is registered.
    assert isinstance(tf1.TensorShape([1])[0], int)
    assert "tensorflow.contrib" not in sys.modules
    assert reference_tf.BERT_VERSION == "1.0.4"


def test_unexpected_graph_layout_fails_loudly(ckpt, monkeypatch):
    import reference_tf._taps as taps_module
    monkeypatch.setattr(taps_module, "_LAYER_NORM", "LayerNorm/batchnorm/mul_1:0")
    with pytest.raises(ReferenceError, match=r"tap embeddings/output: op type Mul, expected AddV2 .*"
                                             r"not laid out as expected"):
        TFReference(ckpt, CONFIG)
