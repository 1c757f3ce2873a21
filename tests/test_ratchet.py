"""The ratchet's join of a baseline report's taps with today's (parity.release.ratchet.tap_regressions, pandas),
on planted reports: every kind of regression found, in the baseline's order, and nothing else."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from bert_torch._io import dumps
from parity.release.ratchet import GROWTH_FACTOR, NOISE_FLOOR, grew, tap_regressions


def tap(name: str, ratio, passed: bool = True, max_abs: float = 1e-6, reason: str = "") -> dict:
    return {"name": name, "tol_ratio": ratio, "passed": passed, "max_abs": max_abs, "reason": reason}


def test_every_kind_of_regression_and_nothing_else():
    base = [tap("a", 0.01), tap("b", 0.2), tap("c", 0.2), tap("d", 0.04), tap("e", 0.3), tap("f", 1.5, False)]
    now = [tap("a", 0.09),                # below the noise floor's 2x (0.1): noise
           tap("b", 0.41, max_abs=2e-6),  # 2.05x of 0.2: growth
           tap("c", 1.5, False, reason="max_abs over atol"),   # passed, fails now
           tap("e", 0.59),                # 1.97x: no
           tap("f", 2.0, False),          # failed in the baseline too, grew 1.3x: neither new nor growth
           tap("g", 9.0, False)]          # new tap: not the ratchet's business (the verdict fails it)
    regs = tap_regressions("layerwise/x", base, now)
    assert [(r["tap"], r["kind"]) for r in regs] == [("b", "error growth"), ("c", "new failure"), ("d", "missing")]
    b, c = regs[0], regs[1]
    assert b["growth"] == 0.41 / 0.2 and b["max_abs_baseline"] == 1e-6 and b["max_abs_now"] == 2e-6
    assert "still within tolerance" in b["detail"]
    assert c["detail"] == "max_abs over atol" and c["baseline"] == 0.2 and c["now"] == 1.5


def test_non_finite_errors_as_strict_json_writes_them():
    """A report on disk holds "nan"/"inf" strings (strict JSON): an error that became Inf is growth, NaN is none."""
    base = json.loads(dumps([tap("a", 0.2), tap("b", 0.2), tap("c", float("nan"))]))
    now = json.loads(dumps([tap("a", float("inf")), tap("b", float("nan")), tap("c", 0.3)]))
    regs = tap_regressions("x", base, now)
    assert [(r["tap"], r["kind"]) for r in regs] == [("a", "error growth")]
    assert regs[0]["now"] == float("inf")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 10)), st.one_of(st.none(), st.floats(0, 10)),
                          st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_the_join_agrees_with_the_rule_tap_by_tap(rows):
    """The vectorised join decides each tap as the written rule (``grew``, new failure) does one by one."""
    base = [tap(f"t{i}", b, pb) for i, (b, _, pb, _) in enumerate(rows)]
    now = [tap(f"t{i}", n, pn) for i, (_, n, _, pn) in enumerate(rows)]
    got = {r["tap"]: r["kind"] for r in tap_regressions("x", base, now)}
    want = {}
    for i, (b, n, pb, pn) in enumerate(rows):
        if pb and not pn:
            want[f"t{i}"] = "new failure"
        elif grew(b, n, GROWTH_FACTOR, NOISE_FLOOR):
            want[f"t{i}"] = "error growth"
    assert got == want
