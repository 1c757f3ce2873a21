"""parity.numerics.hints: each known signature fires on its fault, names it with numbers, and stays silent otherwise.

The reference here is the unmodified ``bert_torch`` model (which the gate proves equal to the
official graph); the candidate is the same weights with one fault. The end-to-end version,
against TensorFlow itself, is ``parity/test_diagnose.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bert_torch import BertConfig
from bert_torch.modeling import LayerNorm
from bert_torch.weights import model_from_tensors, model_tensors
from parity.diagnose.blocks import blocks, local_taps
from parity.numerics.hints import (CAUSES, Context, activation_hints, block_of_weight, compare_weights, vocab_hint,
                          weight_hints)
from parity.inputs import Inputs
from parity.numerics.metrics import Profile, compare_tap
from parity.sides.base import TorchSide

# Both sides run the same bert_torch code on the same weights, so they agree bit for bit but for
# the planted fault: a tolerance just above float32 rounding of a single op is the honest one.
PROFILE = Profile("twin", "identical code on both sides; only the planted fault differs", atol=1e-6, rtol=1e-6)
CONFIG = dict(vocab_size=60, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
              max_position_embeddings=40, type_vocab_size=2, initializer_range=0.2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A model this small gains nothing from threads; on a busy CI machine they only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference(seed: int = 0):
    torch.manual_seed(seed)
    model = model_from_tensors(model_tensors(__import__("bert_torch").BertModel(BertConfig(**CONFIG))),
                               BertConfig(**CONFIG))
    with torch.no_grad():   # non-trivial LayerNorm and biases, so that swaps and offsets show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(seed: int = 0, B: int = 3, T: int = 16) -> Inputs:
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T), np.int32)
    for b, n in enumerate([T] + list(rng.integers(2, T, B - 1))):
        mask[b, :n] = 1
    ids = rng.integers(0, CONFIG["vocab_size"], (B, T)).astype(np.int32) * mask
    types = (np.arange(T)[None, :] >= T // 2).astype(np.int32) * mask
    return Inputs(ids, types, mask, {})


def activation_case(fault, seed: int = 0, config_overrides=None):
    """Runs the reference and the faulty twin; returns the hints of every locally failing block."""
    ref_model = reference(seed)
    weights = {k: v.copy() for k, v in model_tensors(ref_model).items()}   # the twin must not share memory
    cfg = BertConfig(**{**CONFIG, **(config_overrides or {})})
    bad = model_from_tensors(weights, cfg)
    if fault:
        fault(bad)
    x = inputs(seed)
    ref = TorchSide(ref_model).run(x)
    bs = blocks(CONFIG["num_hidden_layers"])
    local = local_taps(TorchSide(bad), x, ref, bs)
    found = []
    for b in bs:
        failing = [t for t in b.taps if not compare_tap(t, ref[t], local[t], PROFILE)["passed"]]
        if failing:
            found += activation_hints(Context(block=b.name, failing=failing, ref=ref, local=local,
                                              input_mask=x.input_mask, weights=weights, block_input=b.input,
                                              tolerance=lambda t: PROFILE.tolerance(t, ref[t])))
            break   # the first failing block is the culprit
    return found


def set_eps(eps, which=None):
    def fault(model):
        for name, m in model.named_modules():
            if isinstance(m, LayerNorm) and (which is None or name == which):
                m.eps = eps
    return fault


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_gelu_variant(seed):
    found = activation_case(None, seed, {"hidden_act": "gelu_erf"})
    assert [h["cause"] for h in found] == ["gelu_variant"] and found[0]["block"] == "layer_0/ffn"
    assert found[0]["numbers"]["pytorch"] == "erf" and found[0]["numbers"]["tensorflow"] == "tanh"


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), eps=st.sampled_from([1e-4, 1e-3]),   # 1e-5 is below tolerance at this scale
       which=st.sampled_from([None, "encoder.layer.1.attention.output.LayerNorm", "encoder.layer.0.output.LayerNorm"]))
def test_layernorm_epsilon(seed, eps, which):
    found = activation_case(set_eps(eps, which), seed)
    assert [h["cause"] for h in found] == ["layernorm_epsilon"], found
    assert found[0]["numbers"]["epsilon"] == eps
    expected = {None: "embeddings", "encoder.layer.1.attention.output.LayerNorm": "layer_1/attention",
                "encoder.layer.0.output.LayerNorm": "layer_0/ffn"}[which]
    assert found[0]["block"] == expected


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), value=st.sampled_from([-1e9, -1e4 * 3, -65504.0]))
def test_mask_constant(seed, value):
    def fault(model):
        model.mask_adder_value = value
    found = activation_case(fault, seed)
    assert [h["cause"] for h in found] == ["mask_constant"] and found[0]["block"] == "layer_0/attention"
    assert found[0]["numbers"]["constant"] == pytest.approx(value, rel=1e-3)


def test_mask_constant_minus_infinity():
    """-inf (masked_fill ports) makes the scores non-finite exactly at the padded keys."""
    model = reference()
    x = inputs()
    ref = TorchSide(model).run(x)
    local = dict(ref)
    scores = ref["layer_0/attention/scores"].copy()
    scores[np.broadcast_to((x.input_mask == 0)[:, None, None, :], scores.shape)] = -np.inf
    local["layer_0/attention/scores"] = scores
    ctx = Context("layer_0/attention", ["layer_0/attention/scores"], ref, local, x.input_mask, model_tensors(model),
                  "embeddings/output", PROFILE.tolerance)
    (h,) = activation_hints(ctx)
    assert h["cause"] == "mask_constant" and "-inf" in h["evidence"] and h["numbers"]["constant"] is None


def test_swapped_query_key_in_code():
    def fault(model):
        att = model.encoder.layer[1].attention.self
        att.query, att.key = att.key, att.query
    found = activation_case(fault)
    assert [h["cause"] for h in found] == ["swapped_qk"] and found[0]["block"] == "layer_1/attention"


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 6))
def test_position_offset_in_code(k):
    def fault(model):
        table = model.embeddings.position_embeddings.weight
        with torch.no_grad():
            table.copy_(torch.roll(table, -k, 0))
    found = activation_case(fault)
    assert [h["cause"] for h in found] == ["position_offset"] and found[0]["numbers"]["offset"] == k


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_no_activation_hint_without_a_fault(seed):
    assert activation_case(None, seed) == []


# ---------------------------------------------------------------------------------------------
# Weights.

def weights_case(mutate, seed=0):
    ref = {k: v.copy() for k, v in model_tensors(reference(seed)).items()}
    cand = {k: v.copy() for k, v in ref.items()}
    mutate(cand)
    report = compare_weights(ref, cand)
    return report, weight_hints(report, ref, cand, CONFIG["initializer_range"])


def swap(a, b):
    def mutate(t):
        t[a], t[b] = t[b], t[a]
    return mutate


L = "encoder.layer"
WEIGHT_FAULTS = {
    "swapped_qk": (swap(f"{L}.1.attention.self.query.weight", f"{L}.1.attention.self.key.weight"), "layer_1/attention"),
    "swapped_gamma_beta": (swap(f"{L}.0.output.LayerNorm.weight", f"{L}.0.output.LayerNorm.bias"), "layer_0/ffn"),
    "swapped_tensors": (swap(f"{L}.0.attention.self.value.bias", f"{L}.0.attention.output.dense.bias"), "layer_0/attention"),
    "transposed_kernel": (lambda t: t.__setitem__(f"{L}.0.intermediate.dense.weight",
                                                  t[f"{L}.0.intermediate.dense.weight"].T.copy()), "layer_0/ffn"),
    "position_offset": (lambda t: t.__setitem__("embeddings.position_embeddings.weight",
                                                np.roll(t["embeddings.position_embeddings.weight"], -2, 0)), "embeddings"),
    "type_vocab_size": (lambda t: t.__setitem__("embeddings.token_type_embeddings.weight", np.concatenate(
        [t["embeddings.token_type_embeddings.weight"], np.zeros((14, 24), np.float32)])), "embeddings"),
    "vocab_mismatch": (lambda t: t.__setitem__("embeddings.word_embeddings.weight",
                                               t["embeddings.word_embeddings.weight"][:50].copy()), "embeddings"),
    "missing_weights": (lambda t: t.pop("pooler.dense.weight"), "pooler"),
    "unexpected_weights": (lambda t: t.__setitem__("classifier.weight", np.zeros((2, 24), np.float32)), "classifier"),
    "weights_differ": (lambda t: t[f"{L}.1.output.dense.weight"].__setitem__((3, 4), 1.5), "layer_1/ffn"),
}


@pytest.mark.parametrize("cause", sorted(WEIGHT_FAULTS))
def test_weight_signature(cause):
    mutate, block = WEIGHT_FAULTS[cause]
    report, hints = weights_case(mutate)
    assert [h["cause"] for h in hints] == [cause], hints
    assert hints[0]["block"] == block and hints[0]["evidence"]
    assert report["differences"]


def test_lenient_loader_leftovers_are_missing_weights():
    def mutate(t):
        t["pooler.dense.weight"] = np.random.default_rng(0).normal(0, 0.2, (24, 24)).astype(np.float32)
        t["pooler.dense.bias"] = np.zeros(24, np.float32)
    _, hints = weights_case(mutate)
    assert {h["cause"] for h in hints} == {"missing_weights"} and len(hints) == 2
    assert any("std" in h["evidence"] for h in hints)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_identical_weights_are_bit_equal(seed):
    report, hints = weights_case(lambda t: None, seed)
    assert hints == [] and report["differences"] == [] and report["bit_equal"] == report["checked"]


def test_a_single_ulp_is_a_difference():
    def mutate(t):
        w = t["embeddings.LayerNorm.weight"]
        w[0] = np.nextafter(w[0], np.float32(np.inf))
    report, hints = weights_case(mutate)
    (d,) = report["differences"]
    assert d["differing"] == 1 and 0 < d["max_abs"] < 1e-6 and hints[0]["cause"] == "weights_differ"


def test_vocab_hint_names_known_vocabularies():
    assert vocab_hint("v.txt", 30522, 30522) is None
    h = vocab_hint("v.txt", 28996, 30522)
    assert h["cause"] == "vocab_mismatch" and "cased" in h["evidence"] and "30522" in h["evidence"]


def test_every_block_name_and_cause_is_documented():
    assert block_of_weight("encoder.layer.11.intermediate.dense.weight") == "layer_11/ffn"
    assert block_of_weight("qa_outputs.bias") == "squad" and block_of_weight("pooler.dense.bias") == "pooler"
    for cause in ("gelu_variant", "layernorm_epsilon", "mask_constant", "transposed_kernel", "swapped_qk",
                  "swapped_gamma_beta", "type_vocab_size", "position_offset", "missing_weights", "vocab_mismatch"):
        assert cause in CAUSES


def test_calibrated_profile_allows_k_times_each_floor():
    """The committed MiniLM calibration gives a profile of k x floor per tap, and reports error / floor."""
    import json
    import os
    from parity.numerics.metrics import CALIBRATION_DIR, CALIBRATION_K, PROFILES
    with open(os.path.join(CALIBRATION_DIR, "minilm-l6.json"), encoding="utf-8") as f:
        taps = json.load(f)["taps"]
    assert len(taps) == 5 + 11 * 6 + 1
    for row in taps.values():
        assert row["floor"] == max(row["tf_onednn"], row["tf_threads"], row["pt_fp64"])
    profile = PROFILES["calibrated-minilm-l6"]
    worst_output = max(taps[f"layer_{i}/output"]["floor"] for i in range(6))
    assert profile.tolerance("layer_11/output") == (CALIBRATION_K * worst_output, 0.0)   # deeper models: the kind's floor
    assert profile.tolerance("pooler/output") == (CALIBRATION_K * taps["pooler/output"]["floor"], 0.0)
    assert profile.tolerance("embeddings/word_embeddings")[0] <= 1e-8                   # lookups are exact
    ref = np.linspace(-1, 1, 24).reshape(2, 12)   # float64: the offsets below stay exact
    floor = taps["pooler/output"]["floor"]
    ok = compare_tap("pooler/output", ref, ref + 2 * floor, profile)
    bad = compare_tap("pooler/output", ref, ref + 5 * floor, profile)
    assert ok["passed"] and ok["error_over_floor"] == pytest.approx(2, rel=1e-2)
    assert not bad["passed"] and bad["error_over_floor"] == pytest.approx(5, rel=1e-2)
    assert "error_over_floor" not in compare_tap("pooler/output", ref, ref, PROFILE)   # fp32-cpu: uncalibrated
