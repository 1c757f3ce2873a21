"""The fast path of bert_torch (no Taps context: fused LayerNorm and GELU, scaled_dot_product_attention), which
is what users run, against the official graph at every tensor it exposes: every layer output, the pooler and
the head's logits, in every profile; and against the op-for-op path, within both paths' own rounding."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bert_torch import modeling
from bert_torch.modeling import BertConfig, BertModel
from bert_torch.taps import Taps
from parity.compare.core import twin_runs
from parity.inputs import make_inputs
from parity.numerics.metrics import PROFILES, compare_tap
from parity.sides.base import FastPathSide, TFSide, TorchSide
from parity.checkpoints import CONFIGS, SEQ


def fast_against(reference: dict, fast: FastPathSide, inputs, profile) -> list[dict]:
    cand = fast.run(inputs)
    _, c64 = twin_runs(fast, inputs, cand)
    return [compare_tap(n, reference.get(n), cand.get(n), profile,
                        float(np.abs(cand[n].astype(np.float64) - c64[n]).max())) for n in fast.tap_names]


@pytest.fixture(scope="module")
def minilm_run(minilm_reference):
    r = minilm_reference(4, 64)
    return r["config"], r["inputs"], r["ref"], r["weights"]


@pytest.mark.parametrize("profile", ["fp32-cpu", "fp32-cpu-strict", "calibrated-minilm-l6"])
def test_fast_path_matches_the_official_graph_on_real_weights(minilm_run, profile):
    config, inputs, ref, weights = minilm_run
    fast = FastPathSide(TorchSide.from_weights(weights, config))
    rows = fast_against(ref, fast, inputs, PROFILES[profile])
    assert [r["name"] for r in rows] == [f"layer_{i}/output" for i in range(6)] + ["pooler/output"]
    assert all(r["passed"] for r in rows), [(r["name"], r["reason"]) for r in rows if not r["passed"]]


def test_fast_path_catches_a_planted_fault(minilm_run):
    """Not vacuous: the erf GELU on the fast path, against the shipped tanh graph, fails at the first layer."""
    config, inputs, ref, weights = minilm_run
    erf = BertConfig.from_dict({**config.to_dict(), "hidden_act": "gelu_erf"})
    rows = fast_against(ref, FastPathSide(TorchSide.from_weights(weights, erf)), inputs, PROFILES["fp32-cpu"])
    assert not rows[0]["passed"] and rows[0]["name"] == "layer_0/output"


FAST = {(None, "tiny-1layer"), ("classifier", "odd-heads-2layer"), ("squad", "3layer-headsize-3")}


@pytest.mark.parametrize("head,name", [(h, n) if (h, n) in FAST else pytest.param(h, n, marks=pytest.mark.slow)
                                       for h in (None, "classifier", "squad")
                                       for n in ("tiny-1layer", "odd-heads-2layer", "3layer-headsize-3")])
def test_fast_path_matches_the_official_graph_on_random_checkpoints(random_checkpoint, name, head):
    ck = random_checkpoint(CONFIGS[name], head=head, num_labels=3, perturb=0.02)
    config = BertConfig.from_json_file(ck["bert_config"])
    inputs = make_inputs(ck["vocab"], 3, SEQ[name], 0, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size)
    side = TorchSide.from_weights(ck["torch_weights"], config)
    tf = TFSide(ck["prefix"], config, head=side.head if side.head in ("classifier", "squad") else None,
                num_labels=3)
    ref = tf.run(inputs)
    tf.close()
    rows = fast_against(ref, FastPathSide(side), inputs, PROFILES["fp32-cpu"])
    heads = {None: [], "classifier": ["classifier/logits"], "squad": ["squad/start_logits", "squad/end_logits"]}
    want = [f"layer_{i}/output" for i in range(config.num_hidden_layers)] + ["pooler/output"] + heads[head]
    assert [r["name"] for r in rows] == want
    assert all(r["passed"] for r in rows), [(r["name"], r["reason"]) for r in rows if not r["passed"]]


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 4), head_size=st.integers(1, 8), layers=st.integers(1, 3), T=st.integers(1, 12),
       act=st.sampled_from(sorted(modeling.FAST_ACTIVATIONS)), seed=st.integers(0, 2 ** 16),
       pad=st.integers(0, 11))
def test_fast_and_tapped_paths_agree_within_their_own_rounding(heads, head_size, layers, T, act, seed, pad):
    """Same function: |fast - tapped| is bounded by what each path rounds (its distance to its float64 run)."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=11, hidden_size=heads * head_size, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=7, hidden_act=act, max_position_embeddings=12,
                     initializer_range=0.5)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 11, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, max(1, T - pad):] = 0

    def run(m, tapped):
        with torch.no_grad():
            if tapped:
                with Taps(record=False):
                    return m(ids, None, mask)
            return m(ids, None, mask)

    m64 = BertModel(cfg).eval()
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention",
                           lambda *a, **k: calls.append(1) or sdpa(*a, **k)):
        outs = {}
        for tapped in (False, True):
            before = len(calls)
            for dt, m in (("32", model), ("64", m64)):
                outs[(tapped, dt)] = run(m, tapped)
            # The fast path really is another computation (fused attention), the tapped path never uses it.
            assert (len(calls) > before) == (not tapped)
    for i in range(layers + 1):
        pick = (lambda o: o[0][i]) if i < layers else (lambda o: o[1])
        fast32, tap32 = pick(outs[(False, "32")]).double(), pick(outs[(True, "32")]).double()
        e_fast = (fast32 - pick(outs[(False, "64")])).abs().max().item()
        e_tap = (tap32 - pick(outs[(True, "64")])).abs().max().item()
        # The two float64 runs agree to float64 rounding; each float32 path is within its own e of them.
        assert (fast32 - tap32).abs().max().item() <= 2 * (e_fast + e_tap) + 1e-12
