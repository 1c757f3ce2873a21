"""Mixed-precision training parity (parity/amp_check.py): the runners' --bf16 and --fp16 loss curves against
their fp32 run under a rule set by the tier's unit roundoff; fp16's skipped steps leave the schedule where it
was; two classic faults (the schedule advanced on skipped steps; gradients clipped while scaled) caught."""
from __future__ import annotations

import pytest

from parity import amp_check

STEPS = 8


@pytest.fixture(scope="module")
def fp32():
    return amp_check.train("fp32", STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["bf16", "fp16"])
def test_mixed_precision_loss_curve_within_the_tiers_roundoff(fp32, tier):
    r = amp_check.judge(fp32, amp_check.train(tier, STEPS))
    assert r["verdict"] == "pass", r["summary"]
    assert r["skipped"] == 0 and r["max_rel_loss_diff"] > 0   # it ran in the tier: not the fp32 run again


def test_skipped_fp16_steps_do_not_move_the_schedule(fp32):
    """A loss scale of 2**40 overflows fp16: the first steps are skipped, later ones applied, each at the
    official rate of its own index."""
    amp = amp_check.train("fp16", STEPS, init_scale=2.0 ** 40)
    r = amp_check.judge(fp32, amp)
    assert 0 < r["skipped"] < STEPS, r["summary"]
    assert r["verdict"] == "pass" and r["schedule_passed"], r["summary"]
    assert amp["lrs"][:r["skipped"]] == [None] * r["skipped"]


@pytest.mark.parametrize("planted,kw", [("advance_on_skip", {"init_scale": 2.0 ** 40}), ("clip_scaled", {})])
def test_planted_mixed_precision_faults_are_caught(fp32, planted, kw):
    r = amp_check.judge(fp32, amp_check.train("fp16", STEPS, planted=planted, **kw))
    assert r["verdict"] == "fail", r["summary"]
    assert not (r["schedule_passed"] if planted == "advance_on_skip" else r["curve_passed"])
