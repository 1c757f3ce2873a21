"""Mixed-precision training parity (parity/checks/amp.py): the runners' --bf16 and --fp16 loss curves against
their fp32 run under a rule set by the tier's unit roundoff; fp16's skipped steps leave the schedule where it
was; two classic faults (the schedule advanced on skipped steps; gradients clipped while scaled) caught.

Each check runs on two models: a tiny random BERT (2 layers x 32, in `make check`: fp16 arithmetic on a CPU is
emulated, and the properties checked are the training loop's and the GradScaler's, not the model's size) and
the real MiniLM-L6 (slow: an 8-step fp16 run of MiniLM takes minutes on a CPU)."""
from __future__ import annotations

import pytest
import torch

from bert_torch.modeling import BertConfig, BertForSequenceClassification
from parity.checks import amp as amp_check

STEPS = 8


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    """A random 2-layer BERT over MiniLM's vocabulary (the MRPC sample's ids), dropout 0, seeded."""
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config, num_labels=2)


MODELS = {"tiny": tiny_classifier, "minilm": None}   # None: amp_check's default, real MiniLM-L6


@pytest.fixture(scope="module", params=["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def fp32(request):
    return request.param, amp_check.train("fp32", STEPS, model=MODELS[request.param])


def train(fp32, tier: str, **kw) -> dict:
    return amp_check.train(tier, STEPS, model=MODELS[fp32[0]], **kw)


@pytest.mark.heavy
@pytest.mark.parametrize("tier", ["bf16", "fp16"])
def test_mixed_precision_loss_curve_within_the_tiers_roundoff(fp32, tier):
    r = amp_check.judge(fp32[1], train(fp32, tier))
    assert r["verdict"] == "pass", r["summary"]
    assert r["skipped"] == 0 and r["max_rel_loss_diff"] > 0   # it ran in the tier: not the fp32 run again


def test_skipped_fp16_steps_do_not_move_the_schedule(fp32):
    """A loss scale of 2**40 overflows fp16: the first steps are skipped, later ones applied, each at the
    official rate of its own index."""
    amp = train(fp32, "fp16", init_scale=2.0 ** 40)
    r = amp_check.judge(fp32[1], amp)
    assert 0 < r["skipped"] < STEPS, r["summary"]
    assert r["verdict"] == "pass" and r["schedule_passed"], r["summary"]
    assert amp["lrs"][:r["skipped"]] == [None] * r["skipped"]


@pytest.mark.parametrize("planted,kw", [("advance_on_skip", {"init_scale": 2.0 ** 40}), ("clip_scaled", {})])
def test_planted_mixed_precision_faults_are_caught(fp32, planted, kw):
    r = amp_check.judge(fp32[1], train(fp32, "fp16", planted=planted, **kw))
    assert r["verdict"] == "fail", r["summary"]
    assert not (r["schedule_passed"] if planted == "advance_on_skip" else r["curve_passed"])
