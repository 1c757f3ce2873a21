"""The fine-tuning checks' tolerances and rules, each with its reason (see the package docstring): the
optimizer's and the gradients' bounds, the per-step loss rule of the deterministic runs, and the multi-seed
rule (Welch's t with floors), with its false-alarm rate and power measured by simulation."""
from __future__ import annotations

from typing import Optional

import numpy as np

OPT_ATOL, OPT_RTOL, LR_RTOL, LR_ATOL = 1e-7, 2e-6, 1e-5, 1e-7   # LR_ATOL: a fraction of the initial lr


GRAD_RTOL, GRAD_ATOL, GRAD_COS = 1e-4, 1e-7, 0.9999


LOSS_RTOL, LOSS_REPORT = 1e-3, 1e-4


LOSS_DRIFT = 1e-2   # of the initial loss: see loss_tolerance


def loss_agreement(pt_losses: list, tf_losses: list) -> tuple[list, object]:
    """Per-step relative loss difference (TF the reference) and the first step above LOSS_REPORT."""
    rel = [abs(a - b) / abs(b) for a, b in zip(pt_losses, tf_losses)]
    return rel, next((i for i, r in enumerate(rel) if r > LOSS_REPORT), None)


def _close(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[bool, float]:
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return bool(np.all(err <= atol + rtol * np.abs(b))), float(err.max()) if err.size else 0.0


def gradient_row(name: str, g: Optional[np.ndarray], ref: np.ndarray) -> dict:
    """One variable's gradient ``g`` against the reference gradient ``ref``, under the gradient rule:
    max|diff| <= GRAD_RTOL * max|ref| + GRAD_ATOL, cosine >= GRAD_COS, finite (parity.checks.ddp uses it too)."""
    if g is None or np.shape(g) != np.shape(ref):
        return {"variable": name, "passed": False, "problem": "missing or misshapen on the PyTorch side"}
    a, b = np.asarray(g, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    scale = float(np.abs(b).max())
    err = float(np.abs(a - b).max())
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.linalg.norm(b) > 0 else float(np.allclose(a, b))
    # The attention key bias has an exactly-zero gradient (it shifts every score of a query's
    # row by the same q.b, which softmax ignores): both sides give rounding noise ~1e-11 there,
    # so direction (cosine) is judged only for gradients well above atol.
    ok = err <= GRAD_RTOL * scale + GRAD_ATOL and (cos >= GRAD_COS or scale < 1e3 * GRAD_ATOL) \
        and bool(np.isfinite(a).all())
    return {"variable": name, "shape": list(np.shape(ref)), "max_abs_tf": scale, "max_abs_diff": err,
            "rel_to_max": err / max(scale, 1e-30), "cosine": cos, "passed": bool(ok),
            "tol_ratio": err / (GRAD_RTOL * scale + GRAD_ATOL)}


def loss_tolerance(tf_losses: list, pt_losses: list) -> dict:
    """The deterministic runs' per-step loss rule (TF the reference):

        |loss_pt(t) - loss_tf(t)| <= LOSS_RTOL * |loss_tf(t)| + LOSS_DRIFT * |loss_tf(0)|

    0.1% of the current loss, plus 1% of the initial loss for rounding drift. Why the second
    term: float32 rounding differences, amplified step after step by Adam's 1/sqrt(v), move the
    two runs' weights apart slowly, and the loss difference that drift causes does not shrink as
    the loss falls. Measured on the full runs: MRPC 343 steps, |Δloss| at most 1.4e-3 (2.1e-3 of
    the initial 0.69) while the loss fell to ~0.1, i.e. 7.3e-3 relative to the current loss;
    SQuAD 100 steps, 6.3e-3 (1.2e-3 of the initial 5.3). A relative bound alone (1e-3) held up to
    ~100 steps and failed both clean runs. Code faults show at once instead: the first 20 MRPC
    steps agree to 2e-7 relative, and planted optimizer faults fail (parity/test_finetune.py).
    Returns the fraction of its tolerance each step uses, the worst step, and the rule."""
    tf, pt = np.asarray(tf_losses, np.float64), np.asarray(pt_losses, np.float64)
    allowed = LOSS_RTOL * np.abs(tf) + LOSS_DRIFT * abs(tf[0])
    used = np.abs(pt - tf) / allowed
    rule = f"|loss_pt - loss_tf| <= {LOSS_RTOL:g} * |loss_tf| + {LOSS_DRIFT:g} * |initial loss_tf| at every step"
    return {"used": used, "worst": int(used.argmax()), "passed": bool(used.max() <= 1.0), "rule": rule,
            "max_abs": float(np.abs(pt - tf).max())}


SEED_FLOOR = 0.01


# The floors per metric: one point of accuracy/F1; 0.01 nats of mean dev cross-entropy (about 1.5%
# of MRPC's ~0.6 early in training), so that a few near-identical seeds cannot make the bound 0.
SEED_FLOORS = {"accuracy": SEED_FLOOR, "f1": SEED_FLOOR, "dev_loss": 0.01}


# The family-wise false-alarm rate of the multi-seed verdict: each metric is tested at SEED_ALPHA / (number of
# metrics) (Bonferroni), so two runs of one code path fail at most this often (measured by simulation:
# seed_rule_false_alarm_rate, and parity/test_finetune.py).
SEED_ALPHA = 0.05


def seed_rule(tf_values: list[float], pt_values: list[float], alpha: float = SEED_ALPHA / len(SEED_FLOORS),
              floor: float = SEED_FLOOR) -> dict:
    """The gate's rule for metrics of seeded runs with dropout (which cannot agree run by run): Welch's
    t-test (scipy) of the two sides' means at level ``alpha``, with a floor:

        passed  <=>  |mean_pt - mean_tf| <= max(t_crit(1 - alpha/2, df) * se, floor)

    where se = sqrt(s_tf^2 / n_tf + s_pt^2 / n_pt) (sample standard deviations, ddof 1), df the
    Welch-Satterthwaite degrees of freedom, t_crit Student's t quantile: exactly "Welch's p >= alpha, or
    the difference is under the floor" (one point of accuracy/F1, so that a few identical seeds cannot make
    the bound 0). A fixed 2-sigma bound with 3 seeds a side ignores that se itself is estimated from 3
    values (df ~ 4): drawn from one distribution, it flags about 11.5% of runs; this rule flags ``alpha``
    per metric. With 3 seeds a side it detects shifts of a few seed standard deviations (power measured by
    simulation in ``seed_rule_power``), not subtle ones: those are the deterministic checks' job.
    """
    from scipy import stats
    a, b = np.asarray(tf_values, float), np.asarray(pt_values, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("seed_rule needs at least 2 runs per side")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))) if se > 0 else float("inf")
    t_crit = float(stats.t.ppf(1 - alpha / 2, df)) if se > 0 else 0.0
    bound = max(t_crit * se, floor)
    diff = float(b.mean() - a.mean())
    # Welch's two-sided p from the same se and df as the bound (scipy's ttest_ind computes the same number, the
    # test checks, but warns of "catastrophic cancellation" on near-identical runs, which are a result here).
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return {"mean_tf": float(a.mean()), "std_tf": float(a.std(ddof=1)), "mean_torch": float(b.mean()),
            "std_torch": float(b.std(ddof=1)), "diff": diff, "bound": bound, "p_value": p, "alpha": alpha,
            "df": df, "passed": abs(diff) <= bound}


def welch_fails(a: np.ndarray, b: np.ndarray, alpha: float, floor: float) -> np.ndarray:
    """seed_rule's decision, vectorised over rows: a [trials, n_a], b [trials, n_b] -> failed [trials]."""
    from scipy import stats
    va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
    se = np.sqrt(va + vb)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (va + vb) ** 2 / (va ** 2 / (a.shape[1] - 1) + vb ** 2 / (b.shape[1] - 1))
    bound = np.maximum(np.where(se > 0, stats.t.ppf(1 - alpha / 2, np.where(se > 0, df, 1.0)) * se, 0.0), floor)
    return np.abs(b.mean(axis=1) - a.mean(axis=1)) > bound


def _simulated_seed_verdicts(n: int, shift_sd: float, trials: int, seed: int) -> float:
    """The fraction of simulated multi-seed verdicts that fail: per trial, each of the SEED_FLOORS metrics
    drawn for ``n`` seeds a side from normals of sd 1 (PyTorch's shifted by ``shift_sd``; metrics
    independent, the worst case for the family-wise rate), judged by seed_rule's decision at floor 0."""
    rng = np.random.default_rng(seed)
    alpha = SEED_ALPHA / len(SEED_FLOORS)
    fails = np.zeros(trials, bool)
    for _ in SEED_FLOORS:
        fails |= welch_fails(rng.normal(0, 1, (trials, n)), rng.normal(shift_sd, 1, (trials, n)), alpha, 0.0)
    return float(fails.mean())


def seed_rule_false_alarm_rate(n: int = 3, trials: int = 100_000, seed: int = 0) -> float:
    """Two runs of one code path: how often the multi-seed verdict fails anyway (aim: <= SEED_ALPHA)."""
    return _simulated_seed_verdicts(n, 0.0, trials, seed)


def seed_rule_power(shift_sd: float, n: int = 3, trials: int = 100_000, seed: int = 0) -> float:
    """How often the verdict fails when every metric moves by ``shift_sd`` seed standard deviations."""
    return _simulated_seed_verdicts(n, shift_sd, trials, seed)
