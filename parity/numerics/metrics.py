"""Per-tap error metrics and the tolerance profiles that turn them into pass/fail.

The rule of every profile: the TensorFlow graph is the reference ``r``, PyTorch the
candidate ``c``; an element passes when ``|c - r| <= atol + rtol * |r|`` (numpy's
``allclose`` with the reference on the right), where a tap's ``atol`` is the profile's
absolute tolerance plus ``scale`` times the tap's largest reference magnitude
``max |r|``. A tap passes when every element passes, both sides produced it with the
same shape, it has at least one element, and neither side holds a NaN or an Inf.
Metrics are computed in float64.

Why the scale term: float32 rounding error in an element is set by the magnitudes that
flowed into it (a LayerNorm output inherits the error of its row's largest activations,
a long dot product that of its largest terms), not by the element's own value, so
neither a fixed atol nor rtol fits taps whose dynamic range varies with the checkpoint
and the sequence length.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Optional

import numpy as np

from parity.files import PACKAGE_DIR

# A precision tier's atol term is MARGIN x its measured rounding (parity/numerics/precision.py says why).
MARGIN = 2.0
# Denominator floor of max_rel, so exact zeros in the reference do not divide by zero.
REL_EPS = 1e-8


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    atol: float
    rtol: float
    scale: float = 0.0   # atol grows by scale * max|reference| of the tap
    rounding_k: float = 0.0   # and by rounding_k * max|candidate32 - candidate64| (the input's own rounding)
    overrides: tuple[tuple[str, float, float, float], ...] = ()   # (tap glob, atol, rtol, scale), first match wins
    floors: tuple[tuple[str, float], ...] = ()   # (tap glob, noise floor), first match wins: calibrated profiles
    calibrated_on: Optional[dict] = None   # calibrated profiles: parity.environment.machine() of the measuring machine

    def floor(self, tap: str) -> Optional[float]:
        """The calibrated noise floor of ``tap`` (max abs), or None for an uncalibrated profile."""
        return next((f for pattern, f in self.floors if fnmatchcase(tap, pattern)), None)

    def tolerance(self, tap: str, ref: Optional[np.ndarray] = None,
                  rounding: Optional[float] = None) -> tuple[float, float]:
        """(atol, rtol) for ``tap``; given the reference values, atol includes the scale term, and
        given the candidate's measured float32 rounding on these inputs, the rounding term."""
        atol, rtol, scale = next(((a, r, sc) for pattern, a, r, sc in self.overrides if fnmatchcase(tap, pattern)),
                                 (self.atol, self.rtol, self.scale))
        if scale and ref is not None and np.size(ref):
            finite = np.abs(np.asarray(ref, np.float64))
            finite = finite[np.isfinite(finite)]
            atol += scale * float(finite.max()) if finite.size else 0.0
        if self.rounding_k and rounding and np.isfinite(rounding):   # a NaN run measures no rounding
            # Calibrated profiles: the floor measured elsewhere, or this machine's own float32 rounding on these
            # very inputs, whichever is larger (a file from another machine never makes a tap stricter than its
            # arithmetic here); other profiles add the rounding term.
            atol = max(atol, self.rounding_k * rounding) if self.floors else atol + self.rounding_k * rounding
        return atol, rtol

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "reference": "tensorflow",
            "rule": "|pytorch - tensorflow| <= atol + rtol * |tensorflow|, for every element; "
                    "a tap's atol = profile atol + scale * max|tensorflow| over the tap "
                    "+ rounding_k * max|pytorch float32 - pytorch float64| over the tap; a reduced precision "
                    "tier (--precision) adds 2 * max|pytorch as run - pytorch float64|, held to 16 * (u_tier / "
                    "u_fp32) * max(float32 rounding, u_fp32 * max|tensorflow|) (parity/numerics/precision.py)",
            "atol": self.atol, "rtol": self.rtol, "scale": self.scale, "rounding_k": self.rounding_k,
            "overrides": [{"taps": p, "atol": a, "rtol": r, "scale": sc} for p, a, r, sc in self.overrides],
            **({"floors": [{"taps": p, "floor": f} for p, f in self.floors]} if self.floors else {}),
            **({"calibrated_on": self.calibrated_on} if self.floors else {}),
        }


PROFILES = {
    "fp32-cpu": Profile(
        name="fp32-cpu",
        description=(
            "float32 on CPU on both sides. Per tap: atol 1e-5 + 3e-5 * max|tensorflow|, rtol 1e-5. "
            "Measured on real MiniLM-L6 weights over 12 input shapes (batch 1-16, sequence 7-512): "
            "PyTorch vs TF errors reach 2.3e-4 in attention outputs of magnitude 21 at sequence 256-512, "
            "where TF float32 is 3-4x further from a float64 run than PyTorch float32 is (pure rounding); "
            "TF differs from itself by up to 2.3e-4 between oneDNN on and off. Attention scores use a fixed "
            "atol 2e-4 instead of the scale term: the -10000 mask adder would dominate max|r|; rtol covers "
            "its float32 ulp (1e-3). The activation output (intermediate) gets a fixed atol 1.5e-4: its largest "
            "rounding error measured is 6.7e-5, while the tanh-vs-erf GELU mix-up it must localise shows 4.7e-4 "
            "there on the same weights. Every tap's atol also grows by 8x the PyTorch side's own float32 "
            "rounding on these very inputs (max |float32 - float64 run|): ill-conditioned inputs or tiny "
            "models (e.g. a LayerNorm over 2 features) round far more than the magnitudes suggest, and TF "
            "float32 was measured up to 4x further from float64 than PyTorch float32."),
        atol=1e-5, rtol=1e-5, scale=3e-5, rounding_k=8.0,
        overrides=(("layer_*/attention/scores", 2e-4, 1e-5, 0.0),
                   ("layer_*/intermediate", 1.5e-4, 1e-5, 0.0))),
    "fp32-cpu-strict": Profile(
        name="fp32-cpu-strict",
        description=(
            "float32 on CPU, fixed tolerances: atol 2e-5, rtol 1e-5 (attention scores and the FFN output "
            "projection: atol 1e-4). Sensitive enough for sub-noise faults such as one LayerNorm with epsilon "
            "1e-5, for inputs of up to ~128 tokens on real weights; on longer inputs float32 rounding in the "
            "official graph alone exceeds it (measured on MiniLM-L6 at 256-512 tokens: 2.3e-4)."),
        atol=2e-5, rtol=1e-5,
        overrides=(("layer_*/attention/scores", 1e-4, 1e-5, 0.0), ("layer_*/output/dense", 1e-4, 1e-5, 0.0))),
}


CALIBRATION_DIR = os.path.join(PACKAGE_DIR, "calibration")
CALIBRATION_K = 4.0


def calibrated_profile(path: str, k: float = CALIBRATION_K, name: Optional[str] = None) -> Profile:
    """A profile allowing ``k`` x each tap's noise floor (``python -m parity.diagnose.calibrate``).

    Layer taps take the largest floor of their kind over the calibrated layers (layers round
    alike, and deeper models have layers the calibration lacks). A zero floor (the lookups are
    exact) allows 1e-9: nothing but an exact match, short of dividing by zero.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    taps = data["taps"]
    machine = (data.get("environment") or {}).get("machine")
    floors: dict[str, float] = {}
    for tap, v in taps.items():
        key = "layer_*/" + tap.split("/", 1)[1] if tap.startswith("layer_") else tap
        floors[key] = max(floors.get(key, 0.0), float(v["floor"]))
    floors = tuple(floors.items())
    name = name or "calibrated-" + os.path.splitext(os.path.basename(path))[0]
    return Profile(
        name=name,
        description=(f"{k:g} x the per-tap noise floor of {os.path.relpath(path, os.path.dirname(CALIBRATION_DIR))} "
                     "(max of TF oneDNN on vs off, TF 1 vs all threads, PyTorch float32 vs float64, "
                     "measured on its inputs, on " + (machine or {}).get("cpu", "an unlabelled machine") +
                     "), or k x this machine's own PyTorch float32-vs-float64 rounding on the inputs compared, "
                     "whichever is larger; other taps fall back to fp32-cpu's tolerance"),
        atol=2e-5, rtol=1e-5, rounding_k=k,
        overrides=tuple((tap, k * max(fl, 1e-9), 0.0, 0.0) for tap, fl in floors),
        floors=floors, calibrated_on=machine)


for _file in sorted(os.listdir(CALIBRATION_DIR)) if os.path.isdir(CALIBRATION_DIR) else ():
    if _file.endswith(".json"):
        _profile = calibrated_profile(os.path.join(CALIBRATION_DIR, _file))
        PROFILES[_profile.name] = _profile


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def compare_tap(name: str, ref: Optional[np.ndarray], cand: Optional[np.ndarray], profile: Profile,
                rounding: Optional[float] = None, tier=None, tier_rounding: Optional[float] = None,
                reference_rounding: Optional[float] = None) -> dict:
    """The contract's per-tap record; ``reason`` says why a tap failed (None when it passed).

    ``rounding``: max |candidate float32 - candidate float64| of this tap on these inputs, for
    profiles with a rounding term (recorded in the row either way). ``tier`` (a
    ``parity.numerics.precision.Tier``) and ``tier_rounding`` (max |candidate as run - its float64 twin|):
    a reduced-precision candidate's own rounding widens atol, up to the tier's ceiling (precision.py).
    ``reference_rounding``: a reference recorded in TF32 (a golden file from a GPU) widens atol by its
    rounding, estimated as the candidate's own under the exact TF32 emulation."""
    atol, rtol = profile.tolerance(name, ref, rounding)
    if tier is not None and tier.reduced and tier_rounding is not None and np.isfinite(tier_rounding):
        atol += tier.margin * tier_rounding
    if reference_rounding is not None and np.isfinite(reference_rounding):
        atol += MARGIN * reference_rounding   # the reference's own tier rounding, with the candidate's margin
    row = {"name": name, "shape": None, "max_abs": None, "max_rel": None, "mean_abs": None, "rms": None,
           "cosine": None, "atol": atol, "rtol": rtol, "passed": False, "worst_index": None,
           "tol_ratio": None, "reason": None, "rounding": rounding,
           **({"reference_rounding": reference_rounding} if reference_rounding is not None else {})}
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
    # Each statistic in float64, with as few full-size temporaries alive at once as the formulas allow
    # (in-place steps are the same IEEE operations in the same order: the numbers do not change); an
    # attention tap at 16 x 512 is 400 MB per float64 copy.
    diff = np.subtract(c, r)
    np.abs(diff, out=diff)                                   # |c - r|
    with np.errstate(invalid="ignore"):
        ratio = np.abs(r)
        ratio *= rtol
        ratio += atol                                        # allowed = atol + rtol * |r|
        np.divide(diff, ratio, out=ratio)                    # ratio = |c - r| / allowed
    ratio[~np.isfinite(ratio)] = np.inf
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst_ratio, over = float(ratio[worst]), int((ratio > 1).sum())
    del ratio
    with np.errstate(invalid="ignore", over="ignore"):   # Inf * 0: the cosine is None then anyway
        norm = np.linalg.norm(r.ravel()) * np.linalg.norm(c.ravel())
    finite = not bad
    rel = np.abs(r)
    np.maximum(rel, REL_EPS, out=rel)
    np.divide(diff, rel, out=rel)                            # |c - r| / max(|r|, REL_EPS)
    max_rel = _f(rel.max())
    del rel
    all_zero = not diff.any()
    row.update(
        max_abs=_f(diff.max()),
        max_rel=max_rel,
        mean_abs=_f(diff.mean()),
        rms=_f(np.sqrt(np.mean(np.square(diff, out=diff)))),
        cosine=_f(np.dot(r.ravel(), c.ravel()) / norm) if finite and norm > 0 else (1.0 if finite and all_zero else None),
        worst_index=[int(i) for i in worst],
        worst_values={"tensorflow": _f(r[worst]), "pytorch": _f(c[worst])},
        tol_ratio=_f(worst_ratio),
    )
    if bad:
        row["non_finite"] = {side: non_finite(a) for side, a in (("tensorflow", r), ("pytorch", c)) if side in bad}
        row["reason"] = "; ".join(f"{side} holds {_count_words(nf)}, first at {nf['first_index']}"
                                  for side, nf in row["non_finite"].items())
    elif worst_ratio > 1:
        row["reason"] = (f"{over} of {r.size} elements over tolerance; worst at "
                         f"{row['worst_index']}: tensorflow {r[worst]:.9g}, pytorch {c[worst]:.9g}")
    else:
        row["passed"] = True
    if tier is not None and tier_rounding is not None:
        _check_tier_ceiling(row, tier, rounding, tier_rounding, r)
    floor = profile.floor(name)
    if floor is not None:   # calibrated profiles: every tap's error against its noise floor
        row["floor"] = floor
        err = row["max_abs"]
        row["error_over_floor"] = None if err is None else (0.0 if err == 0 else (err / floor if floor else None))
    return row


def non_finite(a: np.ndarray) -> dict:
    """How many NaN / +Inf / -Inf ``a`` holds, and the first (C order) non-finite element's index."""
    flat = np.flatnonzero(~np.isfinite(a))
    return {"nan": int(np.isnan(a).sum()), "inf": int(np.isposinf(a).sum()), "-inf": int(np.isneginf(a).sum()),
            "first_index": [int(i) for i in np.unravel_index(int(flat[0]), a.shape)] if flat.size else None}


def _count_words(nf: dict) -> str:
    return " and ".join(f"{nf[k]} {label}" for k, label in (("nan", "NaN"), ("inf", "+Inf"), ("-inf", "-Inf"))
                        if nf[k])


def _f(x) -> Optional[float]:
    """JSON-safe float: NaN and Inf become None (JSON has neither)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _check_tier_ceiling(row: dict, tier, rounding: Optional[float], tier_rounding: float, r: np.ndarray) -> None:
    """Fails a tap whose candidate rounding exceeds what its tier's unit roundoff allows (precision.py)."""
    finite = np.abs(r[np.isfinite(r)])
    ceiling = tier.ceiling(rounding or 0.0, float(finite.max()) if finite.size else 0.0)
    row["tier_rounding"], row["tier_ceiling"] = _f(tier_rounding), ceiling
    if row["passed"] and not tier_rounding <= ceiling:   # NaN counts as past it
        row["passed"] = False
        row["reason"] = (f"the candidate's own {tier.name} rounding (max |candidate - its float64 twin| "
                         f"{tier_rounding:.3g}) exceeds what {tier.name}'s unit roundoff allows here "
                         f"({ceiling:.3g}): overflow, saturation, or arithmetic below {tier.name}")
