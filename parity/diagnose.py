"""``python -m parity diagnose``: which block is wrong, why, and a repro that shows it.

    diagnosis = diagnose(reference, candidate, inputs, profile, config=..., tf_weights=..., torch_weights=...)

Stages, each in ``diagnosis.json`` (CONTRACT.md, ``diagnose``):

1. **Weights first**: every TF variable (mapped to its PyTorch name and layout) against the
   PyTorch tensor, expecting bit equality; every difference named, with a hint.
2. **Local versus inherited error**: each block (embeddings; per layer the attention and the
   feed-forward sub-blocks; pooler; head) is fed the *other* side's input to it. PyTorch gets
   TensorFlow's block inputs in ONE run (``Taps.computed`` keeps each injected block output as
   the model computed it); TensorFlow gets PyTorch's in two (a fed tensor cannot also be
   fetched as computed, so blocks alternate between runs). The culprit is the first block whose
   local error is over its budget (the profile's tolerance); later failing blocks only inherit.
3. **Precision ladder**: PyTorch in float64 as well; per tap |TF32 - PT64| beside |PT32 - PT64|.
4. **Noise floors**: per tap, max(|PT32 - PT64|, a calibration file's TF floors, float32's
   resolution of the tap); every tap shows error / floor.
5. **Hints** (``parity.hints``), checked for every locally failing block.
6. **Structure**: per tap, statistics over real and over padded positions; attention per head.
7. **Repro**: ``repro/`` with the failing block's TF inputs and outputs, its weights, and a
   standalone ``repro.py`` that shows the error with ``bert_torch`` alone.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import torch

from bert_torch._io import atomic_dir, dumps, read_json
from bert_torch.modeling import BertConfig
from bert_torch.taps import EMBEDDING_TAPS, LAYER_TAPS

from .compare import _atomic_write
from .hints import CAUSES, Context, activation_hints, compare_weights, non_finite_hint, weight_hints
from .inputs import Inputs
from .metrics import Profile, compare_tap
from .options import BadInput, add_compare_args, find_vocab, prepare
from .precision import Tier, precision_hints
from .report_render import fmt
from .sides import TorchSide

DIAGNOSIS_FILES = ("diagnosis.json", "diagnosis.md")
# Written beside them when the activations ran (and matplotlib is there, for the plots).
DIAGNOSIS_PICTURES = ("diagnosis.html", "diagnosis-growth.png", "diagnosis-heatmap.png")
# Precision ladder: |TF32 - PT64| this many times |PT32 - PT64| (and over the floor) means the
# formulas differ; below it, both sides are rounding the same formula.
LADDER_FACTOR = 30.0


@dataclass
class Block:
    name: str                  # embeddings, layer_3/attention, layer_3/ffn, pooler, classifier, squad
    input: Optional[str]       # the tap feeding it (None: token ids)
    taps: list = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.taps[-1] if self.name != "squad" else self.taps[0]


def blocks(num_layers: int, head: Optional[str] = None) -> list[Block]:
    """The blocks of a model in forward order; every contract tap belongs to exactly one."""
    out = [Block("embeddings", None, list(EMBEDDING_TAPS))]
    prev = "embeddings/output"
    for i in range(num_layers):
        att = [f"layer_{i}/{t}" for t in LAYER_TAPS if t.startswith("attention/")]
        ffn = [f"layer_{i}/{t}" for t in LAYER_TAPS if not t.startswith("attention/")]
        out += [Block(f"layer_{i}/attention", prev, att), Block(f"layer_{i}/ffn", att[-1], ffn)]
        prev = ffn[-1]
    out.append(Block("pooler", prev, ["pooler/output"]))
    if head == "classifier":
        out.append(Block("classifier", "pooler/output", ["classifier/logits"]))
    elif head == "squad":
        out.append(Block("squad", prev, ["squad/start_logits", "squad/end_logits"]))
    return out


def _outputs(b: Block) -> set:
    return {b.taps[-1]} if b.name != "squad" else set(b.taps)


def schedule(bs: list[Block]) -> list[list[Block]]:
    """Groups blocks into runs in which each block's input is injected and none of its own
    taps is (a fed tensor comes back as fed, not as computed)."""
    runs: list[list[Block]] = []
    for b in bs:
        for run in runs:
            injected = {x.input for x in run if x.input}
            if not (set(b.taps) & injected) and not (b.input and b.input in {t for x in run for t in x.taps}):
                run.append(b)
                break
        else:
            runs.append([b])
    return runs


def local_taps(side, inputs: Inputs, source: Mapping[str, np.ndarray], bs: list[Block]) -> dict:
    """Every block's taps as ``side`` computes them when fed ``source``'s input to that block."""
    if isinstance(side, TorchSide) or getattr(side, "supports_computed", False):
        computed: dict = {}
        inject = {b.input: source[b.input] for b in bs if b.input}
        values = side.run(inputs, inject=inject, computed=computed)
        return {t: computed.get(t, values.get(t)) for b in bs for t in b.taps}
    out = {}
    for run in schedule(bs):
        inject = {b.input: source[b.input] for b in run if b.input}
        values = side.run(inputs, inject=inject)
        out.update({t: values.get(t) for b in run for t in b.taps})
    return out


def float64_twin(side) -> Optional[TorchSide]:
    """The same PyTorch model in float64 (a deep copy keeps any patched attribute)."""
    return side.float64() if isinstance(side, TorchSide) else None


# ---------------------------------------------------------------------------------------------
# Statistics.

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
    ``widen``: a precision tier's own rounding term (parity/precision.py), added to atol."""
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


def _ratio(err: Optional[float], floor: Optional[float]) -> Optional[float]:
    if err is None or floor is None:
        return None
    return 0.0 if err == 0 else (err / floor if floor > 0 else None)


# ---------------------------------------------------------------------------------------------
# The diagnosis.

def diagnose(reference, candidate, inputs: Inputs, profile: Profile, *, config: BertConfig,
             tf_weights: Mapping[str, np.ndarray], torch_weights: Optional[Mapping[str, np.ndarray]] = None,
             head: Optional[str] = None, candidate64="auto", floors: Optional[Mapping[str, float]] = None,
             candidate_problem: Optional[str] = None) -> dict:
    """The diagnosis of ``candidate`` (PyTorch) against ``reference`` (TensorFlow).

    ``tf_weights``: the checkpoint's variables under PyTorch file names and layouts
    (``bert_torch.convert.tf_to_torch``); ``torch_weights``: the tensors the PyTorch side
    holds (default: the candidate model's own). ``candidate`` may be None when its weights
    could not be loaded (``candidate_problem`` says why): the diagnosis then rests on the
    weights alone. ``candidate64``: a float64 side for the ladder ("auto": the candidate's
    model in float64). ``floors``: calibrated per-tap noise floors (tap -> max abs).
    """
    t0 = time.perf_counter()
    if torch_weights is None and isinstance(candidate, TorchSide):
        from bert_torch.weights import model_tensors
        torch_weights = model_tensors(candidate.model)
    weights = compare_weights(tf_weights, torch_weights or {})
    hints = weight_hints(weights, tf_weights, torch_weights or {}, config.initializer_range)
    diagnosis = {
        "verdict": "pass", "culprit": None, "culprit_block": None, "hints": hints,
        "first_divergence": None, "profile": profile.to_dict(), "inputs": dict(inputs.meta),
        "sides": {"reference": reference.description, "candidate": getattr(candidate, "description", None)},
        "weights": weights, "blocks": [], "taps": [], "ladder_factor": LADDER_FACTOR,
        "stages": {"weights": "ran"}, "causes": CAUSES,
    }
    weights_bad = bool(weights["differences"])
    if weights_bad:
        diagnosis["verdict"], diagnosis["culprit"] = "fail", "weights"
        first = next((h for h in hints if h["block"]), None)
        diagnosis["culprit_block"] = first["block"] if first else None
    if candidate is None:
        diagnosis["stages"]["activations"] = f"not run: {candidate_problem or 'no PyTorch side'}"
        if not weights_bad:   # never a clean verdict for what was not checked
            diagnosis["verdict"] = "fail"
        diagnosis["hints"] = merge_hints(hints)
        diagnosis["seconds"] = round(time.perf_counter() - t0, 3)
        return diagnosis

    bs = blocks(config.num_hidden_layers, head)
    ref = reference.run(inputs)
    cand = candidate.run(inputs)
    pt_local = local_taps(candidate, inputs, ref, bs)
    tf_local = local_taps(reference, inputs, cand, bs)
    twin = float64_twin(candidate) if candidate64 == "auto" else candidate64
    pt64 = twin.run(inputs) if twin is not None else {}
    diagnosis["stages"].update(activations="ran", local_pytorch="ran (1 run)" if isinstance(candidate, TorchSide)
                               else "ran", local_tensorflow=f"ran ({len(schedule(bs))} runs)",
                               precision_ladder="ran (end to end)" if twin is not None
                               else "not run: no float64 PyTorch side")
    mask = np.asarray(inputs.input_mask)

    def ladder(tf32, pt32, pt64_, floor) -> dict:
        tf_vs, pt_vs = _maxabs(tf32, pt64_), _maxabs(pt32, pt64_)
        reading = None
        if tf_vs is not None and pt_vs is not None:
            reading = "formulas differ" if tf_vs > LADDER_FACTOR * max(pt_vs, floor) else "rounding"
        return {"tf32_vs_pt64": tf_vs, "pt32_vs_pt64": pt_vs, "reading": reading}

    # The candidate's own float32 rounding per tap, for profiles whose tolerance includes it, and for a
    # precision tier its rounding as run (parity/precision.py).
    tier = getattr(candidate, "tier", None)
    twin32 = candidate.float32() if twin is not None and hasattr(candidate, "float32") else None
    pt32 = twin32.run(inputs) if twin32 is not None else cand
    rounding = {t: _maxabs(pt32.get(t), pt64.get(t)) for t in pt32} if profile.rounding_k else {}
    tier_rounding = {t: _maxabs(cand.get(t), pt64.get(t)) for t in cand} if profile.rounding_k else {}
    widen = lambda t: (tier.margin * (tier_rounding.get(t) or 0.0)) if tier is not None and tier.reduced else 0.0  # noqa: E731
    hints[:0] = precision_hints(list(ref) + [t for t in cand if t not in ref], ref, cand, pt32, pt64, tier) \
        if pt64 else []
    if tier is not None:
        diagnosis["precision"] = tier.to_dict(str(getattr(candidate, "device", "cpu")))
    rows, block_rows = [], []
    for b in bs:
        e2e = [compare_tap(t, ref.get(t), cand.get(t), profile, rounding.get(t), tier, tier_rounding.get(t))
               for t in b.taps]
        loc = [check(t, ref.get(t), pt_local.get(t), profile, rounding.get(t), widen(t)) for t in b.taps]
        tfl = [check(t, tf_local.get(t), cand.get(t), profile, rounding.get(t), widen(t)) for t in b.taps]
        block_taps = []
        for t, e, l, r in zip(b.taps, e2e, loc, tfl):
            row = {k: e[k] for k in ("name", "shape", "max_abs", "max_rel", "cosine", "atol", "rtol", "passed",
                                     "worst_index", "tol_ratio", "reason")}
            row["block"] = b.name
            # float32's resolution at the tap's scale: no floor is finer than that.
            resolution = float(np.abs(ref[t]).max()) * 2.0 ** -24 if t in ref and ref[t].size else 0.0
            pt_vs = _maxabs(cand.get(t), pt64.get(t))
            calibrated = (floors or {}).get(t, profile.floor(t))
            row["floor"] = max(x for x in (pt_vs, calibrated, resolution) if x is not None)
            row["error_over_floor"] = _ratio(e["max_abs"], row["floor"])
            row["ladder"] = ladder(ref.get(t), cand.get(t), pt64.get(t), row["floor"])
            row["local"] = {
                "pytorch_on_tf_inputs": {"max_abs": l["max_abs"], "tol_ratio": l["tol_ratio"], "passed": l["passed"]},
                "tf_on_pytorch_inputs": {"max_abs": r["max_abs"], "tol_ratio": r["tol_ratio"], "passed": r["passed"]},
                "resolution": resolution,
            }
            if t in ref and t in cand and np.shape(ref[t]) == np.shape(cand[t]):
                row.update(structured(t, ref[t], cand[t], mask))
            rows.append(row)
            block_taps.append(row)
        status = "ok"
        if not all(l["passed"] for l in loc) or not all(r["passed"] for r in tfl):
            status = "local error"
        elif not all(e["passed"] for e in e2e):
            status = "inherited error"
        worst = lambda recs: max(recs, key=lambda x: -1 if x["tol_ratio"] is None else x["tol_ratio"])
        block_rows.append({
            "name": b.name, "input": b.input, "output": b.output, "status": status,
            "local_pytorch": {"passed": all(l["passed"] for l in loc), "worst_tap": worst(loc)["name"],
                              "max_abs": worst(loc)["max_abs"], "tol_ratio": worst(loc)["tol_ratio"],
                              "failing": [l["name"] for l in loc if not l["passed"]]},
            "local_tensorflow": {"passed": all(r["passed"] for r in tfl), "worst_tap": worst(tfl)["name"],
                                 "max_abs": worst(tfl)["max_abs"], "tol_ratio": worst(tfl)["tol_ratio"],
                                 "failing": [r["name"] for r in tfl if not r["passed"]]},
            "end_to_end": {"passed": all(e["passed"] for e in e2e), "worst_tap": worst(e2e)["name"],
                           "max_abs": worst(e2e)["max_abs"], "tol_ratio": worst(e2e)["tol_ratio"]},
        })
    diagnosis["taps"], diagnosis["blocks"] = rows, block_rows
    diagnosis["first_divergence"] = next((r["name"] for r in rows if not r["passed"]), None)
    block_of_tap = {r["name"]: r["block"] for r in rows}
    nf = non_finite_hint([r["name"] for r in rows], ref, cand, block_of_tap.get,
                         {"tensorflow": tf_weights, "pytorch": torch_weights})
    if nf:   # a NaN/Inf explains everything downstream: name where it entered, blame no formula
        return _non_finite_diagnosis(diagnosis, nf, hints, weights_bad, t0,
                                     {"ref": ref, "pt_local": pt_local, "inputs": inputs, "blocks": bs,
                                      "torch_weights": torch_weights})

    # The culprit: the first block over its budget locally. When every block is within its
    # tolerance yet errors add up past it downstream, the first block whose own ladder says
    # "formulas differ" (a real difference too small to fail alone); else it is rounding.
    suspects = [br for br in block_rows if br["status"] == "local error"]
    if not suspects and diagnosis["first_divergence"] and twin is not None:
        # Only needed here (a float64 run): each block alone, fed TF's input, TF32 and PT32
        # each against PT64 on that same input.
        pt64_local = local_taps(twin, inputs, ref, bs)
        diagnosis["stages"]["precision_ladder"] = "ran (end to end and per block)"
        for r in rows:
            t = r["name"]
            floor = max(x for x in (_maxabs(pt_local.get(t), pt64_local.get(t)), r["local"]["resolution"])
                        if x is not None)
            r["local"]["ladder"] = ladder(ref.get(t), pt_local.get(t), pt64_local.get(t), floor)
        for br in block_rows:
            br["local_ladder"] = {"formulas_differ": [r["name"] for r in rows if r["block"] == br["name"]
                                                      and r["local"]["ladder"]["reading"] == "formulas differ"]}
        suspects = [br for br in block_rows if br["local_ladder"]["formulas_differ"]][:1]
        for br in suspects:
            br["status"] = "local error (formula differs, under tolerance)"
    for br in suspects:
        failing = sorted(set(br["local_pytorch"]["failing"]) | set(br["local_tensorflow"]["failing"])
                         ) or br.get("local_ladder", {}).get("formulas_differ", [])
        b = next(x for x in bs if x.name == br["name"])
        ctx = Context(block=b.name, failing=failing, ref=ref, local=pt_local, input_mask=mask, weights=tf_weights,
                      block_input=b.input, tolerance=lambda t: profile.tolerance(t, ref.get(t), rounding.get(t)),
                      gelu_names=getattr(candidate, "gelu_names", None))
        found = activation_hints(ctx)
        if not found and not any(h["block"] == b.name for h in hints):
            found = [_ladder_hint(b, [r for r in rows if r["block"] == b.name and r["name"] in failing], local=True)]
        hints.extend(found)
    if suspects or diagnosis["first_divergence"]:
        diagnosis["verdict"] = "fail"
        block = suspects[0]["name"] if suspects else next(r["block"] for r in rows if not r["passed"])
        if not suspects:   # every block within budget and rounding alike: the errors add up
            hints.append(_ladder_hint(next(x for x in bs if x.name == block),
                                      [r for r in rows if r["block"] == block and not r["passed"]]))
        if diagnosis["culprit"] != "weights":
            diagnosis["culprit"] = block
        if diagnosis["culprit_block"] is None or not weights_bad:
            diagnosis["culprit_block"] = block
    diagnosis["hints"] = merge_hints(hints)
    diagnosis["_arrays"] = {"ref": ref, "pt_local": pt_local, "inputs": inputs, "blocks": bs,
                            "torch_weights": torch_weights}
    diagnosis["seconds"] = round(time.perf_counter() - t0, 3)
    return diagnosis


def _non_finite_diagnosis(diagnosis: dict, nf: dict, hints: list, weights_bad: bool, t0: float,
                          arrays: dict) -> dict:
    diagnosis["verdict"] = "fail"
    if nf["block"]:
        if diagnosis["culprit"] != "weights":   # bit-identical weights are never the culprit
            diagnosis["culprit"] = nf["block"]
        if diagnosis["culprit_block"] is None or not weights_bad:
            diagnosis["culprit_block"] = nf["block"]
    diagnosis["hints"] = merge_hints([nf] + hints)
    diagnosis["_arrays"] = arrays
    diagnosis["seconds"] = round(time.perf_counter() - t0, 3)
    return diagnosis


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
    from .hints import hint
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


# ---------------------------------------------------------------------------------------------
# Output: diagnosis.json, diagnosis.md, repro/.

def public(diagnosis: dict) -> dict:
    return {k: v for k, v in diagnosis.items() if not k.startswith("_")}


def write_diagnosis(diagnosis: dict, report_dir: str) -> tuple[str, str]:
    os.makedirs(report_dir, exist_ok=True)
    j, m = (os.path.join(report_dir, n) for n in DIAGNOSIS_FILES)
    _atomic_write(j, dumps(public(diagnosis), indent=2) + "\n")   # strict JSON: NaN/Inf as strings
    _atomic_write(m, render_markdown(diagnosis))
    if diagnosis.get("taps") and diagnosis.get("sides"):   # the end-to-end taps as pictures and a page
        from . import report_render
        try:
            plots = report_render.compare_plots(diagnosis, report_dir, "diagnosis")
        except ImportError:   # matplotlib is in the test extra; the page stands without the plots
            plots = []
        _atomic_write(os.path.join(report_dir, "diagnosis.html"),
                      report_render.compare_html(diagnosis, report_dir, plots))
    return j, m


def clear_diagnosis(report_dir: str) -> None:
    for n in DIAGNOSIS_FILES + DIAGNOSIS_PICTURES:
        p = os.path.join(report_dir, n)
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(os.path.join(report_dir, "repro"), ignore_errors=True)


def _g(x) -> str:
    return fmt(x)


def render_markdown(d: dict) -> str:
    lines = [f"# Diagnosis: **{d['verdict'].upper()}**", ""]
    if d.get("error"):
        lines += [f"Bad input: {d['error']}", ""]
    lines.append(f"Culprit: `{d['culprit']}`" + (f" (block `{d['culprit_block']}`)" if d.get("culprit_block")
                                                  and d["culprit_block"] != d["culprit"] else ""))
    lines.append("")
    if d["hints"]:
        lines += ["## Hints", ""] + [f"- **{h['cause']}**" + (f" in `{h['block']}`" if h["block"] else "")
                                     + f": {h['evidence']}" for h in d["hints"]] + [""]
    for k, v in d.get("stages", {}).items():
        lines.append(f"- {k}: {v}")
    if "inputs" in d and d["inputs"]:
        i = d["inputs"]
        lines.append(f"- inputs: batch {i.get('batch_size')}, sequence {i.get('seq_len')}, seed {i.get('seed')}, "
                     f"{i.get('padding_positions')} padding positions")
    if d.get("profile"):
        lines.append(f"- profile `{d['profile']['name']}`: {d['profile']['rule']}")
    w = d.get("weights")
    if w:
        lines += ["", "## Weights", "", f"{w['bit_equal']} of {w['checked']} checkpoint variables are bit-equal to "
                  f"their PyTorch tensors."]
        if w["differences"]:
            lines += ["", "| tensor | block | kind | checkpoint shape | PyTorch shape | max_abs |",
                      "| --- | --- | --- | --- | --- | ---: |"]
            lines += [f"| `{x['name']}` | {x['block']} | {x['kind']} | {x['tf_shape']} | {x['pt_shape']} | {_g(x['max_abs'])} |"
                      for x in w["differences"]]
    if d.get("blocks"):
        lines += ["", "## Blocks: local versus inherited error", "",
                  "Local: the block fed the other side's input to it. `tol` is the worst error as a fraction of "
                  "its tolerance.", "",
                  "| block | status | local PT on TF inputs (max_abs, tol) | local TF on PT inputs | end to end |",
                  "| --- | --- | --- | --- | --- |"]
        for b in d["blocks"]:
            cell = lambda x: f"{_g(x['max_abs'])} ({_g(x['tol_ratio'])}){'' if x['passed'] else ' **FAIL**'}"
            lines.append(f"| `{b['name']}` | {b['status']} | {cell(b['local_pytorch'])} | {cell(b['local_tensorflow'])} "
                         f"| {cell(b['end_to_end'])} |")
    if d.get("taps"):
        lines += ["", "## Taps: error, noise floor, precision ladder, real vs padded positions", "",
                  f"Ladder: \"formulas differ\" when |TF32 - PT64| > {d['ladder_factor']:g} x max(|PT32 - PT64|, floor).", "",
                  "| tap | max_abs | floor | error/floor | TF32-PT64 | PT32-PT64 | ladder | real max | padded max | passed |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
        for t in d["taps"]:
            real = (t.get("real") or {}).get("max_abs")
            pad = (t.get("padded") or {}).get("max_abs")
            lines.append(f"| `{t['name']}` | {_g(t['max_abs'])} | {_g(t['floor'])} | {_g(t['error_over_floor'])} | "
                         f"{_g(t['ladder']['tf32_vs_pt64'])} | {_g(t['ladder']['pt32_vs_pt64'])} | "
                         f"{t['ladder']['reading'] or '—'} | {_g(real)} | {_g(pad)} | "
                         f"{'yes' if t['passed'] else '**NO**'} |")
        heads = [t for t in d["taps"] if not t["passed"] and t.get("per_head_max_abs")]
        if heads:
            lines += ["", "### Failing attention taps, per head (max_abs)", ""]
            lines += [f"- `{t['name']}`: " + ", ".join(f"h{i} {_g(x)}" for i, x in enumerate(t["per_head_max_abs"]))
                      for t in heads]
    if d.get("repro"):
        lines += ["", "## Repro", "", f"`python {d['repro']}/repro.py` feeds `{d['culprit_block']}` TensorFlow's input "
                  f"to it with `bert_torch` alone and prints each tap's error (exit 1 when it reproduces)."]
    return "\n".join(lines) + "\n"


REPRO_SCRIPT = '''\
"""Reproduces the {block} mismatch with bert_torch alone (exit 1 when it reproduces).

    python repro.py

The block is fed TensorFlow's input to it ({input_desc}); its taps are compared with
TensorFlow's, element by element: |pytorch - tensorflow| <= atol + rtol * |tensorflow|.
"""
import os
import sys

import torch
from safetensors.torch import load_file

from bert_torch import BertConfig, Taps
from bert_torch.modeling import HEADS

here = os.path.dirname(os.path.abspath(__file__))
config = BertConfig.from_json_file(os.path.join(here, "bert_config.json"))
model = HEADS[{head!r}](config{labels}).eval()
names = model.state_dict().keys()
weights = load_file(os.path.join(here, "weights.safetensors"))   # this block's weights only
model.load_state_dict({{(n if n in names else "bert." + n): t for n, t in weights.items()}}, strict=False)
t = load_file(os.path.join(here, "tensors.safetensors"))
inject = {{{inject}}}
with torch.no_grad(), Taps(inject=inject) as taps:
    model(t["input_ids"], t["token_type_ids"], t["input_mask"])
failed = False
for name, (atol, rtol) in {taps!r}.items():
    got = taps.computed.get(name, taps.values[name]).double()
    want = t["tensorflow/" + name].double()
    err = (got - want).abs()
    ok = bool((err <= atol + rtol * want.abs()).all())
    failed |= not ok
    print(f"{{name:<36}} max_abs {{err.max().item():.3g}}  {{'ok' if ok else 'MISMATCH'}}")
sys.exit(1 if failed else 0)
'''


def write_repro(diagnosis: dict, report_dir: str, config: BertConfig, profile: Profile, head: Optional[str],
                num_labels: int = 2) -> Optional[str]:
    """``repro/`` for the culprit block; None when no block fails locally (or activations did not run)."""
    arrays = diagnosis.get("_arrays")
    block_name = diagnosis.get("culprit_block")
    if not arrays or not block_name:
        return None
    b = next((x for x in arrays["blocks"] if x.name == block_name), None)
    if b is None:
        return None
    final = os.path.join(report_dir, "repro")
    with atomic_dir(final, "repro folder") as out:   # written aside, renamed into place when complete
        _write_repro_files(out, b, arrays, config, profile, head, num_labels)
    diagnosis["repro"] = final
    return final


def _write_repro_files(out: str, b, arrays: dict, config: BertConfig, profile: Profile, head: Optional[str],
                       num_labels: int) -> None:
    from bert_torch._io import save_safetensors as save_file   # plain writes: a full disk is an OSError
    from .hints import block_of_weight
    inputs, ref = arrays["inputs"], arrays["ref"]
    tensors = {"input_ids": np.asarray(inputs.input_ids, np.int64), "token_type_ids": np.asarray(inputs.token_type_ids, np.int64),
               "input_mask": np.asarray(inputs.input_mask, np.int64)}
    if b.input:
        tensors[f"input/{b.input}"] = ref[b.input]
    tensors.update({f"tensorflow/{t}": ref[t] for t in b.taps})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(out, "tensors.safetensors"))
    tw = arrays["torch_weights"] or {}
    save_file({k: np.ascontiguousarray(v) for k, v in tw.items() if block_of_weight(k) == b.name},
              os.path.join(out, "weights.safetensors"))
    config.to_json_file(os.path.join(out, "bert_config.json"))
    model_head = head if head in ("classifier", "squad") else None
    script = REPRO_SCRIPT.format(
        block=b.name, input_desc=f"tap {b.input}" if b.input else "the token ids", head=model_head,
        labels=f", num_labels={num_labels}" if model_head == "classifier" else "",
        inject=f'"{b.input}": t["input/{b.input}"]' if b.input else "",
        taps={t: profile.tolerance(t) for t in b.taps})
    with open(os.path.join(out, "repro.py"), "w", encoding="utf-8") as f:
        f.write(script)


def print_summary(d: dict, json_path: str) -> None:
    print(f"verdict: {d['verdict']}; culprit: {d['culprit'] or 'none'}"
          + (f" (block {d['culprit_block']})" if d.get("culprit_block") and d["culprit_block"] != d["culprit"] else ""))
    w = d["weights"]
    print(f"weights: {w['bit_equal']}/{w['checked']} bit-equal")
    for h in d["hints"]:
        print(f"  hint {h['cause']}" + (f" [{h['block']}]" if h["block"] else "") + f": {h['evidence']}")
    for b in d.get("blocks", []):
        if b["status"] != "ok":
            print(f"  {b['name']:<24} {b['status']}: local {_g(b['local_pytorch']['max_abs'])}, "
                  f"end to end {_g(b['end_to_end']['max_abs'])}")
    if d.get("repro"):
        print(f"repro: python {d['repro']}/repro.py")
    print(f"diagnosis: {json_path}")


# ---------------------------------------------------------------------------------------------
# Command line (``python -m parity diagnose``; parity/cli.py adds the subcommand).

def run_diagnose(args) -> int:
    """compare's arguments and exit codes: 0 clean, 1 a mismatch diagnosed, 2 bad input."""
    from bert_torch.convert import resolve_checkpoint, tf_to_torch
    from bert_torch.tf_checkpoint import read_checkpoint
    from bert_torch.tokenization import load_vocab
    from bert_torch.weights import read_weights

    from .environment import environment
    from .hints import vocab_hint
    from .candidates import candidate_spec, make_candidate
    from .sides import TFSide

    clear_diagnosis(args.report_dir)
    spec = candidate_spec(args)
    if getattr(args, "golden", None):
        raise BadInput("diagnose runs the TensorFlow graph itself (blocks are fed each other's inputs): "
                       "give --tf-checkpoint, not --golden")
    # The vocab against the checkpoint first: make_inputs would refuse it without saying why.
    prefix, config_path = resolve_checkpoint(args.tf_checkpoint, args.bert_config)
    config = BertConfig.from_json_file(config_path)
    vocab = find_vocab(args.tf_checkpoint, prefix, args.vocab_file)
    vocab_ids = load_vocab(vocab)
    h = vocab_hint(vocab, max(vocab_ids.values()) + 1 if vocab_ids else 0, config.vocab_size)
    if h:
        d = {"verdict": "bad_input", "culprit": None, "culprit_block": None, "hints": [h], "error": h["evidence"],
             "stages": {"inputs": "vocab does not match the checkpoint: nothing was run"}}
        write_diagnosis(d, args.report_dir)
        raise BadInput(f"{h['evidence']} (vocab_mismatch; see {args.report_dir}/diagnosis.md)")
    p = prepare(args)
    tf_weights, _ = tf_to_torch(read_checkpoint(p.prefix), p.config, where=p.prefix)
    if spec.kind == "onnx":
        raise BadInput(f"--candidate {spec}: diagnose feeds blocks the reference's inputs, and onnxruntime "
                       f"cannot replace an intermediate value; use compare")
    if spec.kind != "bert_torch":   # hf:, ppb:, module: (parity.candidates): weights under file names from the model
        candidate, problem = make_candidate(spec, config=p.config, device=args.device, tier=p.tier), None
        if candidate.unobservable:   # blocks are judged by all their taps, and fed by the reference's
            hidden = list(candidate.unobservable)
            raise BadInput(f"--candidate {spec}: diagnose needs every tap, and {len(hidden)} are not observable "
                           f"in this candidate (e.g. {hidden[0]}); map them, or use compare")
        torch_weights = candidate.tensors()
    else:
        torch_weights = read_weights(args.torch_weights)   # unreadable: exit 2
        candidate, problem = bert_torch_side(args, p.torch_config, tf_weights, torch_weights, p.tier)
    floors = calibration_floors(getattr(args, "calibration", None))
    reference = TFSide(p.prefix, p.config, head=p.head, num_labels=p.num_labels, intra_op_threads=args.tf_threads)
    try:
        d = diagnose(reference, candidate, p.inputs, p.profile, config=p.config, tf_weights=tf_weights,
                     torch_weights=torch_weights, head=p.head, floors=floors, candidate_problem=problem)
    finally:
        reference.close()
    d["environment"] = environment(args.device, p.files, args.tf_threads)
    if spec.kind == "bert_torch":   # repro.py runs bert_torch alone; other candidates' code is theirs
        write_repro(d, args.report_dir, p.torch_config, p.profile, p.head, p.num_labels)
    else:
        d["stages"]["repro"] = f"not written: repro.py runs bert_torch, and the candidate is {spec.kind}:"
    json_path, _ = write_diagnosis(d, args.report_dir)
    print_summary(d, json_path)
    return 0 if d["verdict"] == "pass" else 1


def bert_torch_side(args, torch_config: BertConfig, tf_weights, torch_weights, tier=None) -> tuple:
    """(side, None), or (None, why) when the weights do not load but differ from the checkpoint's
    (then the diagnosis rests on the weights); the same tensors that do not load are bad input."""
    from bert_torch.weights import WeightsError, model_from_tensors
    try:
        model = model_from_tensors(torch_weights, torch_config, head="auto", device=args.device,
                                   where=args.torch_weights)
        return TorchSide(model, args.device, {"BertForSequenceClassification": "classifier",
                                              "BertForQuestionAnswering": "squad",
                                              "BertForPreTraining": "pretraining"}.get(type(model).__name__),
                         tier=tier or Tier()), None
    except WeightsError as e:
        if not compare_weights(tf_weights, torch_weights)["differences"]:
            raise   # same tensors as the checkpoint, so the PyTorch config is at fault: bad input
        return None, f"the PyTorch weights do not load: {e.problems[0]}"   # diagnosed from the weights


def calibration_floors(path: Optional[str]) -> Optional[dict]:
    """Per-tap floors of a calibration file (``parity.diagnose_calibrate``)."""
    if not path:
        return None
    try:
        data = read_json(path, "calibration file")   # size, encoding and nesting bounded
        return {name: float(v["floor"]) for name, v in data["taps"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a calibration file ({type(e).__name__}: {e})") from None


def add_diagnose_args(p) -> None:
    p.add_argument("--calibration", help="noise floors measured by `python -m parity.diagnose_calibrate` "
                   "(default: PyTorch float32 vs float64, measured on the spot)")


def release_check(ctx) -> dict:
    """The release report's diagnosis section: ``diagnose`` on the real MiniLM weights, 8 x 128.

    A clean diagnosis (no culprit, weights bit-equal) passes; its tables land in
    ``diagnose/`` beside the report.
    """
    import argparse

    from .minilm import build_checkpoint
    ckpt = os.path.join(ctx.work_dir, "minilm")
    if not os.path.isfile(os.path.join(ckpt, "bert_model.ckpt.index")):
        build_checkpoint(ckpt)
    out = os.path.join(ctx.report_dir, "diagnose")
    parser = argparse.ArgumentParser()
    add_compare_args(parser)
    add_diagnose_args(parser)
    code = run_diagnose(parser.parse_args([
        "--tf-checkpoint", ckpt, "--torch-weights", os.path.join(ckpt, "pytorch_model.safetensors"),
        "--report-dir", out, "--batch-size", "8", "--seq-len", "128", "--profile", ctx.profile.name]))
    with open(os.path.join(out, DIAGNOSIS_FILES[0]), encoding="utf-8") as f:
        d = json.load(f)
    hints = ", ".join(h["cause"] for h in d.get("hints", [])) or "none"
    return {"name": "diagnose", "kind": "diagnose", "verdict": "pass" if code == 0 else "fail",
            "summary": f"real MiniLM weights, 8 x 128: verdict {d['verdict']}, culprit {d['culprit']}, hints: {hints}",
            "culprit": d["culprit"], "hints": d.get("hints", []),
            "artifacts": [f"diagnose/{n}" for n in DIAGNOSIS_FILES]}


__all__ = ["Block", "blocks", "diagnose", "local_taps", "schedule", "write_diagnosis", "write_repro",
           "run_diagnose", "release_check"]
