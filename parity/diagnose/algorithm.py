"""Stages 1-6 of the diagnosis: weights, local versus inherited error per block, the precision ladder,
noise floors, hints and per-tap structure (the package docstring says how each works)."""
from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Optional

import numpy as np

from bert_torch.modeling import BertConfig

from parity.numerics.hints import CAUSES, Context, activation_hints, compare_weights, non_finite_hint, weight_hints
from parity.inputs import Inputs
from parity.numerics.metrics import Profile, compare_tap
from parity.numerics.precision import precision_hints
from parity.compare.core import RunStore
from parity.sides.base import complete
from parity.diagnose.blocks import Block, blocks, float64_twin, local_taps, schedule
from parity.diagnose.render import _g

# Precision ladder: |TF32 - PT64| this many times |PT32 - PT64| (and over the floor) means the
# formulas differ; below it, both sides are rounding the same formula.
LADDER_FACTOR = 30.0


def _positions(name: str, shape: tuple, mask: np.ndarray) -> Optional[np.ndarray]:
    """Boolean array of ``shape``: True where every position the element depends on is real."""
    real = mask.astype(bool)
    B, T = real.shape
    if len(shape) == 3 and shape[:2] == (B, T):                       # [B,T,H] / [B,T,I]
        return np.broadcast_to(real[:, :, None], shape)
    if len(shape) == 4 and name.endswith(("/scores", "/probs")):      # [B,N,T,T]: query and key real
        return np.broadcast_to(real[:, None, :, None] & real[:, None, None, :], shape)
    if len(shape) == 4:                                               # [B,N,T,D]
        return np.broadcast_to(real[:, None, :, None], shape)
    if len(shape) == 2 and shape == (B, T):                           # squad logits [B,T]
        return real
    return None                                                       # no padded positions ([T,H], [B,H], [B,C])


def _stats(d: np.ndarray) -> Optional[dict]:
    if d.size == 0:
        return None
    finite = d[np.isfinite(d)]
    return {"count": int(d.size), "max_abs": float(finite.max()) if finite.size else None,
            "mean_abs": float(finite.mean()) if finite.size else None, "nonfinite": int(d.size - finite.size)}


def structured(name: str, ref: np.ndarray, cand: np.ndarray, mask: np.ndarray) -> dict:
    """Error statistics over real positions and over padded ones; attention taps per head."""
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(cand, np.float64) - np.asarray(ref, np.float64))
    d = np.where(np.isnan(d), np.inf, d)
    real = _positions(name, d.shape, mask)
    out = {"real": _stats(d if real is None else d[real]), "padded": None if real is None else _stats(d[~real])}
    if "/attention/" in name and d.ndim == 4:
        per_head = np.moveaxis(d, 1, 0).reshape(d.shape[1], -1)      # [B,N,...] -> [N, B*...]
        out["per_head_max_abs"] = [float(x) if np.isfinite(x) else None for x in per_head.max(axis=1)]
    return out


def check(name: str, ref, cand, profile: Profile, rounding: Optional[float] = None, widen: float = 0.0) -> dict:
    """compare_tap's verdict and worst error only (no cosine, no norms): for the local runs.
    ``widen``: a precision tier's own rounding term (parity/numerics/precision.py), added to atol."""
    atol, rtol = profile.tolerance(name, ref, rounding)
    atol += widen
    out = {"name": name, "max_abs": None, "tol_ratio": None, "passed": False}
    if ref is None or cand is None or np.shape(ref) != np.shape(cand) or np.size(ref) == 0:
        return out
    r = np.asarray(ref, np.float64)
    d = np.abs(np.asarray(cand, np.float64) - r)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = d / (atol + rtol * np.abs(r))
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)   # NaN, Inf and 0/0 all fail
    worst = float(ratio.max())
    finite = bool(np.isfinite(d).all())
    out.update(max_abs=float(d.max()) if finite else None, tol_ratio=worst if np.isfinite(worst) else None,
               passed=finite and worst <= 1)
    return out


def _maxabs(a, b) -> Optional[float]:
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.max()) if d.size and np.isfinite(d).all() else None


def _roundings(c: Mapping, c64: Mapping) -> dict:
    """Per tap, max |c - c64| (None where not comparable or not finite); each tap read once."""
    return {t: _maxabs(c[t], c64.get(t)) for t in c}


def _ratio(err: Optional[float], floor: Optional[float]) -> Optional[float]:
    if err is None or floor is None:
        return None
    return 0.0 if err == 0 else (err / floor if floor > 0 else None)


class Diagnosis(dict):
    """The diagnosis: a dict (what ``diagnosis.json`` holds) and, for ``write_repro``, the arrays it was
    made from (``repro``: None when the activations did not run)."""
    repro: Optional["ReproArrays"] = None


@dataclasses.dataclass
class ReproArrays:
    ref: dict                       # the reference's taps
    pt_local: dict                  # the candidate's taps, each block fed the reference's input
    inputs: Inputs
    blocks: list
    torch_weights: Optional[Mapping[str, np.ndarray]]


@dataclasses.dataclass
class Runs:
    """Every run a diagnosis compares: the reference and the candidate end to end and block by block
    (each fed the other's block inputs), the candidate's float64 twin (and plain-float32 twin, for a
    reduced tier), and the per-tap rounding the profile and the tier allow for."""
    inputs: Inputs
    blocks: list
    ref: dict
    cand: dict
    pt_local: dict
    tf_local: dict
    twin: Optional[object]          # the float64 side (None: no ladder)
    pt32: dict
    pt64: dict
    rounding: dict
    tier_rounding: dict
    tier: Optional[object]
    mask: np.ndarray
    store: RunStore                 # where the runs are kept (memory, or spilled to disk)

    def widen(self, t: str) -> float:
        """A reduced tier's own rounding at tap ``t`` (times its margin): added to local budgets."""
        if self.tier is None or not self.tier.reduced:
            return 0.0
        return self.tier.margin * (self.tier_rounding.get(t) or 0.0)


def ladder(tf32, pt32, pt64, floor) -> dict:
    """The precision ladder at one tap: |TF32 - PT64| against |PT32 - PT64| (and the floor)."""
    tf_vs, pt_vs = _maxabs(tf32, pt64), _maxabs(pt32, pt64)
    reading = None
    if tf_vs is not None and pt_vs is not None:
        reading = "formulas differ" if tf_vs > LADDER_FACTOR * max(pt_vs, floor) else "rounding"
    return {"tf32_vs_pt64": tf_vs, "pt32_vs_pt64": pt_vs, "reading": reading}


def diagnose(reference, candidate, inputs: Inputs, profile: Profile, *, config: BertConfig,
             tf_weights: Mapping[str, np.ndarray], torch_weights: Optional[Mapping[str, np.ndarray]] = None,
             head: Optional[str] = None, candidate64="auto", floors: Optional[Mapping[str, float]] = None,
             candidate_problem: Optional[str] = None, store: Optional[RunStore] = None) -> Diagnosis:
    """The diagnosis of ``candidate`` (PyTorch) against ``reference`` (TensorFlow).

    ``tf_weights``: the checkpoint's variables under PyTorch file names and layouts
    (``bert_torch.convert.tf_to_torch``); ``torch_weights``: the tensors the PyTorch side
    holds (default: the candidate's own, ``Side.tensors``). ``candidate`` may be None when its weights
    could not be loaded (``candidate_problem`` says why): the diagnosis then rests on the
    weights alone. ``candidate64``: a float64 side for the ladder ("auto": the candidate's
    model in float64). ``floors``: calibrated per-tap noise floors (tap -> max abs). ``store``: where the
    runs are kept (``parity.compare.core.RunStore``: in memory by default, or spilled to disk); it must outlive
    ``write_repro``, which reads the culprit block's taps from it.
    """
    t0 = time.perf_counter()
    reference, candidate = complete(reference), complete(candidate)
    if torch_weights is None and candidate is not None:
        torch_weights = candidate.tensors()
    weights = compare_weights(tf_weights, torch_weights or {})
    hints = weight_hints(weights, tf_weights, torch_weights or {}, config.initializer_range)
    if not weights["differences"] and all(np.asarray(torch_weights[n]).dtype == np.asarray(v).dtype
                                          for n, v in tf_weights.items()):
        # The checkpoint's weights are the candidate's bit for bit: what follows reads their values only, and
        # one copy is enough (a caller that handed over its only reference frees the other here).
        tf_weights = torch_weights
    diagnosis = Diagnosis(
        verdict="pass", culprit=None, culprit_block=None, hints=hints, first_divergence=None,
        profile=profile.to_dict(), inputs=dict(inputs.meta),
        sides={"reference": reference.description, "candidate": candidate.description if candidate else None},
        weights=weights, blocks=[], taps=[], ladder_factor=LADDER_FACTOR, stages={"weights": "ran"}, causes=CAUSES)
    weights_bad = bool(weights["differences"])
    if weights_bad:
        diagnosis["verdict"], diagnosis["culprit"] = "fail", "weights"
        first = next((h for h in hints if h["block"]), None)
        diagnosis["culprit_block"] = first["block"] if first else None
    if candidate is None:
        diagnosis["stages"]["activations"] = f"not run: {candidate_problem or 'no PyTorch side'}"
        if not weights_bad:   # never a clean verdict for what was not checked
            diagnosis["verdict"] = "fail"
        return _finish(diagnosis, hints, t0)

    runs = run_sides(reference, candidate, inputs, blocks(config.num_hidden_layers, head), profile, candidate64,
                     store or RunStore(inputs))
    diagnosis["sides"]["reference"] = reference.description   # a worker's side knows it once it has run
    diagnosis["stages"].update(activations="ran", local_pytorch="ran (1 run)" if candidate.capabilities.computed
                               else "ran", local_tensorflow=f"ran ({len(schedule(runs.blocks))} runs)",
                               precision_ladder="ran (end to end)" if runs.twin is not None
                               else "not run: no float64 PyTorch side")
    hints[:0] = precision_hints(list(runs.ref) + [t for t in runs.cand if t not in runs.ref], runs.ref, runs.cand,
                                runs.pt32, runs.pt64, runs.tier) if runs.pt64 else []
    if runs.tier is not None:
        diagnosis["precision"] = runs.tier.to_dict(str(candidate.device))
    rows, block_rows = [], []
    for b in runs.blocks:
        block_taps, block_row = judge_block(b, runs, profile, floors)
        rows += block_taps
        block_rows.append(block_row)
    diagnosis["taps"], diagnosis["blocks"] = rows, block_rows
    diagnosis["first_divergence"] = next((r["name"] for r in rows if not r["passed"]), None)
    diagnosis.repro = ReproArrays(runs.ref, runs.pt_local, inputs, runs.blocks, torch_weights)
    block_of_tap = {r["name"]: r["block"] for r in rows}
    nf = non_finite_hint([r["name"] for r in rows], runs.ref, runs.cand, block_of_tap.get,
                         {"tensorflow": tf_weights, "pytorch": torch_weights})
    if nf:   # a NaN/Inf explains everything downstream: name where it entered, blame no formula
        diagnosis["verdict"] = "fail"
        if nf["block"]:
            _blame(diagnosis, nf["block"], weights_bad)
        return _finish(diagnosis, [nf] + hints, t0)
    suspects = find_suspects(diagnosis, runs, rows, block_rows)
    for br in suspects:
        hints.extend(block_hints(br, runs, rows, profile, tf_weights, candidate.gelu_names, hints))
    if suspects or diagnosis["first_divergence"]:
        diagnosis["verdict"] = "fail"
        block = suspects[0]["name"] if suspects else next(r["block"] for r in rows if not r["passed"])
        if not suspects:   # every block within budget and rounding alike: the errors add up
            hints.append(_ladder_hint(next(x for x in runs.blocks if x.name == block),
                                      [r for r in rows if r["block"] == block and not r["passed"]]))
        _blame(diagnosis, block, weights_bad)
    return _finish(diagnosis, hints, t0)


def _blame(diagnosis: Diagnosis, block: str, weights_bad: bool) -> None:
    if diagnosis["culprit"] != "weights":   # bit-identical weights are never the culprit
        diagnosis["culprit"] = block
    if diagnosis["culprit_block"] is None or not weights_bad:
        diagnosis["culprit_block"] = block


def _finish(diagnosis: Diagnosis, hints: list, t0: float) -> Diagnosis:
    diagnosis["hints"] = merge_hints(hints)
    diagnosis["seconds"] = round(time.perf_counter() - t0, 3)
    return diagnosis


def run_sides(reference, candidate, inputs: Inputs, bs: list, profile: Profile, candidate64="auto",
              store: Optional[RunStore] = None) -> Runs:
    """Stage 2's and 3's runs (see ``Runs``), each kept by ``store`` (in memory, or spilled to disk)."""
    store = store or RunStore(inputs)
    # The candidate first, so that the reference's runs come one after the other and it can let go of what
    # it holds before the float64 twin (the largest model of all) is made: a TF worker process and its
    # copy of the weights (parity/sides/tf_worker.py). The runs are independent; the order changes no number.
    cand = store.collect(candidate, "candidate")
    ref = store.collect(reference, "reference")
    tf_local = local_taps(reference, inputs, cand, bs, store, "local-reference")
    reference.release()
    pt_local = local_taps(candidate, inputs, ref, bs, store, "local-candidate")
    twin = float64_twin(candidate) if candidate64 == "auto" else candidate64
    pt64 = store.collect(twin, "float64") if twin is not None else {}
    # The candidate's own float32 rounding per tap, for profiles whose tolerance includes it, and for a
    # precision tier its rounding as run (parity/numerics/precision.py).
    twin32 = candidate.float32() if twin is not None else None
    pt32 = store.collect(twin32, "float32") if twin32 is not None else cand
    rounding = _roundings(pt32, pt64) if profile.rounding_k else {}
    tier_rounding = (rounding if pt32 is cand else _roundings(cand, pt64)) if profile.rounding_k else {}
    return Runs(inputs, bs, ref, cand, pt_local, tf_local, twin, pt32, pt64, rounding, tier_rounding,
                candidate.tier, np.asarray(inputs.input_mask), store)


def judge_block(b: Block, runs: Runs, profile: Profile, floors: Optional[Mapping[str, float]]) -> tuple[list, dict]:
    """One block's tap rows (end to end, local both ways, floor, ladder, structure) and its row: "ok",
    "local error" (over budget fed the other side's input) or "inherited error"."""
    rows, e2e, loc, tfl = [], [], [], []
    for t in b.taps:   # each run's tap read once (a spilled run reads it from disk)
        ref_t, cand_t, pt64_t = runs.ref.get(t), runs.cand.get(t), runs.pt64.get(t)
        e = compare_tap(t, ref_t, cand_t, profile, runs.rounding.get(t), runs.tier, runs.tier_rounding.get(t))
        l = check(t, ref_t, runs.pt_local.get(t), profile, runs.rounding.get(t), runs.widen(t))  # noqa: E741
        r = check(t, runs.tf_local.get(t), cand_t, profile, runs.rounding.get(t), runs.widen(t))
        e2e.append(e), loc.append(l), tfl.append(r)
        row = {k: e[k] for k in ("name", "shape", "max_abs", "max_rel", "cosine", "atol", "rtol", "passed",
                                 "worst_index", "tol_ratio", "reason")}
        row["block"] = b.name
        # float32's resolution at the tap's scale: no floor is finer than that.
        resolution = float(np.abs(ref_t).max()) * 2.0 ** -24 if ref_t is not None and ref_t.size else 0.0
        pt_vs = _maxabs(cand_t, pt64_t)
        calibrated = (floors or {}).get(t, profile.floor(t))
        row["floor"] = max(x for x in (pt_vs, calibrated, resolution) if x is not None)
        row["error_over_floor"] = _ratio(e["max_abs"], row["floor"])
        row["ladder"] = ladder(ref_t, cand_t, pt64_t, row["floor"])
        row["local"] = {
            "pytorch_on_tf_inputs": {"max_abs": l["max_abs"], "tol_ratio": l["tol_ratio"], "passed": l["passed"]},
            "tf_on_pytorch_inputs": {"max_abs": r["max_abs"], "tol_ratio": r["tol_ratio"], "passed": r["passed"]},
            "resolution": resolution,
        }
        if ref_t is not None and cand_t is not None and np.shape(ref_t) == np.shape(cand_t):
            row.update(structured(t, ref_t, cand_t, runs.mask))
        rows.append(row)
    status = "ok"
    if not all(l["passed"] for l in loc) or not all(r["passed"] for r in tfl):
        status = "local error"
    elif not all(e["passed"] for e in e2e):
        status = "inherited error"

    def summary(recs: list, failing: bool = True) -> dict:
        w = max(recs, key=lambda x: -1 if x["tol_ratio"] is None else x["tol_ratio"])
        out = {"passed": all(x["passed"] for x in recs), "worst_tap": w["name"], "max_abs": w["max_abs"],
               "tol_ratio": w["tol_ratio"]}
        return {**out, "failing": [x["name"] for x in recs if not x["passed"]]} if failing else out

    return rows, {"name": b.name, "input": b.input, "output": b.output, "status": status,
                  "local_pytorch": summary(loc), "local_tensorflow": summary(tfl),
                  "end_to_end": summary(e2e, failing=False)}


def find_suspects(diagnosis: Diagnosis, runs: Runs, rows: list, block_rows: list) -> list:
    """The culprit candidates: the blocks over their budget locally. When every block is within its
    tolerance yet errors add up past it downstream, the first block whose own ladder says "formulas
    differ" (a real difference too small to fail alone); else none (it is rounding)."""
    suspects = [br for br in block_rows if br["status"] == "local error"]
    if suspects or not diagnosis["first_divergence"] or runs.twin is None:
        return suspects
    # Only needed here (a float64 run): each block alone, fed TF's input, TF32 and PT32 each against
    # PT64 on that same input.
    pt64_local = local_taps(runs.twin, runs.inputs, runs.ref, runs.blocks, runs.store, "local-float64")
    diagnosis["stages"]["precision_ladder"] = "ran (end to end and per block)"
    for r in rows:
        t = r["name"]
        local = runs.pt_local.get(t)
        floor = max(x for x in (_maxabs(local, pt64_local.get(t)), r["local"]["resolution"]) if x is not None)
        r["local"]["ladder"] = ladder(runs.ref.get(t), local, pt64_local.get(t), floor)
    for br in block_rows:
        br["local_ladder"] = {"formulas_differ": [r["name"] for r in rows if r["block"] == br["name"]
                                                  and r["local"]["ladder"]["reading"] == "formulas differ"]}
    suspects = [br for br in block_rows if br["local_ladder"]["formulas_differ"]][:1]
    for br in suspects:
        br["status"] = "local error (formula differs, under tolerance)"
    return suspects


def block_hints(br: dict, runs: Runs, rows: list, profile: Profile, tf_weights, gelu_names, hints: list) -> list:
    """The hints for a suspect block: the known signatures (``parity.numerics.hints.activation_hints``), else what
    its precision ladder says."""
    failing = sorted(set(br["local_pytorch"]["failing"]) | set(br["local_tensorflow"]["failing"])
                     ) or br.get("local_ladder", {}).get("formulas_differ", [])
    b = next(x for x in runs.blocks if x.name == br["name"])
    ctx = Context(block=b.name, failing=failing, ref=runs.ref, local=runs.pt_local, input_mask=runs.mask,
                  weights=tf_weights, block_input=b.input,
                  tolerance=lambda t: profile.tolerance(t, runs.ref.get(t), runs.rounding.get(t)),
                  gelu_names=gelu_names)
    found = activation_hints(ctx)
    if not found and not any(h["block"] == b.name for h in hints):
        found = [_ladder_hint(b, [r for r in rows if r["block"] == b.name and r["name"] in failing], local=True)]
    return found


def merge_hints(hints: list) -> list:
    """One hint per cause: the first (in forward order) keeps its evidence, the others' blocks
    are listed under ``also_in`` (an erf GELU shows in every layer; the first one is the news)."""
    out, seen = [], {}
    for h in hints:
        if h["cause"] in seen:
            first = seen[h["cause"]]
            if h["block"] and h["block"] != first["block"] and h["block"] not in first["also_in"]:
                first["also_in"].append(h["block"])
            if h["cause"] in ("missing_weights", "unexpected_weights", "weights_differ") and h["evidence"] not in first["evidence"]:
                first["evidence"] += "; " + h["evidence"]
            continue
        seen[h["cause"]] = h = dict(h, also_in=[])
        out.append(h)
    return out


def _ladder_hint(b: Block, failing_rows: list, local: bool = False) -> dict:
    """No known signature: say what the precision ladder says about the worst failing tap."""
    from parity.numerics.hints import hint
    # The per-block ladder exists only when it was needed (see diagnose); else the end-to-end one.
    key = (lambda r: r["local"].get("ladder") or r["ladder"]) if local else (lambda r: r["ladder"])
    rows = [r for r in failing_rows if key(r)["reading"]] or failing_rows
    if not rows:
        return hint("formula_difference", b.name, f"{b.name} fails locally; no tap-level evidence")
    # The first tap (in forward order) whose formula differs is where the block goes wrong.
    r = next((x for x in rows if key(x)["reading"] == "formulas differ"), None) or \
        max(rows, key=lambda x: -1 if x["tol_ratio"] is None else x["tol_ratio"])
    lad = key(r)
    nums = dict(tap=r["name"], tf32_vs_pt64=lad["tf32_vs_pt64"], pt32_vs_pt64=lad["pt32_vs_pt64"], floor=r["floor"])
    if lad["reading"] == "rounding":
        return hint("rounding", b.name, f"{r['name']}: |TF32 - PT64| {_g(lad['tf32_vs_pt64'])} is of the size of "
                    f"|PT32 - PT64| {_g(lad['pt32_vs_pt64'])} (floor {_g(r['floor'])}): both sides round the same "
                    f"formula; the tolerance is tighter than float32 allows here", **nums)
    return hint("formula_difference", b.name, f"{r['name']}: |TF32 - PT64| {_g(lad['tf32_vs_pt64'])} against "
                f"|PT32 - PT64| {_g(lad['pt32_vs_pt64'])}: the two sides compute different formulas in this block "
                f"(no known signature matched; compare it with the official modeling.py)", **nums)
