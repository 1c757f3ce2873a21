"""Both sides run on a task's features, keeping only the head's logits: the reference (the official graph with the
checkpoint's head) and the candidate see the same batches; only the head taps are fetched, so memory holds the
dev set's logits and one batch's activations, never every tap of every batch. The TF side's runs go through the
TF reference cache like its taps (``parity.sides.refcache``: ``$BERT_PARITY_TF_CACHE``).

Also here: what a candidate must offer (the head's taps), its float32 rounding on chosen examples (a float64 run),
and whether an ONNX candidate is quantized.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from parity.evaluate.data import HEAD_TAPS, HEADS, TaskData, batches
from parity.inputs import BadInput

HOW_TO_GET_A_HEAD = {
    "classifier": "a fine-tuned sequence classifier: bert_torch weights converted with the head (classifier.weight), "
                  "an hf: BertForSequenceClassification folder, or an ONNX file exported from one",
    "squad": "a fine-tuned SQuAD model: bert_torch weights converted with the head (qa_outputs.weight), an hf: "
             "BertForQuestionAnswering folder, or an ONNX file exported from one",
}
# Operators of quantized ONNX graphs (onnxruntime's quantization tools write these).
QUANTIZED_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "QLinearMatMul",
                 "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization",
                 "ConvInteger", "QLinearConv", "QGemm", "MatMulNBits"}
NOT_QUANTIZED = ("", "none", "no", "false", "off", "0", "fp32", "float32")


def check_head(side, task: str, where: str) -> tuple:
    """The head taps the task needs, which ``side`` must give (else a BadInput saying why and what would do)."""
    head = HEADS[task]
    taps = HEAD_TAPS[head]
    for tap in taps:
        reason = (side.unobservable or {}).get(tap)
        if tap not in side.tap_names or reason:
            other = getattr(side, "head", None) or next(
                (h for h, t in HEAD_TAPS.items() if t[0] in side.tap_names), None)
            what = (f"it declares the tap unobservable: {reason}" if reason else
                    f"its model has {'a ' + other + ' head' if other else 'no task head'}, not a {head} one")
            raise BadInput(f"{where}: the candidate gives no {tap} ({what}); --task {task} needs "
                           f"{HOW_TO_GET_A_HEAD[head]}")
    return taps


class PlainForward:
    """A ``bert_torch`` candidate's head logits from its plain forward: no tap context, so the model runs its fast
    path (fused kernels: what users run, and about twice as fast as the op-for-op path a tap context selects;
    parity/test_fast_path.py holds it to the official graph). The arithmetic is the side's (``--precision``)."""

    def __init__(self, side):
        self.side = side
        self.name, self.capabilities = side.name, side.capabilities
        self.taps = HEAD_TAPS[side.head]

    def run(self, inputs, fetch=None) -> dict:
        import torch
        from parity.numerics.precision import arithmetic
        side = self.side
        args = [torch.from_numpy(np.asarray(a)).to(side.device, torch.long)
                for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
        with torch.no_grad(), arithmetic(side.tier, str(side.device)):
            out = side.model(*args)
        out = out if isinstance(out, tuple) else (out,)
        as_np = lambda v: (v if v.dtype == torch.float64 else v.float()).cpu().numpy()  # noqa: E731
        return {name: as_np(v) for name, v in zip(self.taps, out) if fetch is None or name in fetch}


def plain_forward(side, kind: str, transform: Optional[str]):
    """The runner of the head logits: a plain ``bert_torch`` candidate through ``PlainForward``, any other (another
    kind, or a transformed model, whose own ``run`` knows what it wraps) through its ``run``."""
    from parity.sides.base import TorchSide
    if kind == "bert_torch" and transform is None and type(side) is TorchSide and side.head in HEAD_TAPS:
        return PlainForward(side)
    return side


def run_sides(reference, candidate, data: TaskData, taps: tuple, batch_size: int, where: str,
              columns: Optional[list] = None) -> tuple[dict, dict, dict]:
    """(reference logits, candidate logits, seconds per side): tap -> float32 [F, ...] over every feature.
    ``columns``: the candidate's classifier column of each official label (an hf: config's id2label)."""
    ref: dict = {}
    cand: dict = {}
    seconds = {"reference": 0.0, "candidate": 0.0}
    n = data.num_features
    for idx, inputs in batches(data, batch_size):
        t0 = time.perf_counter()
        r = reference.run(inputs, fetch=list(taps))
        t1 = time.perf_counter()
        c = candidate.run(inputs, fetch=list(taps))
        seconds["reference"] += t1 - t0
        seconds["candidate"] += time.perf_counter() - t1
        for tap in taps:
            want = np.asarray(r[tap])
            if tap not in c:
                raise BadInput(f"{where}: the candidate gave no {tap} on features {idx[0]}..{idx[-1]}, though it "
                               f"declares the tap")
            got = np.asarray(c[tap], np.float32)
            if got.shape != want.shape:
                raise BadInput(f"{where}: the candidate's {tap} is {list(got.shape)}, the reference's "
                               f"{list(want.shape)}" + (f" (the checkpoint's head has {want.shape[-1]} labels)"
                                                        if tap == "classifier/logits" else ""))
            if columns is not None and tap == "classifier/logits":
                got = got[:, columns]
            if tap not in ref:
                ref[tap] = np.empty((n,) + want.shape[1:], np.float32)
                cand[tap] = np.empty((n,) + want.shape[1:], np.float32)
            ref[tap][idx] = want
            cand[tap][idx] = got
        del r, c
    return ref, cand, seconds


def float64_twin(runner) -> tuple[Optional[object], Optional[str]]:
    """The float64 twin (the same model in float64) of a candidate's runner, run the same way, or None and why
    not."""
    side = runner.side if isinstance(runner, PlainForward) else runner
    if not getattr(side.capabilities, "float64", False):
        return None, f"{side.name} has no float64 run"
    try:
        twin = side.float64()
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        return None, f"its float64 run failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if twin is None:
        return None, f"{side.name} has no float64 run"
    return (PlainForward(twin) if isinstance(runner, PlainForward) else twin), None


def rounding(candidate, twin, data: TaskData, rows: np.ndarray, taps: tuple, batch_size: int,
             columns: Optional[list] = None) -> dict:
    """feature row -> max |float32 - float64| of the candidate's head logits there: its own float32 rounding,
    both runs on the same batch (the rows given, in order)."""
    out = {}
    for idx, inputs in batches(data, batch_size, rows):
        c32 = candidate.run(inputs, fetch=list(taps))
        c64 = twin.run(inputs, fetch=list(taps))
        worst = np.zeros(len(idx))
        for tap in taps:
            a, b = np.asarray(c32[tap], np.float64), np.asarray(c64[tap], np.float64)
            if columns is not None and tap == "classifier/logits":
                a, b = a[:, columns], b[:, columns]
            worst = np.maximum(worst, np.abs(a - b).reshape(len(idx), -1).max(axis=1))
        out.update({int(i): float(w) for i, w in zip(idx, worst)})
    return out


def weight_files(kind: str, path: str) -> Optional[str]:
    """The weights file of a candidate whose file holds the contract's tensor names (``bert_torch`` its file, ``hf``
    its folder's model.safetensors or pytorch_model.bin), or None (another kind: its names are its own)."""
    if kind == "bert_torch":
        return path
    if kind == "hf":
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
    return None


def weights_against_checkpoint(kind: str, path: str, prefix: str, config) -> tuple[Optional[list], Optional[str]]:
    """(hints, None) from the candidate's weights file against the checkpoint's variables (``judge.weights_hints``:
    an empty list when every tensor is bit-equal), or (None, why not)."""
    from bert_torch.convert import tf_to_torch
    from bert_torch.tf_checkpoint import open_checkpoint
    from bert_torch.weights import WeightsError, read_weights
    from parity.evaluate.judge import weights_hints
    file = weight_files(kind, path)
    if file is None:
        return None, f"a {kind} candidate's weights are not read by evaluate"
    try:
        pt_w = read_weights(file)
    except WeightsError as e:
        return None, f"its weights file did not read ({e.problems[0]})"
    tf_w, _ = tf_to_torch(open_checkpoint(prefix), config, where=prefix)   # lazy: each tensor read when compared
    return weights_hints(tf_w, pt_w), None


def onnx_quantization(side, path: str) -> Optional[str]:
    """Why an ONNX candidate counts as quantized (a lossy form), or None: its metadata says so (a key such as
    ``bert_parity.quantize``, as export-onnx --quantize writes it), or its graph holds quantized operators."""
    session = getattr(side, "session", None)
    if session is not None:
        meta = session.get_modelmeta().custom_metadata_map or {}
        for key, value in sorted(meta.items()):
            if "quantiz" in key.lower() and str(value).strip().lower() not in NOT_QUANTIZED:
                return f"metadata {key}={value}"
    try:
        import onnx
        model = onnx.load(path, load_external_data=False)
    except Exception:   # noqa: BLE001 - the file already loaded in onnxruntime; this look is a second opinion only
        return None
    ops = sorted({node.op_type for node in model.graph.node} & QUANTIZED_OPS)
    return f"quantized operators {', '.join(ops)}" if ops else None
