"""Per-tap error metrics and the tolerance profiles that turn them into pass/fail.

The rule of every profile: the TensorFlow graph is the reference ``r``, PyTorch the
candidate ``c``; an element passes when ``|c - r| <= atol + rtol * |r|`` (numpy's
``allclose`` with the reference on the right). A tap passes when every element passes,
both sides produced it with the same shape, it has at least one element, and neither
side holds a NaN or an Inf. Metrics are computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Optional

import numpy as np

# Denominator floor of max_rel, so exact zeros in the reference do not divide by zero.
REL_EPS = 1e-8


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    atol: float
    rtol: float
    overrides: tuple[tuple[str, float, float], ...] = ()   # (tap glob, atol, rtol), first match wins

    def tolerance(self, tap: str) -> tuple[float, float]:
        for pattern, atol, rtol in self.overrides:
            if fnmatchcase(tap, pattern):
                return atol, rtol
        return self.atol, self.rtol

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "reference": "tensorflow",
            "rule": "|pytorch - tensorflow| <= atol + rtol * |tensorflow|, for every element",
            "atol": self.atol, "rtol": self.rtol,
            "overrides": [{"taps": p, "atol": a, "rtol": r} for p, a, r in self.overrides],
        }


PROFILES = {
    "fp32-cpu": Profile(
        name="fp32-cpu",
        description=(
            "float32 on CPU on both sides. atol 2e-5 is 2x TF's own spread on real MiniLM-L6 weights "
            "(oneDNN on vs off: up to 1.0e-5 in the layer outputs); rtol 1e-5 covers large-magnitude "
            "elements, such as the -10000 mask adder in the attention scores (float32 ulp there: 1e-3). "
            "Attention scores and the feed-forward output projection get atol 1e-4: they are "
            "un-normalised dot products (over D and over intermediate_size terms) whose rounding error "
            "scales with the sum of |terms|, not with the result; TF's own spread there reaches 4.1e-5 "
            "(scores) and 1.7e-4 (output/dense) between oneDNN on and off."),
        atol=2e-5, rtol=1e-5,
        overrides=(("layer_*/attention/scores", 1e-4, 1e-5), ("layer_*/output/dense", 1e-4, 1e-5))),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def compare_tap(name: str, ref: Optional[np.ndarray], cand: Optional[np.ndarray], profile: Profile) -> dict:
    """The contract's per-tap record; ``reason`` says why a tap failed (None when it passed)."""
    atol, rtol = profile.tolerance(name)
    row = {"name": name, "shape": None, "max_abs": None, "max_rel": None, "mean_abs": None, "rms": None,
           "cosine": None, "atol": atol, "rtol": rtol, "passed": False, "worst_index": None,
           "tol_ratio": None, "reason": None}
    if ref is None or cand is None:
        row["reason"] = f"missing on the {'tensorflow' if ref is None else 'pytorch'} side"
        row["shape"] = list(np.shape(cand if ref is None else ref)) if (ref is not None or cand is not None) else None
        return row
    row["shape"] = list(ref.shape)
    if ref.shape != cand.shape:
        row["reason"] = f"shape mismatch: tensorflow {list(ref.shape)}, pytorch {list(cand.shape)}"
        return row
    if ref.size == 0:
        row["reason"] = "zero elements compared"
        return row
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    bad = [side for side, a in (("tensorflow", r), ("pytorch", c)) if not np.isfinite(a).all()]
    diff = np.abs(c - r)
    with np.errstate(invalid="ignore"):
        allowed = atol + rtol * np.abs(r)
        ratio = diff / allowed
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    norm = np.linalg.norm(r.ravel()) * np.linalg.norm(c.ravel())
    finite = not bad
    row.update(
        max_abs=_f(diff.max()),
        max_rel=_f((diff / np.maximum(np.abs(r), REL_EPS)).max()),
        mean_abs=_f(diff.mean()),
        rms=_f(np.sqrt(np.mean(diff ** 2))),
        cosine=_f(np.dot(r.ravel(), c.ravel()) / norm) if finite and norm > 0 else (1.0 if finite and not diff.any() else None),
        worst_index=[int(i) for i in worst],
        worst_values={"tensorflow": _f(r[worst]), "pytorch": _f(c[worst])},
        tol_ratio=_f(ratio[worst]),
    )
    if bad:
        row["reason"] = f"NaN or Inf on the {' and '.join(bad)} side"
    elif ratio[worst] > 1:
        row["reason"] = (f"{int((ratio > 1).sum())} of {ratio.size} elements over tolerance; worst at "
                         f"{row['worst_index']}: tensorflow {r[worst]:.9g}, pytorch {c[worst]:.9g}")
    else:
        row["passed"] = True
    return row


def _f(x) -> Optional[float]:
    """JSON-safe float: NaN and Inf become None (JSON has neither)."""
    x = float(x)
    return x if np.isfinite(x) else None
