"""The one interface the harness knows: a *side* runs inputs and returns named taps.

    side.run(inputs, fetch=None, inject=None) -> {tap name: float32 array in contract layout}

``fetch`` picks taps (None: all); ``inject`` replaces taps by given arrays. The harness
never looks behind this: a TensorFlow graph, a PyTorch model and (later) a saved golden
file are interchangeable.
"""
from __future__ import annotations

import copy
import os
from typing import Iterable, Mapping, Optional, Protocol

import numpy as np
import torch

from bert_torch.modeling import BertConfig
from bert_torch.taps import Taps, tap_names, tap_shape
from bert_torch.weights import load_model

from .inputs import Inputs
from .precision import Tier, arithmetic


class Side(Protocol):
    name: str
    description: str
    tap_names: list[str]

    def run(self, inputs: Inputs, fetch: Optional[Iterable[str]] = None,
            inject: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]: ...


TAP_HEADS = {"classifier": "classifier", "squad": "squad"}   # heads with taps of their own


class TorchSide:
    """A ``bert_torch`` model; taps are read (and replaced) through ``bert_torch.taps.Taps``."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", head: Optional[str] = None,
                 tier: Tier = Tier()):
        # The model as given (float32 for a tier's "cast" mode: the twins start from the uncast weights).
        self.source = model.to(device).eval()
        self.model = copy.deepcopy(self.source).to(tier.cast_dtype) if tier.cast_dtype else self.source
        self.device = torch.device(device)
        self.head = head
        self.tier = tier
        cfg = model.config
        self.tap_names = tap_names(cfg.num_hidden_layers, TAP_HEADS.get(head))
        self.description = (f"bert_torch {type(model).__name__} (hidden_act={cfg.hidden_act}, "
                            f"{next(self.model.parameters()).dtype}, {self.device}, "
                            f"precision {tier.describe(str(self.device))})")

    @classmethod
    def from_weights(cls, path: str, config: BertConfig, device: str = "cpu",
                     dtype: torch.dtype = torch.float32, tier: Tier = Tier()) -> "TorchSide":
        model = load_model(path, config, head="auto", device=device, dtype=dtype)
        head = {"BertForSequenceClassification": "classifier", "BertForQuestionAnswering": "squad",
                "BertForPreTraining": "pretraining"}.get(type(model).__name__)
        return cls(model, device, head, tier)

    def with_tier(self, tier: Tier) -> "TorchSide":
        """The same model (the same object: patches included) run in another precision tier. A shallow
        copy, so that a subclass (parity.candidates) keeps its hooks, taps and record."""
        side = copy.copy(self)
        side.tier = tier
        side.model = copy.deepcopy(self.source).to(tier.cast_dtype) if tier.cast_dtype else self.source
        if tier.reduced:
            side.description = f"{self.description} [precision {tier.describe(str(self.device))}]"
        return side

    def _twin(self, dtype: torch.dtype) -> "TorchSide":
        # A deep copy keeps any patched attribute (and a candidate's hooks); plain arithmetic in ``dtype``
        # (no autocast, TF32 off), from the uncast weights.
        twin = copy.copy(self)
        twin.source = twin.model = copy.deepcopy(self.source).to(dtype)
        twin.tier = Tier()
        return twin

    def float64(self) -> "TorchSide":
        """The same model in float64: the precision ladder's rung, and the reference of every tier's rounding."""
        return self._twin(torch.float64)

    def float32(self) -> Optional["TorchSide"]:
        """The same model in plain float32 arithmetic, or None when this side is exactly that already."""
        plain = not self.tier.reduced and all(p.dtype == torch.float32 for p in self.model.parameters())
        return None if plain else self._twin(torch.float32)

    def run(self, inputs: Inputs, fetch=None, inject=None, computed: Optional[dict] = None) -> dict[str, np.ndarray]:
        """``computed``, when given a dict, receives what the model computed at each injected
        tap before the injection replaced it (``Taps.computed``): with every block's input
        injected, one run gives every block's own output (parity.diagnose)."""
        unknown = sorted(set(inject or ()) - set(self.tap_names))
        if unknown:
            raise ValueError(f"pytorch side: no tap named {unknown[0]}")
        dtype = next(self.model.parameters()).dtype
        as_tensor = lambda a, dt: torch.from_numpy(np.asarray(a)).to(self.device, dt)
        with torch.no_grad(), arithmetic(self.tier, str(self.device)), \
                Taps(record=True if fetch is None else fetch,
                     inject={k: as_tensor(v, dtype) for k, v in (inject or {}).items()}) as taps:
            args = [as_tensor(a, torch.long) for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
            if self.head == "pretraining":
                self.model.bert(*args)   # the MLM/NSP heads have no contract taps
            else:
                self.model(*args)
        # float32, except that a float64 model keeps float64 (the precision ladder's reference).
        out = lambda v: (v if v.dtype == torch.float64 else v.float()).cpu().numpy()
        if computed is not None:
            computed.update({k: out(v) for k, v in taps.computed.items()})
        return {k: out(v) for k, v in taps.values.items()}


class FastPathSide:
    """A ``bert_torch`` model on its fast path (no ``Taps`` context: fused kernels, what users run).

    It exposes what a plain forward returns: every ``layer_i/output`` (``all_encoder_layers``), the
    pooler, and the head's logits; inner taps do not exist on this path. No injection."""

    name = "pytorch (fast path)"

    def __init__(self, side: TorchSide):
        self.side = side
        cfg = side.model.config
        self.tap_names = [f"layer_{i}/output" for i in range(cfg.num_hidden_layers)] + ["pooler/output"] + \
            [t for t in side.tap_names if t.startswith(("classifier/", "squad/"))]
        self.description = side.description.replace("bert_torch", "bert_torch fast path", 1)
        self.tier = side.tier
        self.device = side.device

    def float64(self) -> "FastPathSide":
        return FastPathSide(self.side.float64())

    def run(self, inputs: Inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        if inject:
            raise ValueError("the fast path has no taps to inject into; use the tapped side")
        model, dev = self.side.model, self.side.device
        args = [torch.from_numpy(np.asarray(a)).to(dev, torch.long)
                for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
        body = model if self.side.head is None else model.bert
        with torch.no_grad(), arithmetic(self.side.tier, str(dev)):
            layers, pooled = body(*args)
            out = {f"layer_{i}/output": x for i, x in enumerate(layers)}
            out["pooler/output"] = pooled
            if self.side.head in TAP_HEADS:   # the head's own forward (a second pass: no re-implementation)
                logits = model(*args)
                heads = [t for t in self.tap_names if t.startswith(("classifier/", "squad/"))]
                out.update(zip(heads, logits if isinstance(logits, tuple) else (logits,)))
        as_np = lambda v: (v if v.dtype == torch.float64 else v.float()).cpu().numpy()  # noqa: E731
        return {k: as_np(v) for k, v in out.items() if fetch is None or k in fetch}


class TFSide:
    """Google's official graph through ``reference_tf`` (imported only when this side is used)."""

    name = "tensorflow"

    def __init__(self, checkpoint_prefix: str, config: BertConfig, head: Optional[str] = None,
                 num_labels: int = 2, intra_op_threads: Optional[int] = None):
        from reference_tf import TFReference   # the only route to TensorFlow
        self.ref = TFReference(checkpoint_prefix, config.to_dict(), head=TAP_HEADS.get(head),
                               num_labels=num_labels, intra_op_threads=intra_op_threads)
        self.tap_names = list(self.ref.tap_names)
        self.description = self.ref.description
        self.precision = self.ref.precision   # float32, or TF32 on a GPU that has it (see TFReference.precision)

    def run(self, inputs: Inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        out = self.ref.run(inputs.input_ids, inputs.token_type_ids, inputs.input_mask, fetch=fetch, inject=inject)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def close(self) -> None:
        self.ref.close()


class GoldenError(ValueError):
    """A golden file that is corrupt, of another format, or not for these weights: one line, exit 2."""


class GoldenSide:
    """A reference side replayed from a golden file: TF's taps saved by ``python -m reference_tf dump``.

    Lets a machine without TensorFlow (a GPU box, a lean CI job) compare against the official
    graph. The file is safetensors (README, "Golden files"): int32 ``inputs/input_ids``,
    ``inputs/token_type_ids``, ``inputs/input_mask`` [B,T]; float32 ``taps/<tap name>`` in
    the contract layout; and ``__metadata__`` keys ``format`` (``bert-parity-golden``),
    ``format_version`` and ``golden`` (JSON: ``tap_names`` in forward order, ``head``,
    ``num_labels``, ``bert_config``, ``reference`` description, ``inputs`` meta, and the
    dumping machine's ``environment`` with the checkpoint's sha256s).
    """

    name = "tensorflow (golden file)"
    FORMAT = "bert-parity-golden"
    FORMAT_VERSION = "1"

    def __init__(self, path: str):
        from safetensors import safe_open
        self.path = path
        try:
            with safe_open(path, framework="np") as f:
                header = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise GoldenError(f"{path}: no such golden file") from None
        except Exception as e:   # safetensors raises its own error types for truncation and bad headers
            raise GoldenError(f"{path}: not a readable golden file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if header.get("format") != self.FORMAT:
            raise GoldenError(f"{path}: not a bert-parity golden file (metadata format={header.get('format')!r})")
        if header.get("format_version") != self.FORMAT_VERSION:
            raise GoldenError(f"{path}: golden format version {header.get('format_version')!r}; "
                              f"this bert-parity reads version {self.FORMAT_VERSION}")
        try:
            from bert_torch._io import loads   # bounded nesting, one line naming the file
            self.meta = loads(header["golden"], path, "golden file metadata")
            self.config = BertConfig.from_dict(self.meta["bert_config"])
            self.tap_names = list(self.meta["tap_names"])
            self.head = self.meta["head"]
            self.num_labels = int(self.meta["num_labels"])
            input_meta = dict(self.meta["inputs"])
        except (KeyError, TypeError, ValueError) as e:
            raise GoldenError(f"{path}: golden metadata is incomplete or malformed ({type(e).__name__}: {e})") from None
        self.description = f"{self.meta.get('reference', 'official TF graph')}, replayed from golden file {os.path.basename(path)}"
        # The recorded run's arithmetic (files before it was recorded: float32 on a CPU, the only kind then).
        self.precision = self.meta.get("precision") or {"tier": "fp32", "device": "cpu"}
        ids = [arrays.get(f"inputs/{k}") for k in ("input_ids", "token_type_ids", "input_mask")]
        if any(a is None for a in ids) or len({a.shape for a in ids}) != 1 or ids[0].ndim != 2:
            raise GoldenError(f"{path}: inputs/input_ids, inputs/token_type_ids, inputs/input_mask must all be [B,T]")
        self.inputs = Inputs(*(a.astype(np.int32) for a in ids), meta=input_meta)
        B, T = ids[0].shape
        cfg = self.config
        self._taps = {}
        for name in self.tap_names:
            a = arrays.get(f"taps/{name}")
            want = tap_shape(name, B, T, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, self.num_labels)
            if a is None:
                raise GoldenError(f"{path}: tap {name} is listed in the metadata but missing from the file")
            if tuple(a.shape) != want or a.dtype != np.float32:
                raise GoldenError(f"{path}: tap {name} is {a.dtype}{list(a.shape)}, expected float32{list(want)} "
                                  f"for its bert_config")
            self._taps[name] = a

    @classmethod
    def write(cls, path: str, inputs: Inputs, taps: Mapping[str, np.ndarray], meta: dict) -> None:
        """Writes a golden file atomically; ``meta`` holds the JSON fields listed in the class docstring."""
        from bert_torch._io import atomic_output, dumps, save_safetensors
        tensors = {f"inputs/{k}": np.ascontiguousarray(v, np.int32) for k, v in
                   (("input_ids", inputs.input_ids), ("token_type_ids", inputs.token_type_ids),
                    ("input_mask", inputs.input_mask))}
        tensors.update({f"taps/{k}": np.ascontiguousarray(v, np.float32) for k, v in taps.items()})
        header = {"format": cls.FORMAT, "format_version": cls.FORMAT_VERSION, "golden": dumps(meta, sort_keys=True)}
        with atomic_output(path, "golden file") as tmp:   # removed on failure, full disk, SIGTERM/SIGINT
            save_safetensors(tensors, tmp, metadata=header)

    def run(self, inputs: Inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        if inject:
            raise GoldenError(f"{self.path}: a golden file holds one recorded run and cannot be re-run with "
                              f"injected taps ({sorted(inject)[0]}); use --tf-checkpoint for injection")
        same = all(np.array_equal(a, b) for a, b in ((inputs.input_ids, self.inputs.input_ids),
                                                      (inputs.token_type_ids, self.inputs.token_type_ids),
                                                      (inputs.input_mask, self.inputs.input_mask)))
        if not same:
            raise GoldenError(f"{self.path}: the golden file was recorded for other inputs "
                              f"({list(self.inputs.shape)}, seed {self.inputs.meta.get('seed')}); "
                              f"run the candidate on GoldenSide.inputs")
        names = self.tap_names if fetch is None else [n for n in fetch if n in self._taps]
        return {n: self._taps[n].copy() for n in names}
