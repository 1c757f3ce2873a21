"""Root-cause hints: known signatures of conversion mismatches, checked when something fails.

A hint is ``{"cause": id, "block": block or None, "evidence": words and numbers}``; ``cause``
is one of ``CAUSES`` (CONTRACT.md, ``diagnose``). Two kinds of signatures live here:

* weight signatures (``weight_hints``) read the TF variables (mapped to PyTorch names and
  layouts) beside the PyTorch tensors: missing, transposed, swapped, shifted, resized or
  freshly initialised tensors;
* activation signatures (``ACTIVATION_SIGNATURES``) read one block's taps as PyTorch computed
  them from TensorFlow's inputs to that block (``Context.local``) beside TensorFlow's own
  (``Context.ref``), and test a hypothesis in float64 against both: which GELU, which
  LayerNorm epsilon, which mask constant, which rows of the position table.

Every signature says why it fired with numbers, and stays silent unless its hypothesis
explains the PyTorch side at least ``SEPARATION`` times better than the official behaviour.
"""
from __future__ import annotations

import math
import platform
import re
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Mapping, Optional

import numpy as np

CAUSES = {
    "gelu_variant": "the activation is the other GELU form (erf vs the official graph's tanh approximation)",
    "layernorm_epsilon": "LayerNorm epsilon differs from the official 1e-12 (e.g. PyTorch's default 1e-5)",
    "mask_constant": "the attention-mask adder differs from the official -10000 (e.g. -1e9 or -inf)",
    "transposed_kernel": "a dense kernel was not transposed (TF kernels are [in, out], torch weights [out, in])",
    "swapped_qk": "query and key weights are swapped",
    "swapped_gamma_beta": "LayerNorm gamma and beta are swapped",
    "swapped_tensors": "two other tensors of the same shape are swapped",
    "type_vocab_size": "the token-type table has a different number of rows (16, the official default, vs 2)",
    "position_offset": "position embeddings are shifted by a fixed offset (e.g. RoBERTa-style padding_idx + 1)",
    "missing_weights": "tensors are missing, or were left at their initial values by a lenient loader",
    "unexpected_weights": "the PyTorch file holds tensors the checkpoint does not have",
    "vocab_mismatch": "the vocab file does not belong to the checkpoint",
    "weights_differ": "tensors differ by values that match no known signature",
    "rounding": "the error is of the size of float32 rounding (precision ladder): the tolerance is too tight",
    "formula_difference": "the block computes a different formula, of no known signature (precision ladder)",
    "tf32_reference": "the reference was recorded with TF32 matmuls (TensorFlow's default on Ampere+ GPUs)",
    "reduced_precision": "the candidate computes in bf16/fp16 while fp32 was asked (--precision)",
    "fp16_overflow": "an fp16 candidate overflowed: Inf/NaN or values saturated at 65504 where float64 is finite",
    "non_finite": "a NaN or Inf: in the weights, or produced by a tap; named where it first appears",
    "compiled_rounding": "a compiled model (--transform compile) rounds further from float64 than the same model "
                         "run eagerly in float32",
    "int8_weight_type": "an int8 ONNX file with int8 weights (U8S8) run on an x86 CPU without VNNI, where "
                        "onnxruntime's kernels can saturate",
    "quantized_embeddings": "a quantized model diverges already at the embeddings: the quantization reached the "
                            "lookup tables or the LayerNorm, which int8 of the Linear layers leaves in float32",
}

# A hypothesis must explain the PyTorch side this many times better than the official behaviour.
SEPARATION = 10.0


def hint(cause: str, block: Optional[str], evidence: str, **numbers) -> dict:
    assert cause in CAUSES, cause
    return {"cause": cause, "block": block, "evidence": evidence, "numbers": numbers}


def block_of_weight(name: str) -> Optional[str]:
    """The diagnose block a PyTorch weight (file name) belongs to."""
    if name.startswith("embeddings."):
        return "embeddings"
    m = re.match(r"encoder\.layer\.(\d+)\.(attention|intermediate|output)\.", name)
    if m:
        return f"layer_{m.group(1)}/{'attention' if m.group(2) == 'attention' else 'ffn'}"
    if name.startswith("pooler."):
        return "pooler"
    if name.startswith("classifier."):
        return "classifier"
    if name.startswith("qa_outputs."):
        return "squad"
    if name.startswith("cls."):
        return "cls"
    return None


# ---------------------------------------------------------------------------------------------
# Weights: every TF variable against the PyTorch tensor it maps to, expecting bit equality.

def compare_weights(tf_w: Mapping[str, np.ndarray], pt_w: Mapping[str, np.ndarray]) -> dict:
    """Bit-equality check; ``tf_w`` holds TF variables already mapped to file names and layouts."""
    diffs = []
    for name, ref in tf_w.items():
        entry = {"name": name, "block": block_of_weight(name), "tf_shape": list(np.shape(ref))}
        if name not in pt_w:
            diffs.append(dict(entry, kind="missing", pt_shape=None, max_abs=None, differing=None))
            continue
        cand = pt_w[name]
        entry["pt_shape"] = list(np.shape(cand))
        if np.shape(cand) != np.shape(ref):
            diffs.append(dict(entry, kind="shape", max_abs=None, differing=None))
        elif not bit_equal(cand, ref):
            d = np.abs(np.asarray(cand, np.float64) - np.asarray(ref, np.float64))
            diffs.append(dict(entry, kind="value", max_abs=float(np.nanmax(d)) if d.size else 0.0,
                              differing=int((np.asarray(cand) != np.asarray(ref)).sum())))
    for name in pt_w:
        if name not in tf_w:
            diffs.append({"name": name, "block": block_of_weight(name), "tf_shape": None,
                          "pt_shape": list(np.shape(pt_w[name])), "kind": "unexpected", "max_abs": None,
                          "differing": None})
    return {"checked": len(tf_w), "bit_equal": len(tf_w) - sum(d["kind"] != "unexpected" for d in diffs),
            "differences": diffs}


def bit_equal(a, b) -> bool:
    """Same shape and the same bits: a NaN copied bit for bit is equal to itself (it is not
    under ``==``), so a checkpoint holding a NaN, converted exactly, is not "weights that differ"."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype:
        return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"))


def _eq(a, b) -> bool:
    return bit_equal(a, b)


def non_finite_hint(taps: list, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray],
                    block_of_tap: Callable[[str], Optional[str]], weights: Mapping[str, Mapping[str, np.ndarray]]
                    ) -> Optional[dict]:
    """Where a NaN or Inf first appears: the weights holding one (per side), and the first tap in
    forward order (``taps``) that holds one on either side. None when everything is finite."""
    from parity.numerics.metrics import _count_words, non_finite
    bad_weights = []
    for side, w in weights.items():
        for name, t in (w or {}).items():
            t = np.asarray(t)
            if t.dtype.kind in "fc" and not np.isfinite(t).all():
                nf = non_finite(t)
                bad_weights.append(f"{side} {name} ({_count_words(nf)}, first at {nf['first_index']})")
    first = None
    for t in taps:
        sides = {s: non_finite(np.asarray(v[t], np.float64)) for s, v in (("tensorflow", ref), ("pytorch", cand))
                 if t in v and np.size(v[t]) and not np.isfinite(v[t]).all()}
        if sides:
            first = (t, sides)
            break
    if first is None and not bad_weights:
        return None
    parts = []
    if first:
        t, sides = first
        parts.append(f"first non-finite tap: {t} (" + "; ".join(f"{s}: {_count_words(nf)}, first at {nf['first_index']}"
                                                                 for s, nf in sides.items()) + ")")
    if bad_weights:
        parts.append("weights holding NaN/Inf: " + ", ".join(bad_weights[:4])
                     + (f" and {len(bad_weights) - 4} more" if len(bad_weights) > 4 else ""))
    block = block_of_tap(first[0]) if first else block_of_weight(bad_weights[0].split(" ")[1])
    return hint("non_finite", block, "; ".join(parts), tap=first[0] if first else None,
                sides=sorted(first[1]) if first else [], weights=bad_weights)


def _looks_initialised(name: str, t: np.ndarray, initializer_range: float) -> Optional[str]:
    """How ``t`` looks like a fresh initialisation (what lenient loaders leave behind), or None."""
    t = np.asarray(t, np.float64)
    if name.endswith("LayerNorm.weight") and np.all(t == 1):
        return "all ones (LayerNorm initial gamma)"
    if name.endswith(".bias") and np.all(t == 0):
        return "all zeros (initial bias)"
    if t.ndim == 2 and t.size > 16:
        std = float(t.std())
        if abs(float(t.mean())) < 0.2 * initializer_range and abs(std / initializer_range - 1) < 0.25:
            return f"mean {t.mean():.2g}, std {std:.3g}: a fresh N(0, {initializer_range:g}) draw"
    return None


def weight_hints(report: dict, tf_w: Mapping[str, np.ndarray], pt_w: Mapping[str, np.ndarray],
                 initializer_range: float = 0.02) -> list[dict]:
    """Names the cause of each weight difference that ``compare_weights`` found."""
    hints, explained = [], set()
    diffs = {d["name"]: d for d in report["differences"]}
    values = [n for n, d in diffs.items() if d["kind"] == "value"]

    # Swaps: PyTorch's a is TF's b and the other way round (same block, same shape).
    for a, b in combinations(values, 2):
        if block_of_weight(a) != block_of_weight(b) or not (_eq(pt_w[a], tf_w[b]) and _eq(pt_w[b], tf_w[a])):
            continue
        pair = {a.rsplit(".", 2)[-2] + "." + a.rsplit(".", 1)[-1], b.rsplit(".", 2)[-2] + "." + b.rsplit(".", 1)[-1]}
        if {x.split(".")[0] for x in pair} == {"query", "key"}:
            cause = "swapped_qk"
        elif "LayerNorm" in a and "LayerNorm" in b:
            cause = "swapped_gamma_beta"
        else:
            cause = "swapped_tensors"
        hints.append(hint(cause, block_of_weight(a), f"{a} holds the checkpoint's values of {b}, and {b} those of {a}",
                          tensors=[a, b], max_abs=diffs[a]["max_abs"]))
        explained |= {a, b}

    for name, d in diffs.items():
        if name in explained:
            continue
        block = d["block"]
        ref, cand = tf_w.get(name), pt_w.get(name)
        if d["kind"] == "missing":
            hints.append(hint("missing_weights", block, f"{name} {d['tf_shape']} is in the checkpoint but not in the "
                              f"PyTorch weights: a lenient loader would leave it at random initial values",
                              tensors=[name]))
        elif d["kind"] == "unexpected":
            hints.append(hint("unexpected_weights", block, f"{name} {d['pt_shape']} is in the PyTorch weights but "
                              f"has no variable in the checkpoint", tensors=[name]))
        elif name == "embeddings.token_type_embeddings.weight" and d["kind"] == "shape":
            n = min(len(ref), len(cand))
            same = _eq(np.asarray(ref)[:n], np.asarray(cand)[:n])
            hints.append(hint("type_vocab_size", block, f"token-type table: checkpoint {len(ref)} rows, PyTorch "
                              f"{len(cand)} rows (type_vocab_size {len(ref)} vs {len(cand)}; 16 is the official "
                              f"default when bert_config.json omits it); the first {n} rows are "
                              f"{'identical' if same else 'different too'}",
                              tf_rows=len(ref), pt_rows=len(cand)))
        elif name == "embeddings.word_embeddings.weight" and d["kind"] == "shape":
            hints.append(hint("vocab_mismatch", block, f"word-embedding table: checkpoint {d['tf_shape']}, PyTorch "
                              f"{d['pt_shape']}: the weights come from a model with another vocabulary",
                              tf_rows=d["tf_shape"][0], pt_rows=d["pt_shape"][0]))
        elif name == "embeddings.position_embeddings.weight" and _position_shift(ref, cand) is not None:
            k = _position_shift(ref, cand)
            hints.append(hint("position_offset", block, f"{name}: PyTorch row i holds the checkpoint's row i{k:+d} "
                              f"(a position offset of {k}, like RoBERTa's padding_idx + 1)", offset=k))
        elif np.ndim(ref) == 2 and np.shape(cand) == np.shape(ref)[::-1] and _eq(cand, np.asarray(ref).T):
            hints.append(hint("transposed_kernel", block, f"{name}: PyTorch holds the checkpoint's kernel untransposed "
                              f"(shape {d['pt_shape']} vs {d['tf_shape']}; TF kernels are [in, out])", tensors=[name]))
        elif d["kind"] == "value" and np.ndim(ref) == 2 and _eq(cand, np.asarray(ref).T):
            hints.append(hint("transposed_kernel", block, f"{name}: PyTorch's [out, in] weight equals the checkpoint's "
                              f"kernel without the transpose (square, so no shape error caught it); max error "
                              f"{d['max_abs']:.3g}", tensors=[name], max_abs=d["max_abs"]))
        elif (d["kind"] == "value" and _looks_initialised(name, cand, initializer_range)
              and (np.ndim(cand) == 1 or d["differing"] >= 0.9 * np.size(cand))):   # a fresh draw differs everywhere
            why = _looks_initialised(name, cand, initializer_range)
            hints.append(hint("missing_weights", block, f"{name} looks freshly initialised ({why}), not loaded from "
                              f"the checkpoint; max error {d['max_abs']:.3g}", tensors=[name], max_abs=d["max_abs"]))
        elif d["kind"] == "value":
            hints.append(hint("weights_differ", block, f"{name}: {d['differing']} of {np.size(ref)} values differ, "
                              f"max error {d['max_abs']:.3g} (expected bit equality)", tensors=[name],
                              max_abs=d["max_abs"]))
        else:
            hints.append(hint("weights_differ", block, f"{name}: shape {d['pt_shape']} in PyTorch, "
                              f"{d['tf_shape']} in the checkpoint", tensors=[name]))
    return hints


def _position_shift(ref, cand, max_shift: int = 16) -> Optional[int]:
    """k such that PyTorch's position row i is the checkpoint's row i + k, or None."""
    if ref is None or cand is None or np.ndim(ref) != 2 or np.ndim(cand) != 2:
        return None
    ref, cand = np.asarray(ref), np.asarray(cand)
    n = min(len(ref), len(cand))
    for k in range(1, max_shift + 1):
        if n - k < 2:
            break
        if np.array_equal(cand[: n - k], ref[k:n]):
            return k
        if np.array_equal(cand[k:n], ref[: n - k]):
            return -k
    return None


# ---------------------------------------------------------------------------------------------
# Activations: one block's taps as PyTorch computed them from TensorFlow's inputs.

@dataclass
class Context:
    block: str                          # e.g. "layer_3/ffn"
    failing: list                       # the block's taps that fail locally (PyTorch on TF inputs)
    ref: Mapping[str, np.ndarray]       # TensorFlow, end to end
    local: Mapping[str, np.ndarray]     # PyTorch, each block fed TensorFlow's input to it
    input_mask: np.ndarray              # [B,T], 1 real, 0 padding
    weights: Mapping[str, np.ndarray]   # the checkpoint's tensors, under file names
    block_input: Optional[str]          # the tap feeding the block
    tolerance: Callable[[str], tuple]   # tap -> (atol, rtol) for TensorFlow's end-to-end values
    # The candidate's words for each GELU form and its config file (parity.candidates.factory), so that
    # gelu_variant says what to write where: {"tanh": "gelu_new", "erf": "gelu", "file": "config.json"}.
    gelu_names: Optional[Mapping[str, str]] = None

    def layer(self) -> Optional[int]:
        m = re.match(r"layer_(\d+)/", self.block)
        return int(m.group(1)) if m else None


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _gelu_tanh(x):
    return x * 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_erf(x):
    import torch   # numpy has no erf; torch's float64 erf is exact to rounding
    return x * 0.5 * (1.0 + torch.erf(torch.from_numpy(x / math.sqrt(2.0))).numpy())


def _max(x) -> float:
    return float(np.max(np.abs(x))) if np.size(x) else 0.0


def _best(errors: dict) -> tuple:
    ranked = sorted(errors.items(), key=lambda kv: kv[1])
    return ranked[0][0], ranked[0][1]


def _gelu_advice(names: Optional[Mapping[str, str]], pt_form: str, tf_form: str) -> str:
    """What to change, in the candidate's own words when it gave them (parity.candidates.factory)."""
    official = {"erf": "gelu_erf", "tanh": "gelu"}   # bert_config.json's words for the reference
    if not names:
        return (f"Set hidden_act to {official[tf_form]} on the PyTorch side, or compare "
                f"against the graph with the same GELU")
    change = (f"Set hidden_act to {names[tf_form]} in the candidate's {names['file']}, or "
              if names.get(tf_form) else f"The candidate has no {tf_form} GELU ({names['file']} offers none): ")
    return change + f"compare against the {pt_form} reference (hidden_act {official[pt_form]} in bert_config.json)"


def gelu_variant(ctx: Context) -> Optional[dict]:
    i = ctx.layer()
    tap = f"layer_{i}/intermediate"
    if i is None or tap not in ctx.failing:
        return None
    w, b = ctx.weights.get(f"encoder.layer.{i}.intermediate.dense.weight"), ctx.weights.get(f"encoder.layer.{i}.intermediate.dense.bias")
    if w is None or b is None:
        return None
    h = _f64(ctx.ref[f"layer_{i}/attention/output"]) @ _f64(w).T + _f64(b)   # [B,T,H] @ [H,I] -> [B,T,I]
    forms = {"tanh": _gelu_tanh(h), "erf": _gelu_erf(h)}
    pt = {k: _max(_f64(ctx.local[tap]) - v) for k, v in forms.items()}
    tf = {k: _max(_f64(ctx.ref[tap]) - v) for k, v in forms.items()}
    pt_form, pt_err = _best(pt)
    tf_form, _ = _best(tf)
    other = pt["erf" if pt_form == "tanh" else "tanh"]
    if pt_form == tf_form or pt_err * SEPARATION > other:
        return None
    return hint("gelu_variant", ctx.block,
                f"{tap}: PyTorch computes the {pt_form} GELU (max error {pt_err:.2g} against it, {other:.2g} against "
                f"the {tf_form} form); TensorFlow computes the {tf_form} form (max error {tf[tf_form]:.2g}). "
                + _gelu_advice(ctx.gelu_names, pt_form, tf_form),
                pytorch=pt_form, tensorflow=tf_form, pytorch_error=pt, tensorflow_error=tf)


EPSILONS = (1e-12, 1e-5, 1e-6, 1e-7, 1e-8, 1e-4, 1e-3)   # the official one first; then others' defaults


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def layernorm_epsilon(ctx: Context) -> Optional[dict]:
    i = ctx.layer()
    if ctx.block == "embeddings":
        cases = [("embeddings/output", lambda: ctx.local["embeddings/sum"], "embeddings.LayerNorm")]
    elif ctx.block.endswith("/attention"):
        cases = [(f"layer_{i}/attention/output",
                  lambda: _f64(ctx.local[f"layer_{i}/attention/dense"]) + _f64(ctx.ref[ctx.block_input]),
                  f"encoder.layer.{i}.attention.output.LayerNorm")]
    elif ctx.block.endswith("/ffn"):
        cases = [(f"layer_{i}/output",
                  lambda: _f64(ctx.local[f"layer_{i}/output/dense"]) + _f64(ctx.ref[f"layer_{i}/attention/output"]),
                  f"encoder.layer.{i}.output.LayerNorm")]
    else:
        return None
    for tap, pre, scope in cases:
        gamma, beta = ctx.weights.get(scope + ".weight"), ctx.weights.get(scope + ".bias")
        if tap not in ctx.failing or gamma is None or beta is None:
            continue
        x = _f64(pre())
        errors = {eps: _max(_f64(ctx.local[tap]) - _layer_norm(x, _f64(gamma), _f64(beta), eps)) for eps in EPSILONS}
        eps, err = _best(errors)
        if eps == 1e-12 or err * SEPARATION > errors[1e-12]:
            continue
        return hint("layernorm_epsilon", ctx.block,
                    f"{tap}: PyTorch's LayerNorm matches epsilon {eps:g} (max error {err:.2g}) and the official "
                    f"1e-12 only to {errors[1e-12]:.2g}; the official graph uses 1e-12, PyTorch's nn.LayerNorm "
                    f"defaults to 1e-5", epsilon=eps, errors={f"{k:g}": v for k, v in errors.items()})
    return None


def mask_constant(ctx: Context) -> Optional[dict]:
    i = ctx.layer()
    tap = f"layer_{i}/attention/scores"
    if i is None or not ctx.block.endswith("/attention") or tap not in ctx.failing:
        return None
    pt, tf = _f64(ctx.local[tap]), _f64(ctx.ref[tap])          # [B,N,T,T]
    padded = np.broadcast_to((ctx.input_mask == 0)[:, None, None, :], pt.shape)   # [B,T] -> [B,1,1,T]
    if not padded.any():
        return None
    atol, rtol = ctx.tolerance(tap)
    with np.errstate(invalid="ignore"):
        real_err = np.abs(pt[~padded] - tf[~padded])
        real_ok = bool(np.all(real_err <= atol + rtol * np.abs(tf[~padded])))
    if not real_ok:
        return None
    at_pad = pt[padded]
    if not np.isfinite(at_pad).all():
        constant, shown = float("-inf"), "-inf"
    else:
        # TF's scores there are s - 10000, PyTorch's s + C: C = pt - tf - 10000.
        constant = float(np.median(at_pad - tf[padded] - 10000.0))
        shown = f"{constant:.4g}"
        if abs(constant + 10000.0) <= max(1.0, 1e-3 * abs(constant)):
            return None
    probs = f"layer_{i}/attention/probs"
    probs_err = _max(_f64(ctx.local[probs]) - _f64(ctx.ref[probs])) if probs in ctx.local else None
    return hint("mask_constant", ctx.block,
                f"{tap}: differs only at the {int(padded.sum())} padded key positions (real positions: max error "
                f"{_max(real_err):.2g}); PyTorch adds about {shown} there, the official graph -10000. "
                f"Attention probabilities differ by {probs_err:.2g}" + (
                    ": harmless for real tokens unless a row is entirely padding" if probs_err is not None and
                    probs_err < 1e-6 else ""),
                constant=None if constant == float("-inf") else constant, padded_positions=int(padded.sum()))


def swapped_qk(ctx: Context) -> Optional[dict]:
    i = ctx.layer()
    q, k = f"layer_{i}/attention/query", f"layer_{i}/attention/key"
    if i is None or not ({q, k} & set(ctx.failing)) or q not in ctx.local or k not in ctx.local:
        return None
    atol, rtol = ctx.tolerance(q)
    if np.allclose(ctx.local[q], ctx.ref[k], atol=atol, rtol=rtol) and np.allclose(ctx.local[k], ctx.ref[q], atol=atol, rtol=rtol):
        return hint("swapped_qk", ctx.block, f"{q} as PyTorch computes it equals TensorFlow's {k} and the other way "
                    f"round (max error {_max(ctx.local[q] - ctx.ref[k]):.2g}): query and key are swapped")
    return None


def position_offset(ctx: Context) -> Optional[dict]:
    tap = "embeddings/position_embeddings"
    if ctx.block != "embeddings" or tap not in ctx.failing:
        return None
    pt, tf = np.asarray(ctx.local[tap]), np.asarray(ctx.ref[tap])
    for k in range(1, min(16, len(tf) - 2) + 1):
        if np.array_equal(pt[:-k], tf[k:]) or np.array_equal(pt[k:], tf[:-k]):
            k = k if np.array_equal(pt[:-k], tf[k:]) else -k
            return hint("position_offset", ctx.block, f"{tap}: PyTorch's position i is the official position "
                        f"i{k:+d} (an offset of {k} in the position ids, like RoBERTa's padding_idx + 1)", offset=k)
    return None


ACTIVATION_SIGNATURES: tuple[Callable[[Context], Optional[dict]], ...] = (
    gelu_variant, layernorm_epsilon, mask_constant, swapped_qk, position_offset)


def activation_hints(ctx: Context) -> list[dict]:
    return [h for f in ACTIVATION_SIGNATURES if (h := f(ctx)) is not None]


# ---------------------------------------------------------------------------------------------
# Inputs.

KNOWN_VOCABS = {30522: "an uncased English BERT vocab", 28996: "a cased English BERT vocab",
                119547: "the multilingual cased BERT vocab", 105879: "the multilingual uncased BERT vocab",
                21128: "the Chinese BERT vocab", 50265: "a RoBERTa/GPT-2 BPE vocab"}


def vocab_hint(vocab_file: str, tokens: int, vocab_size: int) -> Optional[dict]:
    """The vocab file's size against the checkpoint's word-embedding rows."""
    if tokens == vocab_size:
        return None
    what = lambda n: f" ({KNOWN_VOCABS[n]})" if n in KNOWN_VOCABS else ""
    return hint("vocab_mismatch", "embeddings", f"{vocab_file} has {tokens} tokens{what(tokens)}, the checkpoint's "
                f"word-embedding table {vocab_size} rows{what(vocab_size)}: the vocab file does not belong to "
                f"this checkpoint, so every token id would look up the wrong row", tokens=tokens,
                vocab_size=vocab_size)


# ---------------------------------------------------------------------------------------------
# Transformed candidates: compiled, quantized (parity.candidates.transforms, export-onnx --quantize).

# compiled_rounding: a compiled output may stray from the float64 eager model this many times as far as the eager
# float32 model does, plus TINY x the tap's magnitude (a few ulps: an eager error near zero still allows rounding).
COMPILED_ROUNDING_FACTOR = 2.0
COMPILED_ROUNDING_TINY = 4 * 2.0 ** -24


def compiled_rounding_hint(evidence: Mapping[str, Mapping[str, float]]) -> Optional[dict]:
    """``evidence``: per output tap, ``compiled_error`` and ``eager_error`` (max |run - eager float64|) and
    ``scale`` (max |float64|), as ``parity.candidates.transforms.compile_evidence`` measures them. Fires on the first
    tap where the compiled run is past ``COMPILED_ROUNDING_FACTOR`` x the eager error plus a few ulps: compilation
    is meant to compute the same function, so rounding well past eager's is its kernels' doing (fused reductions,
    reassociated sums, other GEMM blocking, a fast-math approximation), not the model's."""
    for tap, e in evidence.items():
        allowed = COMPILED_ROUNDING_FACTOR * e["eager_error"] + COMPILED_ROUNDING_TINY * e["scale"]
        if e["compiled_error"] > allowed:
            ratio = e["compiled_error"] / e["eager_error"] if e["eager_error"] > 0 else float("inf")
            return hint("compiled_rounding", None,
                        f"{tap}: the compiled model is {e['compiled_error']:.3g} from the eager model run in float64, "
                        f"{ratio:.3g}x the eager float32 model's {e['eager_error']:.3g} (allowed "
                        f"{COMPILED_ROUNDING_FACTOR:g}x + {COMPILED_ROUNDING_TINY * e['scale']:.2g}): the compiled "
                        f"kernels round further than eager's (fused reductions, reassociated sums); compare eager and "
                        f"compiled on more inputs, or turn off the inductor fusions in question",
                        tap=tap, compiled_error=e["compiled_error"], eager_error=e["eager_error"], allowed=allowed)
    return None


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def cpu_flags() -> frozenset:
    """This CPU's feature flags (Linux /proc/cpuinfo), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_weight_type_hint(quantization: Optional[Mapping], flags: Optional[frozenset] = None,
                          machine: Optional[str] = None) -> Optional[dict]:
    """An int8 ONNX file (``quantization``: parity.candidates.onnx.quantization_info) with int8 weights, run on an
    x86 CPU without VNNI. onnxruntime's quantization guide names this trap: with uint8 activations and int8 weights
    (U8S8) its x86 kernels multiply with VPMADDUBSW, whose pairwise 16-bit sums saturate, and the accuracy can
    drop; U8U8 (QUInt8 weights) does not saturate, nor does reduce_range (7-bit weights), nor a VNNI CPU (32-bit
    sums). Silent where the flags cannot be read (no evidence, no hint). ``flags``/``machine``: this CPU's, unless
    given (the tests plant them)."""
    if not quantization or "QInt8" not in str(quantization.get("weight_type") or ""):
        return None
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else frozenset(flags)
    if machine not in X86 or not flags or flags & VNNI_FLAGS:
        return None
    return hint("int8_weight_type", None,
                f"the ONNX file's weights are {quantization.get('weight_type')} (onnxruntime's U8S8 kernels: uint8 "
                f"activations times int8 weights) and this x86 CPU has no VNNI ({', '.join(sorted(VNNI_FLAGS))} "
                f"absent): onnxruntime multiplies with VPMADDUBSW there, whose 16-bit pair sums can saturate, a known "
                f"accuracy trap of its quantization; re-export with --weight-type QUInt8 (U8U8) or quantize with "
                f"reduce_range=True", weight_type=quantization.get("weight_type"), machine=machine)


def quantized_embeddings_hint(rows, form: Optional[str], quantization: Optional[Mapping] = None) -> Optional[dict]:
    """A quantized candidate (``form``: how, in words; None: not quantized) whose embeddings taps already fail
    their float32 tolerance (``rows``: compare's tap rows): nothing before the first Linear layer is quantized by
    int8 of the Linear layers, so the quantization reached the lookup tables or the LayerNorm. onnxruntime's
    quantize_dynamic does that by default (it quantizes Gather), which ``quantization['quantized_lookups']``
    counts when the file was read."""
    if not form:
        return None
    bad = [t for t in rows if t["name"].startswith("embeddings/") and not t["passed"]]
    if not bad:
        return None
    t = bad[0]
    lookups = (quantization or {}).get("quantized_lookups")
    return hint("quantized_embeddings", "embeddings",
                f"{t['name']}: the {form} candidate diverges before any Linear layer (max error {t['max_abs']}, "
                f"cosine {t['cosine']}; {len(bad)} embeddings taps over float32 tolerance)"
                + (f"; the file holds {lookups} quantized lookups (Gather on an 8-bit table)" if lookups else "")
                + ": the quantization reached the embedding tables or the LayerNorm; quantize the Linear layers only "
                  "(onnxruntime: op_types_to_quantize=['MatMul'], as export-onnx --quantize int8 does)",
                tap=t["name"], taps=[b["name"] for b in bad], quantized_lookups=lookups)
