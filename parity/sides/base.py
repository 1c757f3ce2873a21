"""The one interface the harness knows: a *side* runs inputs and returns named taps.

    side.run(inputs, fetch=None, inject=None, computed=None) -> {tap name: float32 array in contract layout}

``fetch`` picks taps (None: all); ``inject`` replaces taps by given arrays; ``computed`` (a dict)
receives what the side computed at each injected tap. The harness never looks behind this: a
TensorFlow graph, a PyTorch model, a golden file and an ONNX session are interchangeable, and each
says what it can do (``capabilities``) instead of being probed for it. ``SideBase`` holds the
protocol's defaults (a side that runs and nothing more); each side overrides what it offers.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import types
from typing import Callable, Iterable, Mapping, Optional, Protocol

import numpy as np
import torch

from bert_torch._io import regular_file
from bert_torch.modeling import BertConfig
from bert_torch.taps import Taps, tap_names, tap_shape
from bert_torch.weights import load_model

from parity.inputs import Inputs
from parity.numerics.precision import Tier, arithmetic
from parity.sides.refcache import Entry, RefCache, checkpoint_files
from parity.sides.tapstore import LazyTaps


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a side can do beyond running: what callers ask instead of probing its class."""
    inject: bool = False     # run(inject=...) replaces taps by given arrays
    computed: bool = False   # run(computed=...) also returns what was computed at the injected taps
    float64: bool = False    # float64() gives the same model in float64 (the precision ladder, rounding)
    tiers: bool = False      # with_tier() runs it in another precision tier (fp32, tf32, bf16, fp16)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Side(Protocol):
    name: str
    description: str
    tap_names: list[str]
    capabilities: Capabilities
    tier: Optional[Tier]             # the arithmetic a candidate runs in; None for a reference
    device: str
    gelu: Optional[str]              # "erf" or "tanh": the GELU it computes, when known
    gelu_names: Optional[dict]       # how its own configuration names each GELU (the hints speak it)
    unobservable: Mapping[str, str]  # taps it declares it cannot observe -> why
    precision: Optional[dict]        # a reference's recorded arithmetic (fp32, or TF32 on a GPU)
    meta: Optional[dict]             # a golden file's metadata (the machine it was recorded on)

    def run(self, inputs: Inputs, fetch: Optional[Iterable[str]] = None,
            inject: Optional[Mapping[str, np.ndarray]] = None,
            computed: Optional[dict] = None) -> dict[str, np.ndarray]: ...

    def stream(self, inputs: Inputs, consume: Callable[[str, np.ndarray], None],
               inject: Optional[Mapping[str, np.ndarray]] = None, computed: bool = False) -> None: ...

    def release(self) -> None: ...

    def float64(self) -> Optional["Side"]: ...

    def float32(self) -> Optional["Side"]: ...

    def with_tier(self, tier: Tier) -> "Side": ...

    def tensors(self) -> Optional[dict]: ...

    def record(self) -> Optional[dict]: ...

    def close(self) -> None: ...


class SideBase:
    """The Side protocol's defaults: runs, and nothing more. A side that can do more says so in
    ``capabilities`` and overrides the method; a side that holds resources overrides ``close``."""

    name = "side"
    description = "side"
    tap_names: list = []
    capabilities = Capabilities()
    tier: Optional[Tier] = None
    device = "cpu"
    gelu: Optional[str] = None
    gelu_names: Optional[dict] = None
    unobservable: Mapping[str, str] = types.MappingProxyType({})
    precision: Optional[dict] = None
    meta: Optional[dict] = None

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def stream(self, inputs: Inputs, consume: Callable[[str, np.ndarray], None],
               inject: Optional[Mapping[str, np.ndarray]] = None, computed: bool = False) -> None:
        """Every tap of one run, handed to ``consume(name, array)`` in forward order; ``inject`` as in
        ``run``; with ``computed`` an injected tap is handed over with the value computed before the
        injection replaced it (``run(computed=...)``). This default runs once and hands the taps over;
        sides that can compute them one block at a time override it, so that a comparison never holds a
        whole run (``parity.sides.tapstore``)."""
        if computed and not self.capabilities.computed:
            raise ValueError(f"{self.name}: cannot return computed values at injected taps")
        own: Optional[dict] = {} if computed else None
        # run(inputs) alone where nothing is fed: sides written before inject and computed existed take no more.
        values = self.run(inputs, inject=inject, computed=own) if inject or computed else self.run(inputs)
        for name, value in values.items():
            consume(name, own[name] if own and name in own else value)

    def _check_inject(self, inject) -> None:
        unknown = sorted(set(inject or ()) - set(self.tap_names))
        if unknown:
            raise ValueError(f"{self.name} side: no tap named {unknown[0]}")

    def release(self) -> None:
        """Frees what the side holds between runs (a worker process); the next run starts it again.
        Callers use it once they are done with a side they do not own. This default holds nothing."""

    def float64(self) -> Optional["Side"]:
        """The same model in float64, or None (``capabilities.float64``)."""
        return None

    def float32(self) -> Optional["Side"]:
        """The same model in plain float32, or None when this side is exactly that (or cannot)."""
        return None

    def with_tier(self, tier: Tier) -> "Side":
        raise ValueError(f"{self.name}: runs in one precision only (--precision {tier.name})")

    def tensors(self) -> Optional[dict]:
        """The weights the side computes with, under the contract's file names, when it can say."""
        return None

    def record(self) -> Optional[dict]:
        """What the report records about a candidate (kind, path, sha256, ...), or None."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROTOCOL_ATTRIBUTES = ("name", "description", "tap_names", "tier", "device", "gelu", "gelu_names", "unobservable",
                       "precision", "meta", "head")


class _Completed(SideBase):
    """A duck-typed side (any object with ``description``, ``tap_names`` and ``run``, as this harness's
    earlier versions and users' own adapters wrote them) completed with the protocol's defaults: what it
    defines is used, what it lacks reads as "cannot"."""

    def __init__(self, side):
        self._side = side
        for attr in PROTOCOL_ATTRIBUTES:
            if hasattr(side, attr):
                setattr(self, attr, getattr(side, attr))
        self.capabilities = Capabilities(
            inject=True, computed=bool(getattr(side, "supports_computed", False)),
            float64=callable(getattr(side, "float64", None)), tiers=callable(getattr(side, "with_tier", None)))

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
        if computed is not None:
            return self._side.run(inputs, fetch=fetch, inject=inject, computed=computed)
        return self._side.run(inputs, fetch, inject)

    def _delegate(self, method: str, *args):
        fn = getattr(self._side, method, None)
        return fn(*args) if callable(fn) else getattr(SideBase, method)(self, *args)

    def float64(self):
        twin = self._delegate("float64")
        return complete(twin) if twin is not None else None

    def float32(self):
        twin = self._delegate("float32")
        return complete(twin) if twin is not None else None

    def with_tier(self, tier: Tier):
        return complete(self._delegate("with_tier", tier))

    def tensors(self):
        return self._delegate("tensors")

    def record(self):
        return self._delegate("record")

    def release(self) -> None:
        self._delegate("release")

    def close(self) -> None:
        self._delegate("close")


def complete(side):
    """``side`` as a full ``Side``: itself when it is one (a ``SideBase``), else completed (``_Completed``)."""
    return side if side is None or isinstance(side, SideBase) else _Completed(side)


TAP_HEADS = {"classifier": "classifier", "squad": "squad"}   # heads with taps of their own


def _as_numpy(v: torch.Tensor) -> np.ndarray:
    # float32, except that a float64 model keeps float64 (the precision ladder's reference).
    return (v if v.dtype == torch.float64 else v.float()).cpu().numpy()


class TorchSide(SideBase):
    """A ``bert_torch`` model; taps are read (and replaced) through ``bert_torch.taps.Taps``."""

    name = "pytorch"
    capabilities = Capabilities(inject=True, computed=True, float64=True, tiers=True)

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
        copy, so that a subclass (parity.candidates.factory) keeps its hooks, taps and record."""
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

    def tensors(self) -> dict:
        from bert_torch.weights import model_tensors
        return model_tensors(self.source)

    def _forward(self, inputs: Inputs) -> None:
        args = [torch.from_numpy(np.asarray(a)).to(self.device, torch.long)
                for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
        if self.head == "pretraining":
            self.model.bert(*args)   # the MLM/NSP heads have no contract taps
        else:
            self.model(*args)

    def stream(self, inputs: Inputs, consume: Callable[[str, np.ndarray], None],
               inject: Optional[Mapping[str, np.ndarray]] = None, computed: bool = False) -> None:
        """One forward; each tap goes to ``consume`` as it is computed (``Taps(sink=...)``), none is kept.
        ``inject`` is read tap by tap as the forward reaches it (a lazy mapping holds one at a time)."""
        self._check_inject(inject)
        dtype = next(self.model.parameters()).dtype
        # Each fed tap converted as TorchSide.run converts them all, but only when the forward reaches it.
        feeds = LazyTaps(inject, lambda n: torch.from_numpy(np.asarray(inject[n])).to(self.device, dtype)) \
            if inject else None
        with torch.no_grad(), arithmetic(self.tier, str(self.device)), \
                Taps(record=True, inject=feeds, sink=lambda name, v: consume(name, _as_numpy(v)),
                     sink_computed=computed):
            self._forward(inputs)

    def run(self, inputs: Inputs, fetch=None, inject=None, computed: Optional[dict] = None) -> dict[str, np.ndarray]:
        """``computed``, when given a dict, receives what the model computed at each injected
        tap before the injection replaced it (``Taps.computed``): with every block's input
        injected, one run gives every block's own output (parity.diagnose)."""
        self._check_inject(inject)
        dtype = next(self.model.parameters()).dtype
        as_tensor = lambda a, dt: torch.from_numpy(np.asarray(a)).to(self.device, dt)
        with torch.no_grad(), arithmetic(self.tier, str(self.device)), \
                Taps(record=True if fetch is None else fetch,
                     inject={k: as_tensor(v, dtype) for k, v in (inject or {}).items()}) as taps:
            self._forward(inputs)
        if computed is not None:
            computed.update({k: _as_numpy(v) for k, v in taps.computed.items()})
        return {k: _as_numpy(v) for k, v in taps.values.items()}


class FastPathSide(SideBase):
    """A ``bert_torch`` model on its fast path (no ``Taps`` context: fused kernels, what users run).

    It exposes what a plain forward returns: every ``layer_i/output`` (``all_encoder_layers``), the
    pooler, and the head's logits; inner taps do not exist on this path. No injection."""

    name = "pytorch (fast path)"
    capabilities = Capabilities(float64=True)

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

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
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


# TFSide.stream: how many bytes of taps one TF run may fetch (consecutive layers share a run up to this).
STREAM_GROUP_BYTES = 256 << 20
TF_NO_COMPUTED = "tensorflow side: computed values need a second run (parity.diagnose.blocks)"


class TFSide(SideBase):
    """Google's official graph through ``reference_tf`` (imported only when this side is used)."""

    name = "tensorflow"
    capabilities = Capabilities(inject=True)
    stream_group_bytes = STREAM_GROUP_BYTES   # the most taps ``stream`` fetches in one TF run (one layer at least)

    def __init__(self, checkpoint_prefix: str, config: BertConfig, head: Optional[str] = None,
                 num_labels: int = 2, intra_op_threads: Optional[int] = None):
        from reference_tf import TFReference   # the only route to TensorFlow
        self.ref = TFReference(checkpoint_prefix, config.to_dict(), head=TAP_HEADS.get(head),
                               num_labels=num_labels, intra_op_threads=intra_op_threads)
        self.tap_names = list(self.ref.tap_names)
        self.description = self.ref.description
        self.precision = self.ref.precision   # float32, or TF32 on a GPU that has it (see TFReference.precision)
        # What determines a run besides its inputs: the key of its entry in the TF reference cache.
        self._cache_parts = {"checkpoint": checkpoint_files(checkpoint_prefix), "config": config.to_dict(),
                             "head": head, "num_labels": num_labels, "intra_op_threads": intra_op_threads,
                             "precision": self.precision}

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
        if computed is not None:   # a fed tensor cannot also be fetched as computed in one TF run
            raise ValueError(TF_NO_COMPUTED)
        cache = RefCache.active()   # $BERT_PARITY_TF_CACHE (make report): reuse an identical earlier run
        if cache is None:
            return self._run(inputs, fetch, inject)
        parts = {**self._cache_parts, "inputs": [inputs.input_ids, inputs.token_type_ids, inputs.input_mask],
                 "fetch": list(fetch) if fetch is not None else None, "inject": dict(inject or {})}
        entry = cache.fetch("taps", parts, lambda _: Entry(arrays=self._run(inputs, fetch, inject)),
                            code=(TFSide._run,))
        return dict(entry.arrays)

    def _run(self, inputs: Inputs, fetch, inject) -> dict[str, np.ndarray]:
        out = self.ref.run(inputs.input_ids, inputs.token_type_ids, inputs.input_mask, fetch=fetch, inject=inject)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def stream(self, inputs: Inputs, consume: Callable[[str, np.ndarray], None],
               inject: Optional[Mapping[str, np.ndarray]] = None, computed: bool = False) -> None:
        """Block by block: the embeddings, then each layer fed the graph's own output of the layer before
        (TensorFlow computes only the ops between what is fed and what is fetched), then the pooler and
        head. The values are the end-to-end run's: the same ops on the same float32 inputs. ``inject``d
        taps are fed in the block that holds them (a fed tap comes back as fed, and feeds what follows),
        each read from the mapping only then."""
        if computed:
            raise ValueError(TF_NO_COMPUTED)
        self._check_inject(inject)   # a name no group holds would be fed nowhere
        names = self.tap_names
        layers = sorted({int(n.split("/")[0][6:]) for n in names if n.startswith("layer_")})
        groups = [([n for n in names if n.startswith("embeddings/")], None)]
        # Consecutive layers share a run while their taps stay under ``stream_group_bytes``: each new
        # fetch-and-feed signature costs TF a pruned, optimized graph of its own (about half a second at
        # BERT-large), so at short lengths one layer per run would spend more on that than on computing.
        B, T = np.shape(inputs.input_ids)
        cfg = self._cache_parts["config"]
        size = lambda n: 4 * int(np.prod(tap_shape(n, B, T, cfg["hidden_size"], cfg["num_attention_heads"],  # noqa: E731
                                                     cfg["intermediate_size"])))
        held = None   # bytes of the layer group being filled (None: none yet)
        for i in layers:
            taps = [n for n in names if n.startswith(f"layer_{i}/")]
            nbytes = sum(size(n) for n in taps)
            if held is not None and held + nbytes <= self.stream_group_bytes:
                groups[-1][0].extend(taps)
                held += nbytes
            else:
                groups.append((taps, f"layer_{i - 1}/output" if i else "embeddings/output"))
                held = nbytes
        grouped = {n for group, _ in groups for n in group}
        groups.append(([n for n in names if n not in grouped], f"layer_{layers[-1]}/output" if layers else None))
        last: dict = {}
        for fetch, feed in groups:
            if not fetch:
                continue
            feeds = {feed: last[feed]} if feed else {}
            feeds.update({n: inject[n] for n in fetch if inject and n in inject})
            out = self.run(inputs, fetch=fetch, inject=feeds or None)
            for n in fetch:
                consume(n, out[n])
            last = {n: out[n] for n in fetch if n.endswith("/output")}   # the next block's input
            del out

    def close(self) -> None:
        self.ref.close()


class GoldenError(ValueError):
    """A golden file that is corrupt, of another format, or not for these weights: one line, exit 2."""


class GoldenSide(SideBase):
    """A reference side replayed from a golden file: TF's taps saved by ``python -m reference_tf dump``.

    Lets a machine without TensorFlow (a GPU box, a lean CI job) compare against the official
    graph. The file is safetensors (docs/golden.md): int32 ``inputs/input_ids``,
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
        if regular_file(path, "golden file", missing_ok=True) is None:   # a FIFO would block safe_open
            raise GoldenError(f"{path}: no such golden file")
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
        if self.head is not None and self.head not in TAP_HEADS:
            raise GoldenError(f"{path}: golden metadata head {self.head!r}; expected none or one of "
                              f"{', '.join(TAP_HEADS)}")
        contract = tap_names(self.config.num_hidden_layers, self.head)
        odd = next((n for n in self.tap_names if n not in contract), None)
        if odd is not None or len(set(self.tap_names)) != len(self.tap_names):
            raise GoldenError(f"{path}: golden metadata tap_names lists {odd!r}, which is no contract tap of its "
                              f"bert_config and head" if odd is not None else
                              f"{path}: golden metadata tap_names lists a tap twice")
        if self.num_labels < 1:
            raise GoldenError(f"{path}: golden metadata num_labels {self.num_labels}; expected at least 1")
        self.description = f"{self.meta.get('reference', 'official TF graph')}, replayed from golden file {os.path.basename(path)}"
        # The recorded run's arithmetic (files before it was recorded: float32 on a CPU, the only kind then).
        self.precision = self.meta.get("precision") or {"tier": "fp32", "device": "cpu"}
        ids = [arrays.get(f"inputs/{k}") for k in ("input_ids", "token_type_ids", "input_mask")]
        if any(a is None for a in ids) or len({a.shape for a in ids}) != 1 or ids[0].ndim != 2:
            raise GoldenError(f"{path}: inputs/input_ids, inputs/token_type_ids, inputs/input_mask must all be [B,T]")
        B, T = ids[0].shape
        cfg = self.config
        if not B or not 0 < T <= cfg.max_position_embeddings:
            raise GoldenError(f"{path}: inputs are [{B},{T}]; a run needs at least one row of 1 to "
                              f"{cfg.max_position_embeddings} (max_position_embeddings) tokens")
        # What the recorded run fed its model: token ids inside its bert_config's vocabularies, a 0/1 mask.
        for name, a, bound, allowed in (
                ("input_ids", ids[0], cfg.vocab_size, f"outside [0, {cfg.vocab_size}) (its bert_config's vocab_size)"),
                ("token_type_ids", ids[1], cfg.type_vocab_size,
                 f"outside [0, {cfg.type_vocab_size}) (its bert_config's type_vocab_size)"),
                ("input_mask", ids[2], 2, "where only 0 (padding) and 1 (real token) are allowed")):
            if not np.issubdtype(a.dtype, np.integer):
                raise GoldenError(f"{path}: inputs/{name} is {a.dtype}; expected integers")
            bad = (a < 0) | (a >= bound)
            if bad.any():
                at = [int(i) for i in np.argwhere(bad)[0]]
                raise GoldenError(f"{path}: inputs/{name} holds {int(a[tuple(at)])} at {at}, {allowed}")
        self.inputs = Inputs(*(a.astype(np.int32) for a in ids), meta=input_meta)
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

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
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
