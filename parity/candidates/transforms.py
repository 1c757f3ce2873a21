"""``--transform NAME``: a PyTorch candidate run as users deploy it, compiled or quantized (CONTRACT.md, "Being
added").

    side = make_candidate(spec, config=config, transform="compile")   # or "int8-dynamic"

Both transforms wrap the side that ``parity.candidates.factory`` builds (any kind backed by a PyTorch module:
``bert_torch``, ``hf``, ``ppb``, ``module``) and keep its Side protocol: the same taps, read the same way, the
same float64/float32 twins (always the untransformed model: the reference of rounding). An ONNX file is no
PyTorch module: ``export-onnx --optimize/--quantize`` is its route. Only the fp32 tier: a transform changes the
arithmetic itself, and a precision tier on top would leave no way to say which of the two an error came from.

``compile``: ``torch.compile(model, backend="inductor")`` in float32, an exact form (the verdict is compare's
usual one). What happens to the taps was measured here (torch 2.13, CPU), not assumed:

* ``bert_torch.taps.tap`` reads a ContextVar, which Dynamo cannot trace (graph break "ContextVar.get"), so the
  graph is cut at every tap point, with or without a ``Taps`` context: a 2-layer bert_torch model under taps
  gave 35 graphs and 52 graph breaks (24 graphs and 35 breaks without a Taps context), and ``tap``'s resume
  frame hits Dynamo's recompile limit (8) after eight tap names, after which that frame runs eagerly. The taps
  do come through, from the Python between the compiled pieces, so they are the values the compiled pieces
  produced, and they are compared; but the model is compiled between taps, not as one graph, and the side's
  description says so with the counts. Hooks (hf, ppb, module kinds) publish through the same ``tap`` and
  behave the same: an HF BertModel of 2 layers gave 29 graphs and 34 breaks, every tap delivered.
* Without a Taps context the fast path is not compilable at all here: inductor fails lowering bert_torch's
  oneDNN linear (``mkldnn._linear_pointwise``), and its taps would still cut the graph.

So the compiled side runs under the usual Taps context; every tap that the first (warm-up) call did not deliver is
declared unobservable with ``COMPILE_HIDDEN`` as its reason: measured per tap on every new input shape, never
assumed, never invented. The first call of each input shape compiles; its time is ``compile_seconds``, apart from
``run_seconds`` (the compared runs), and the report notes both (``compile_report``). ``compile_evidence`` runs the
eager model in float32 and float64 on the output taps, for the ``compiled_rounding`` hint (parity.numerics.hints).

``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` on CPU only
(the quantized Linear kernels are CPU kernels), a lossy form. Every ``nn.Linear`` becomes a dynamically quantized
one (int8 weights, per tensor; each call quantizes its input to uint8 with a scale from the input's own range; the
output is float32); embeddings, LayerNorm, softmax, GELU and the attention matmuls stay float32. The quantized
modules keep the original modules' forward hooks (torch.ao's swap preserves them, measured), so every tap is still
observed: a tap after a Linear carries that Linear's int8 error, one before any Linear (the embeddings) none.

A lossy form's per-tap comparison against float32 tolerances says where the error enters, not whether the model
is acceptable. ``lossy_rule`` judges the report instead by the model's outputs (``LOSSY_MIN_COSINE``; see there)
and says so in ``report["rule"]``; the task-level verdict is ``bert-parity evaluate``'s.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
import time
import warnings
from typing import Optional

import numpy as np

from bert_torch.commands import ForeignError, foreign

from parity.candidates.options import TRANSFORMS   # declared with the --transform flag
from parity.candidates.spec import OWN_ERRORS, CandidateError, _HarnessError

LOSSY_TRANSFORMS = ("int8-dynamic",)
# The reason a tap that a compiled run did not deliver is declared unobservable.
COMPILE_HIDDEN = "torch.compile fuses the graph: intermediate tensors are not materialised"
# A lossy form passes when each output tap points the reference's way within this cosine: 0.99 is about 8 degrees,
# far past what int8 rounding moves a BERT output (measured: cosine >= 0.9999 on the tests' tiny random model)
# and far short of what a wrong weight, a missing layer or a saturated matmul does (a planted wrong checkpoint
# gives ~0.2-0.6). A finer judgement needs the task: evaluate's metrics ratio (--min-ratio).
LOSSY_MIN_COSINE = 0.99
HEAD_PREFIXES = ("classifier/", "squad/")


def check_transform(transform: Optional[str], kind: str, device: str = "cpu", tier=None,
                    precision: Optional[str] = None) -> None:
    """A transform that cannot apply is bad input, in one line (exit 2), before any model loads. ``tier`` (a
    ``parity.numerics.precision.Tier``) or ``precision`` (the flag's word): the candidate's precision tier."""
    if transform is None:
        return
    if transform not in TRANSFORMS:
        raise CandidateError(f"--transform {transform!r}: expected one of {', '.join(TRANSFORMS)}")
    if kind == "onnx":
        raise CandidateError("--transform applies to PyTorch candidates; "
                             "for ONNX use export-onnx --optimize/--quantize")
    precision = tier.name if tier is not None else precision
    if precision not in (None, "fp32"):
        raise CandidateError(f"--transform {transform} runs in float32 only; --precision {precision} would mix two "
                             f"arithmetics in one error (compare them one at a time)")
    if transform == "int8-dynamic" and str(device) != "cpu":
        raise CandidateError(f"--transform int8-dynamic runs torch's dynamically quantized Linear, a CPU kernel; "
                             f"--device {device} does not apply")


def is_lossy(transform: Optional[str]) -> bool:
    return transform in LOSSY_TRANSFORMS


def apply_transform(side, transform: str, where: str):
    """The transformed copy of ``side`` (a ``parity.sides.base.TorchSide``, any candidate kind); ``side`` itself
    is left as it was. ``where`` names the candidate in error lines."""
    mixin = {"compile": CompiledSide, "int8-dynamic": QuantizedSide}[transform]
    new = copy.copy(side)
    new.__class__ = _mixed(mixin, type(side))
    new._eager_class = type(side)
    new._base_record = side.record   # bert_torch sides carry their record as an instance attribute
    new.__dict__.pop("record", None)
    new._where = where
    new.unobservable = dict(getattr(side, "unobservable", None) or {})
    new.tap_names = [t for t in side.tap_names if t not in new.unobservable]
    new._base_description = side.description
    new._setup()
    return new


_CLASSES: dict = {}


def _mixed(mixin, base):
    """``mixin`` over ``base``, one class per pair (its name says what it is in tracebacks)."""
    key = (mixin, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{mixin.__name__}Of{base.__name__}", (mixin, base), {})
    return _CLASSES[key]


def output_taps(names) -> list[str]:
    """The model's outputs among ``names``: the last encoder layer's output, the pooler, the head's logits (what
    a deployed model returns, and what a lossy form is judged by)."""
    layers = [n for n in names if re.fullmatch(r"layer_\d+/output", n)]
    last = max(layers, key=lambda n: int(n.split("/")[0][6:])) if layers else None
    return [n for n in names if n == last or n == "pooler/output" or n.startswith(HEAD_PREFIXES)]


class _Transformed:
    """What both transforms share: the twins are the untransformed model, the record names the transform."""

    transform: str = ""

    def _setup(self) -> None:
        raise NotImplementedError

    def eager(self):
        """The untransformed model, as the factory built it: a side of the original class over the same module
        (``source``, never transformed in place), float32."""
        plain = copy.copy(self)
        plain.__class__ = self._eager_class
        plain.model = self.source
        return plain

    def tensors(self) -> dict:
        """The untransformed model's weights (a compiled module's state dict has other names, a quantized one packed
        int8 tensors): what the candidate was built from."""
        return self.eager().tensors()

    def _twin(self, dtype):
        twin = super()._twin(dtype)   # a deep copy of ``source``: the eager, untransformed model
        twin.__class__ = self._eager_class
        return twin

    def with_tier(self, tier):
        """The untransformed model in ``tier``: a transform runs in float32 only (``check_transform``), so this
        serves the one caller that asks a candidate for another tier, the estimate of a TF32 reference's own
        rounding (parity.compare.core.reference_tier_rounding), which is the eager model's to give."""
        return self.eager().with_tier(tier)

    def record(self) -> dict:
        rec = dict(self._base_record() or {})
        rec["not_observable"] = dict(self.unobservable)
        rec["transform"] = self.transform
        return rec


# ---------------------------------------------------------------------------------------------
# compile

class _Pretraining:
    """Stands in for a pre-training model whose encoder was compiled: TorchSide runs ``model.bert`` of it."""

    def __init__(self, bert, source):
        self.bert, self._source = bert, source

    def parameters(self):
        return self._source.parameters()


@contextlib.contextmanager
def quiet_torch_logs():
    """Dynamo's and inductor's warnings (graph breaks, the recompile limit) kept from stderr, which is for the one
    error line, and handed back as log records to count."""
    records: list = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    names = ("torch._dynamo", "torch._inductor", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    keep = Keep()
    for lg in loggers:
        lg.handlers[:] = [keep]
        lg.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield records
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.propagate = propagate


def _dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


class CompiledSide(_Transformed):
    """``torch.compile(backend="inductor")`` of the candidate's model (see the module docstring)."""

    transform = "compile"

    def _setup(self) -> None:
        import torch
        body = self.source.bert if self.head == "pretraining" else self.source
        with foreign(f"{self._where}: torch.compile", ours=OWN_ERRORS):
            compiled = torch.compile(body, backend="inductor")
        self.model = _Pretraining(compiled, self.source) if self.head == "pretraining" else compiled
        self.compile_seconds = 0.0   # first call of each input shape (and fetch): trace, compile, one run
        self.run_seconds = 0.0       # every other call: the compared runs
        self.compile_stats = {"graphs": 0, "graph_breaks": 0, "recompile_limit_hits": 0, "shapes": 0}
        self.outputs: dict = {}      # the last run's output taps (compile_evidence compares them with eager's)
        self._warmed: set = set()
        self._describe()

    def _describe(self) -> None:
        s = self.compile_stats
        if not s["shapes"]:
            how = "not yet run: it compiles on its first call"
        else:
            how = (f"{s['graphs']} graphs compiled, the model cut at {s['graph_breaks']} graph breaks (every tap "
                   f"point reads a ContextVar that Dynamo does not trace): compiled between taps, not as one graph"
                   + (f"; {s['recompile_limit_hits']} frame(s) hit Dynamo's recompile limit and run eagerly"
                      if s["recompile_limit_hits"] else ""))
        hidden = sum(1 for r in self.unobservable.values() if r == COMPILE_HIDDEN)
        self.description = (f"{self._base_description} [--transform compile: torch.compile(backend='inductor'), "
                            f"float32; {how}" + (f"; {hidden} taps not delivered" if hidden else "") + "]")

    def _forward(self, inputs) -> None:
        # inductor and Dynamo are libraries the candidate's run loads: what they raise is bad input naming it
        with foreign(f"{self._where} under --transform compile", ours=OWN_ERRORS + (ForeignError,)):
            super()._forward(inputs)

    def _warm(self, inputs, fetch) -> None:
        """The first call for these inputs' shape (and this fetch): compiles, and tells which taps come through."""
        import torch
        from bert_torch.taps import Taps
        from parity.numerics.precision import arithmetic
        key = (tuple(np.shape(inputs.input_ids)), None if fetch is None else tuple(sorted(fetch)))
        if key in self._warmed:
            return
        graphs, breaks = _dynamo_counts()
        t0 = time.perf_counter()
        with quiet_torch_logs() as logs, torch.no_grad(), arithmetic(self.tier, str(self.device)), \
                Taps(record=True if fetch is None else fetch) as taps:
            self._forward(inputs)
        self.compile_seconds += time.perf_counter() - t0
        self._warmed.add(key)
        graphs2, breaks2 = _dynamo_counts()
        s = self.compile_stats
        s["graphs"] += graphs2 - graphs
        s["graph_breaks"] += breaks2 - breaks
        s["recompile_limit_hits"] += sum("recompile_limit" in r.getMessage() for r in logs)
        s["shapes"] += 1
        wanted = self.tap_names if fetch is None else [n for n in fetch if n in self.tap_names]
        for name in wanted:
            if name not in taps.values:
                self.unobservable[name] = COMPILE_HIDDEN
        self.tap_names = [n for n in self.tap_names if n not in self.unobservable]
        self._describe()

    def run(self, inputs, fetch=None, inject=None, computed=None):
        if inject:
            raise CandidateError(f"{self._where}: a compiled model cannot be fed intermediate values "
                                 f"({sorted(inject)[0]}); compare it, or diagnose the eager model")
        self._warm(inputs, fetch)
        t0 = time.perf_counter()
        with quiet_torch_logs() as logs:
            out = super().run(inputs, fetch=fetch, computed=computed)
        self.run_seconds += time.perf_counter() - t0
        self.compile_stats["recompile_limit_hits"] += sum("recompile_limit" in r.getMessage() for r in logs)
        self.outputs = {n: np.array(out[n]) for n in output_taps(self.tap_names) if n in out}
        return out

    def stream(self, inputs, consume, inject=None, computed: bool = False) -> None:
        if inject:
            self.run(inputs, inject=inject)   # refused, in the words above
        self._warm(inputs, None)
        keep = set(output_taps(self.tap_names))
        self.outputs = {}

        def sink(name, value):
            if name in keep:
                self.outputs[name] = np.array(value)
            try:
                consume(name, value)
            except Exception as e:   # noqa: BLE001 - the harness's own error, carried through the model's forward
                raise _HarnessError(e) from None
        t0 = time.perf_counter()
        try:
            with quiet_torch_logs():
                super().stream(inputs, sink, None, computed)
        except _HarnessError as e:
            raise e.error from None
        self.run_seconds += time.perf_counter() - t0

    def compile_report(self) -> dict:
        """What the report records of the compilation: its time apart from the runs', and what Dynamo did."""
        return {"compile_seconds": round(self.compile_seconds, 3), "run_seconds": round(self.run_seconds, 3),
                **self.compile_stats, "backend": "inductor",
                "compile_seconds_means": "the first call of each input shape: tracing, compiling and one run"}


def compile_evidence(side, inputs) -> dict:
    """Per output tap, how far the compiled run (``side.outputs``) and the eager float32 model each are from the
    eager float64 model on ``inputs``: ``{tap: {"compiled_error", "eager_error", "scale"}}`` (max abs; scale is
    max |float64|). Two eager runs of the output taps; the compiled values are those of the compared run."""
    names = [n for n in output_taps(side.tap_names) if n in side.outputs]
    if not names:
        return {}
    eager = side.eager().run(inputs, fetch=names)
    c64 = side.float64().run(inputs, fetch=names)

    def err(a, b) -> float:
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        return float(np.nanmax(d)) if d.size else 0.0
    return {n: {"compiled_error": err(side.outputs[n], c64[n]), "eager_error": err(eager[n], c64[n]),
                "scale": float(np.nanmax(np.abs(c64[n]))) if np.size(c64[n]) else 0.0} for n in names}


# ---------------------------------------------------------------------------------------------
# int8-dynamic

class QuantizedSide(_Transformed):
    """``torch.ao.quantization.quantize_dynamic`` of the candidate's Linear layers (see the module docstring)."""

    transform = "int8-dynamic"

    def _setup(self) -> None:
        import torch
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
        body = self.source
        with foreign(f"{self._where}: torch.ao.quantization.quantize_dynamic", ours=OWN_ERRORS), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch.ao's deprecation notice: the API is what users run today
            model = torch.ao.quantization.quantize_dynamic(body, {torch.nn.Linear}, dtype=torch.qint8)
        quantized = [n for n, m in model.named_modules() if isinstance(m, QLinear)]
        if not quantized:
            raise CandidateError(f"{self._where}: --transform int8-dynamic found no torch.nn.Linear to quantize")
        # A tap hook lost in the swap would silently drop its tap: the hooks must all have come along.
        before = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in body.named_modules()}
        after = dict(model.named_modules())
        lost = [n for n, hooks in before.items() if n in after and hooks != (len(after[n]._forward_hooks),
                                                                         len(after[n]._forward_pre_hooks))]
        if lost:
            raise CandidateError(f"{self._where}: quantizing {lost[0]} dropped its tap hooks")
        self.model = model
        self.quantized_linears = quantized
        engine = torch.backends.quantized.engine
        self.description = (f"{self._base_description} [--transform int8-dynamic: {len(quantized)} nn.Linear layers "
                            f"dynamically quantized (torch.ao, engine {engine}: int8 weights per tensor, each input "
                            f"quantized to uint8 on the fly, float32 out); embeddings, LayerNorm, softmax, GELU and "
                            f"the attention matmuls in float32: taps after a Linear carry its int8 error]")

    def float32(self):
        """The same model unquantized, in plain float32: the rounding the float32 tolerances are measured from, so
        that the per-tap rows show where the int8 error enters."""
        import torch
        return self._twin(torch.float32)


# ---------------------------------------------------------------------------------------------
# The verdict of a lossy form

def lossy_rule_words(form: str) -> str:
    return (f"lossy form ({form}): every output tap (the last layer's output, the pooler, the head's logits) has "
            f"cosine >= {LOSSY_MIN_COSINE} against the reference, no tap holds NaN/Inf, no declared tap is missing "
            f"or misshapen; the per-tap rows and first_divergence show where the error enters against float32 "
            f"tolerances, they are not the verdict. The task-level verdict is bert-parity evaluate's (--min-ratio)")


def lossy_rule(report: dict, form: str) -> dict:
    """Judges ``report`` (compare's, in place) by the lossy rule and returns its record (``report["lossy"]``).

    Why outputs and cosine: quantization error enters at every Linear and is carried forward, so per-tap float32
    tolerances fail a correct int8 model everywhere; what a deployed model must keep is the direction of what it
    returns. Broken structure (a missing or misshapen tap, a NaN) fails whatever the outputs say, and a candidate
    with the other GELU stays a failure (compare's own rule)."""
    rows = report["taps"]
    by_name = {t["name"]: t for t in rows}
    outputs = output_taps([t["name"] for t in rows])
    checked = []
    for n in outputs:
        cos = by_name[n].get("cosine")
        ok = isinstance(cos, (int, float)) and cos >= LOSSY_MIN_COSINE
        checked.append({"name": n, "cosine": cos, "passed": bool(ok)})
    broken = [t["name"] for t in rows if t.get("non_finite") or t.get("max_abs") is None]
    gelus = (report.get("sides") or {}).get("gelu") or {}
    other_gelu = bool(gelus.get("reference") and gelus.get("candidate") and gelus["reference"] != gelus["candidate"])
    passed = bool(outputs) and all(c["passed"] for c in checked) and not broken and not other_gelu
    why = ("no output tap to judge" if not outputs else
           f"{broken[0]}: missing, misshapen or non-finite" if broken else
           "the candidate computes the other GELU" if other_gelu else
           next((f"{c['name']}: cosine {c['cosine']} < {LOSSY_MIN_COSINE}" for c in checked if not c["passed"]), None))
    record = {"form": form, "min_cosine": LOSSY_MIN_COSINE, "outputs": checked, "passed": passed, "reason": why,
              "taps_within_float32_tolerance": sum(bool(t["passed"]) for t in rows), "taps": len(rows)}
    report["lossy"] = record
    report["rule"] = lossy_rule_words(form)
    report["verdict"] = "pass" if passed else "fail"
    report.setdefault("notes", []).append(
        f"{form} is a lossy form: judged by its outputs' cosine (>= {LOSSY_MIN_COSINE}), "
        f"{'passed' if passed else 'failed: ' + str(why)}; {record['taps_within_float32_tolerance']} of "
        f"{len(rows)} taps are within float32 tolerance, and the first over it ({report.get('first_divergence')}) is "
        f"where the error enters. The task-level verdict comes from bert-parity evaluate")
    return record
