"""``--candidate onnx:FILE``: an ONNX export run by onnxruntime on CPU, taps as graph outputs (extra ``onnx``).

An ONNX graph keeps no module boundaries to hook, so the taps must be graph outputs named by their
contract names. ``python -m parity.candidates.export_onnx`` writes such a file from any PyTorch candidate:

    python -m parity.candidates.export_onnx --candidate hf:DIR --bert-config bert_config.json --out model.onnx

It traces the candidate (``torch.onnx.export``, TorchScript exporter) under ``bert_torch.taps.Taps``, so every
tap the candidate publishes becomes a graph output; batch and sequence stay dynamic. The file's
metadata (``bert_parity.taps``, ``bert_parity.gelu``, ``bert_parity.source``) says which taps it carries and
which GELU the source computed. A user's own ONNX file works when its inputs are ``input_ids``,
``token_type_ids`` and ``attention_mask`` and its taps are outputs named as the contract's.

``--onnx-optimization all|off`` (compare) picks onnxruntime's graph optimisation level: fusions are a
real source of mismatches, so both are worth a run. Taps as outputs keep their tensors alive, which can
block a fusion that would otherwise run (the comparison sees the graph with its taps, not without).
No injection: onnxruntime cannot replace an intermediate value, so ``diagnose`` refuses this kind.

``--optimize`` runs onnxruntime's transformer fusions (``onnxruntime.transformers``, model_type ``bert``, the
config's num_heads and hidden_size: fused Attention, Gelu/FastGelu, LayerNormalization, SkipLayerNormalization,
EmbedLayerNormalization where the graph matches their patterns). Graph outputs block a fusion (a fused node cannot
hand out its insides), so the fusions run on the graph with the model's outputs only (``output_taps``: the last
layer, the pooler, the head), and afterwards every tap whose tensor the fused graph still computes under its name
becomes a graph output again; the others are gone, and the file says why in ``bert_parity.unobservable`` (tap ->
reason), which the onnx side reports them with. Measured on the tests' 2-layer model: bert_torch's export (its
LayerNorm in TF's op order matches no LayerNorm pattern) gets FastGelu, and loses the keys (their transpose is
folded into the scores' matmul); an HF export gets FastGelu and SkipLayerNormalization, and loses
embeddings/sum, the keys, the attention and output dense taps (inside SkipLayerNormalization), and the scores and
probs its tapping attention computed only to publish them. ``bert_parity.fusions`` records the fused operators.

``--quantize int8`` runs onnxruntime's ``quantize_dynamic`` on the MatMul (and fused Attention) nodes with
constant weights: the Linear layers, as ``--transform int8-dynamic`` quantizes them in PyTorch; the embedding
lookups (Gather) stay float32, where onnxruntime's default would quantize them too (the ``quantized_embeddings``
hint names that case in others' files). ``--weight-type`` QInt8 (the default: onnxruntime's U8S8 kernels) or
QUInt8 (U8U8). The file records ``bert_parity.quantize`` = ``int8-dynamic`` and ``bert_parity.weight_type``.
Both steps happen before the file is renamed into place: a failure leaves nothing at ``--output``.
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings
from typing import Optional

import torch

from bert_torch._io import atomic_output, check_not_input, note_input
from bert_torch.modeling import BertConfig
from bert_torch.commands import foreign, run_main
from bert_torch.taps import Taps

from parity.candidates.factory import OWN_ERRORS, CandidateError, CandidateSide, make_candidate, parse_candidate
from parity.candidates.onnx import INPUTS, OPTIMIZATION, OnnxSide  # noqa: F401  (re-exported)
from parity.candidates.options import ExportOnnxOptions


class _TapsAsOutputs(torch.nn.Module):
    """The candidate's model, returning every published tap as an output, in forward order."""

    def __init__(self, side, names: list[str]):
        super().__init__()
        self.model, self.names = side.model, names
        self.pretraining = getattr(side, "head", None) == "pretraining"

    def forward(self, input_ids, token_type_ids, attention_mask):
        with Taps(record=True) as taps:
            (self.model.bert if self.pretraining else self.model)(input_ids, token_type_ids, attention_mask)
        return tuple(taps.values[n] for n in self.names)


def inline_shared_initializers(graph) -> int:
    """Replaces each ``Identity`` of an initializer by an initializer of its own (returns how many). torch's
    exporter merges parameters of equal value (a freshly initialised model's LayerNorm weights are all ones)
    into one initializer read through Identity nodes, and onnxruntime's graph optimisations (``ORT_ENABLE_ALL``)
    remove such an Identity while a node still reads its output: the file would not load. A trained model
    seldom has equal parameters, so this copies little."""
    from onnx import numpy_helper
    inits = {i.name: i for i in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits]
    for node in aliases:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0]))
        graph.node.remove(node)
    return len(aliases)


def export_onnx(side, path: str, vocab_size: int, batch: int = 2, seq: int = 16, opset: int = 17, *,
                optimize: bool = False, quantize: Optional[str] = None, weight_type: str = "QInt8",
                num_heads: int = 0, hidden_size: int = 0) -> list[str]:
    """Writes ``side``'s model to ``path`` with its taps as outputs; returns the tap names the file carries. The
    file is written aside and renamed into place: no part of it is left behind by a failure, SIGTERM or SIGINT.
    ``optimize``, ``quantize`` (``int8``), ``weight_type``: see the module docstring; ``num_heads`` and
    ``hidden_size`` are the fusions' (the config's)."""
    import onnx
    names = list(side.tap_names)
    # The tracer records ops, not values: any id the embedding can look up will do (the smallest vocabulary
    # is the candidate's; 1000 is a plain word piece in BERT's own).
    ids = torch.full((batch, seq), min(1000, vocab_size - 1), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0   # a padded row, so the mask path is traced as it runs
    # Tracing runs the candidate's forward: someone else's code, unless it is bert_torch's own model.
    traced = (foreign(f"--candidate {side.spec}: cannot be exported to ONNX", ours=OWN_ERRORS)
              if isinstance(side, CandidateSide) else contextlib.nullcontext())
    with atomic_output(path, "--output") as tmp:
        # The tracer warns about Python conditions it freezes (e.g. transformers' "no padding, no mask"
        # shortcut); the traced row with padding takes the general path, right for every input.
        with traced, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TapsAsOutputs(side, names).eval(), (ids, torch.zeros_like(ids), mask), tmp,
                              dynamo=False, opset_version=opset, input_names=list(INPUTS), output_names=names,
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in INPUTS})
        model = onnx.load(tmp)
        inline_shared_initializers(model.graph)
        meta = {"bert_parity.gelu": side.gelu or "", "bert_parity.source": side.description}
        if optimize:
            model, names, hidden, fused = optimize_graph(model, names, num_heads, hidden_size)
            meta.update({"bert_parity.optimize": "bert", "bert_parity.fusions": json.dumps(fused),
                         "bert_parity.unobservable": json.dumps(hidden)})
        if quantize:
            model, names, lost = quantize_graph(model, names, weight_type, tmp)
            meta.update({"bert_parity.quantize": "int8-dynamic", "bert_parity.weight_type": weight_type,
                         "bert_parity.quantize_ops": ",".join(QUANTIZE_OPS)})
            if lost:
                hidden = {**json.loads(meta.get("bert_parity.unobservable", "{}")), **lost}
                meta["bert_parity.unobservable"] = json.dumps(hidden)
        meta["bert_parity.taps"] = json.dumps(names)
        set_metadata(model, meta)
        onnx.save(model, tmp)
    return names


def set_metadata(model, meta: dict) -> None:
    """``meta`` into the model's metadata_props, replacing entries of the same keys."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for key, value in kept + sorted(meta.items()):
        model.metadata_props.add(key=key, value=value)


def _value_infos(graph) -> dict:
    import onnx
    out = {}
    for o in graph.output:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(o)
        out[o.name] = copy
    return out


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime's Python tools log their progress (and warnings about patterns they skip) through logging;
    stderr is for the one error line."""
    import logging
    # quantize_dynamic warns on the root logger ("consider pre-processing"), the fusions on "onnxruntime.*"
    loggers = [logging.getLogger("onnxruntime"), logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def optimize_graph(model, names: list[str], num_heads: int, hidden_size: int):
    """onnxruntime's BERT fusions on ``model`` (see the module docstring): returns the fused model, the taps it
    still carries as outputs (in forward order), the lost taps with their reason, and the fused operator counts.

    The fusions are ``optimize_model``'s python fusion pass (``optimize_by_fusion``, model_type bert) run through a
    subclass of onnxruntime's ``BertOnnxModel`` that skips the two RMSNorm ("simplified" LayerNorm) fusions: BERT
    has no RMSNorm, and onnxruntime 1.32's fuse_simplified_layer_norm raises TypeError (it indexes a NodeProto) on a
    variance computed as ``d * d``, which bert_torch's exports have. onnxruntime's own graph optimisations are not
    run here: the session applies them when the file loads (``--onnx-optimization all``)."""
    from onnxruntime import __version__ as ort_version
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    from parity.candidates.transforms import output_taps

    class BertFusions(BertOnnxModel):
        def fuse_simplified_layer_norm(self):
            pass

        def fuse_skip_simplified_layer_norm(self):
            pass

    outputs = _value_infos(model.graph)
    final = set(output_taps(names)) or set(names[-1:])
    del model.graph.output[:]
    model.graph.output.extend(outputs[n] for n in names if n in final)
    with _quiet_onnxruntime(), foreign("--optimize: onnxruntime's transformer optimizer failed"):
        fused = BertFusions(model, num_heads, hidden_size)
        fused.optimize(FusionOptions("bert"))
        fused.topological_sort()
        counts = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    model = fused.model
    model.producer_name, model.producer_version = "onnxruntime.transformers", ort_version
    # The fused operators live in onnxruntime's domain, which the file must import (OnnxModel.save adds it too).
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    graph = model.graph
    present = {o for node in graph.node for o in node.output} | {i.name for i in graph.initializer}
    kept = [n for n in names if n in final or n in present]
    del graph.output[:]
    graph.output.extend(outputs[n] for n in kept)
    what = ", ".join(f"{k} x{v}" for k, v in counts.items()) or "nothing matched"
    reason = (f"not in the graph after onnxruntime's transformer fusions (model_type bert; fused: {what}): "
              f"fused into a larger operator or pruned, the tensor is not materialised")
    return model, kept, {n: reason for n in names if n not in kept}, counts


QUANTIZE_OPS = ("MatMul", "Attention")   # the Linear layers (constant weights); Gather (embeddings) left float


def quantize_graph(model, names: list[str], weight_type: str, scratch: str):
    """onnxruntime's ``quantize_dynamic`` of ``model`` (written to ``scratch``, the export's own temporary file):
    returns the quantized model, the taps it still carries, and any it lost with the reason."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with _quiet_onnxruntime(), foreign("--quantize int8: onnxruntime's quantize_dynamic failed"):
        quantize_dynamic(model, scratch, weight_type=QuantType[weight_type], op_types_to_quantize=list(QUANTIZE_OPS),
                         per_channel=False, reduce_range=False)
    model = onnx.load(scratch)
    graph = model.graph
    present = {o for node in graph.node for o in node.output} | {i.name for i in graph.initializer}
    outputs = _value_infos(graph)
    kept = [n for n in names if n in present and n in outputs]
    if len(kept) != len(names):
        del graph.output[:]
        graph.output.extend(outputs[n] for n in kept)
    reason = "not in the graph after onnxruntime's quantize_dynamic: the tensor is not materialised"
    return model, kept, {n: reason for n in names if n not in kept}


def run_export(opts: ExportOnnxOptions) -> int:
    """Writes ``opts.out`` from the candidate; its own file or folder is an input, never the output."""
    spec = parse_candidate(opts.candidate)
    if spec.kind == "onnx":
        raise CandidateError(f"--candidate {spec}: already ONNX")
    if spec.kind != "module":
        note_input(spec.path)
    check_not_input(opts.out, "--output")
    config = BertConfig.from_json_file(opts.bert_config)
    side = make_candidate(spec, config=config)
    names = export_onnx(side, opts.out, config.vocab_size, optimize=opts.optimize, quantize=opts.quantize,
                        weight_type=opts.weight_type, num_heads=config.num_attention_heads,
                        hidden_size=config.hidden_size)
    steps = (["transformer fusions"] if opts.optimize else []) + \
        ([f"int8 dynamic quantization ({opts.weight_type} weights)"] if opts.quantize else [])
    print(f"{opts.out}: {len(names)} taps as graph outputs{' after ' + ' and '.join(steps) if steps else ''}, "
          f"from {side.description}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity export-onnx`` (``python -m parity.candidates.export_onnx``)."""
    return run_main(lambda: run_export(ExportOnnxOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
