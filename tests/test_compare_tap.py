"""compare_tap's statistics are the contract's formulas, evaluated in float64 (parity/numerics/metrics.py computes them
in place, to keep a large tap's temporaries few; this checks it against the plain expressions)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from parity.numerics.metrics import REL_EPS, compare_tap, get_profile

PROFILE = get_profile("fp32-cpu")


def plain(name: str, ref: np.ndarray, cand: np.ndarray, rounding: float) -> dict:
    atol, rtol = PROFILE.tolerance(name, ref, rounding)
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(c - r)
    ratio = diff / (atol + rtol * np.abs(r))
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return {"max_abs": diff.max(), "max_rel": (diff / np.maximum(np.abs(r), REL_EPS)).max(), "mean_abs": diff.mean(),
            "rms": np.sqrt(np.mean(diff ** 2)), "tol_ratio": ratio[worst], "worst_index": [int(i) for i in worst],
            "cosine": np.dot(r.ravel(), c.ravel()) / (np.linalg.norm(r) * np.linalg.norm(c)),
            "passed": bool(ratio[worst] <= 1), "over": int((ratio > 1).sum())}


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(-8, 3), noise=st.floats(-10, -1), name=st.sampled_from(
           ["layer_0/attention/scores", "layer_1/output", "embeddings/output", "layer_0/intermediate"]))
def test_statistics_are_the_formulas(shape, seed, scale, noise, name):
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal(shape) * 10.0 ** scale).astype(np.float32)
    cand = (ref + rng.standard_normal(shape) * 10.0 ** (scale + noise)).astype(np.float32)
    row, want = compare_tap(name, ref, cand, PROFILE, 1e-7), plain(name, ref, cand, 1e-7)
    for key in ("max_abs", "max_rel", "mean_abs", "rms", "tol_ratio"):
        assert row[key] == want[key], key          # bit for bit: the same float64 operations
    assert row["worst_index"] == want["worst_index"] and row["passed"] == want["passed"]
    if np.linalg.norm(ref) * np.linalg.norm(cand) > 0:
        assert row["cosine"] == want["cosine"]
    if not row["passed"]:
        assert row["reason"].startswith(f"{want['over']} of {ref.size} elements over tolerance")


def test_a_planted_error_and_non_finite_values():
    ref = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    cand = ref.copy()
    cand[1, 2, 3] += 1e-2
    row = compare_tap("layer_0/output", ref, cand, PROFILE)
    assert not row["passed"] and row["worst_index"] == [1, 2, 3] and row["reason"].startswith("1 of 24 elements")
    assert abs(row["max_abs"] - 1e-2) < 1e-6
    cand[0, 0, 0] = np.nan
    row = compare_tap("layer_0/output", ref, cand, PROFILE)
    assert not row["passed"] and "pytorch holds 1 NaN" in row["reason"] and row["max_abs"] is None
    same = compare_tap("layer_0/output", ref, ref.copy(), PROFILE)
    assert same["passed"] and same["max_abs"] == 0 and abs(same["cosine"] - 1.0) < 1e-15
