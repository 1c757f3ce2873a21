"""Inputs a BERT cannot take: what each side does with them.

The PyTorch side (``BertModel.check_inputs``) refuses every one with a one-line ValueError that
names the tensor, the value, where it is and the config field it breaks. The official TF graph
is recorded as it really behaves, fed directly (past ``TFReference``'s own checks):

| input | official graph (bert-tensorflow 1.0.4, CPU) | bert_torch |
| --- | --- | --- |
| input_ids >= vocab_size, or < 0 | InvalidArgumentError from tf.gather ("indices[..] = 50 is not in [0, 50)"); on GPU, TF documents that tf.gather writes zeros instead, silently (not measured here: CPU only) | ValueError |
| token_type_ids >= type_vocab_size, or < 0 | runs: one_hot gives an all-zero row, so the token gets NO segment embedding, silently | ValueError |
| seq_len > max_position_embeddings | InvalidArgumentError from the graph's assert_less_equal | ValueError |
| empty batch (B = 0) | runs and returns empty outputs, silently | ValueError |
| empty sequence (T = 0) | embeddings and encoder run; the pooler fails (InvalidArgumentError) | ValueError |
| attention_mask 2 | runs: the adder (1 - 2) * -10000 adds +10000 to that key's score, silently | ValueError |
"""
import os

import numpy as np
import pytest
import torch

from bert_torch.modeling import BertConfig, BertModel

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=9,
              max_position_embeddings=10, type_vocab_size=2, initializer_range=0.2)


def good(B=2, T=5):
    ids = (np.arange(B * T).reshape(B, T) % CONFIG["vocab_size"]).astype(np.int64)
    types = np.zeros((B, T), np.int64)
    types[:, T // 2:] = 1
    return ids, types, np.ones((B, T), np.int64)


def bad_inputs(case):
    ids, types, mask = good()
    if case == "id_too_large":
        ids[1, 3] = 50
    elif case == "id_negative":
        ids[0, 2] = -1
    elif case == "type_too_large":
        types[0, 1] = 2
    elif case == "type_negative":
        types[1, 4] = -3
    elif case == "too_long":
        ids, types, mask = good(1, 11)
    elif case == "empty_batch":
        ids, types, mask = ids[:0], types[:0], mask[:0]
    elif case == "empty_sequence":
        ids, types, mask = ids[:, :0], types[:, :0], mask[:, :0]
    elif case == "mask_two":
        mask[1, 1] = 2
    return ids, types, mask


# ---------------------------------------------------------------------------------------------
# PyTorch: a clear error for each
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BertModel(BertConfig.from_dict(CONFIG)).eval()


@pytest.mark.parametrize("case,message", [
    ("id_too_large", "input_ids holds 50 at [1, 3], outside [0, 50) (vocab_size 50)"),
    ("id_negative", "input_ids holds -1 at [0, 2], outside [0, 50) (vocab_size 50)"),
    ("type_too_large", "token_type_ids holds 2 at [0, 1], outside [0, 2) (type_vocab_size 2)"),
    ("type_negative", "token_type_ids holds -3 at [1, 4], outside [0, 2) (type_vocab_size 2)"),
    ("too_long", "sequence length 11 exceeds max_position_embeddings 10"),
    ("empty_batch", "input_ids is empty: shape (0, 5); need at least one sequence of at least one token"),
    ("empty_sequence", "input_ids is empty: shape (2, 0); need at least one sequence of at least one token"),
    ("mask_two", "attention_mask holds 2 at [1, 1]; only 0 (padding) and 1 (real token) are allowed"),
])
def test_pytorch_side_refuses_with_one_clear_line(model, case, message):
    ids, types, mask = (torch.from_numpy(a) for a in bad_inputs(case))
    with pytest.raises(ValueError) as exc:
        model(ids, types, mask)
    assert str(exc.value) == message


def test_pytorch_side_takes_the_edges_of_the_valid_range(model):
    """The largest valid id, type and length run: the checks are not off by one."""
    ids, types, mask = good(1, CONFIG["max_position_embeddings"])
    ids[0, 0], types[0, -1] = CONFIG["vocab_size"] - 1, CONFIG["type_vocab_size"] - 1
    layers, pooled = model(*(torch.from_numpy(a) for a in (ids, types, mask)))
    assert pooled.shape == (1, CONFIG["hidden_size"]) and torch.isfinite(pooled).all()
    bool_mask = torch.from_numpy(mask).bool()   # a bool mask holds only 0/1: accepted
    model(torch.from_numpy(ids), torch.from_numpy(types), bool_mask)


# ---------------------------------------------------------------------------------------------
# The official graph: what it really does
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official():
    """The official graph with dynamic [B, T] inputs and its own random initialisation."""
    pytest.importorskip("tensorflow", reason="the official graph needs TensorFlow")
    from reference_tf._official import build, building, official_config
    from reference_tf._taps import find_taps
    import tensorflow.compat.v1 as tf1
    config, _ = official_config(CONFIG)
    built = build(config, None, 2, seed=0)
    taps = find_taps(built, config, None, 2)
    with building(built.graph):
        init = tf1.global_variables_initializer()
        table = next(v for v in tf1.global_variables() if v.op.name == "bert/embeddings/token_type_embeddings")
    session = tf1.Session(graph=built.graph)
    session.run(init)

    def run(case, tap):
        ids, types, mask = bad_inputs(case)
        feed = {built.input_ids: ids.astype(np.int32), built.token_type_ids: types.astype(np.int32),
                built.input_mask: mask.astype(np.int32)}
        return session.run(taps[tap].tensor, feed)

    run.error = tf1.errors.InvalidArgumentError
    run.type_table = session.run(table)
    yield run
    session.close()


@pytest.mark.parametrize("case,value", [("id_too_large", 50), ("id_negative", -1)])
def test_official_word_lookup_raises_on_cpu(official, case, value):
    """tf.gather checks its indices on CPU. (TF documents that on GPU it does not, and returns
    zero rows for out-of-range ids; this suite runs on CPU and does not measure that.)"""
    with pytest.raises(official.error) as exc:
        official(case, "embeddings/word_embeddings")
    assert f"= {value} is not in [0, 50)" in exc.value.message


@pytest.mark.parametrize("case,row,col", [("type_too_large", 0, 1), ("type_negative", 1, 4)])
def test_official_token_type_lookup_is_silently_zero(official, case, row, col):
    """The official embedding_postprocessor multiplies one_hot(token_type_ids) by the table: an id
    outside [0, type_vocab_size) is an all-zero one-hot, so the token silently gets no segment
    embedding while its neighbours get theirs."""
    out = official(case, "embeddings/token_type_embeddings")
    assert out.shape == (2, 5, CONFIG["hidden_size"])
    assert np.all(out[row, col] == 0.0)
    assert np.abs(official.type_table).min() > 0   # a real row is never all zero
    ids, types, _ = good()
    np.testing.assert_array_equal(out[1 - row, col], official.type_table[types[1 - row, col]])


def test_official_graph_asserts_the_sequence_length(official):
    with pytest.raises(official.error) as exc:
        official("too_long", "embeddings/output")
    assert "assert_less_equal" in exc.value.message


def test_official_graph_returns_empty_outputs_for_an_empty_batch(official):
    assert official("empty_batch", "pooler/output").shape == (0, CONFIG["hidden_size"])
    assert official("empty_batch", "layer_0/output").shape == (0, 5, CONFIG["hidden_size"])


def test_official_graph_fails_only_at_the_pooler_for_an_empty_sequence(official):
    assert official("empty_sequence", "layer_0/output").shape == (2, 0, CONFIG["hidden_size"])
    with pytest.raises(official.error):
        official("empty_sequence", "pooler/output")


def test_official_graph_adds_10000_for_a_mask_of_two(official):
    scores = official("mask_two", "layer_0/attention/scores")   # [B,N,T,T]
    assert np.all(scores[1, :, :, 1] > 9000.0)                  # +10000 at key 1 of row 1
    assert np.all(np.abs(scores[0]) < 100.0)


def test_harness_tf_side_refuses_only_some(official, tmp_path):
    """Through ``TFReference`` (the harness's TF side): a too-long sequence is refused before the
    graph runs and a bad word id is a one-line ReferenceError, but a bad token type passes
    through to the silent zero row. The harness builds its inputs with ``make_inputs``, which
    never makes one; callers of ``TFReference.run`` with their own ids must check them."""
    from reference_tf import ReferenceError, TFReference, write_random_checkpoint
    prefix = write_random_checkpoint(str(tmp_path), CONFIG, seed=0, perturb=0.02)
    with TFReference(prefix, CONFIG) as ref:
        with pytest.raises(ReferenceError, match="seq_len 11 exceeds max_position_embeddings 10"):
            ref.run(*bad_inputs("too_long"), fetch=["embeddings/output"])
        with pytest.raises(ReferenceError, match="official graph failed") as exc:
            ref.run(*bad_inputs("id_too_large"), fetch=["embeddings/word_embeddings"])
        assert "\n" not in str(exc.value)
        out = ref.run(*bad_inputs("type_too_large"), fetch=["embeddings/token_type_embeddings"])
        assert np.all(out["embeddings/token_type_embeddings"][0, 1] == 0.0)
