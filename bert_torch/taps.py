"""Canonical tap names (see CONTRACT.md) and the hook that observes or replaces them.

A *tap* is a named intermediate tensor. Both sides of a comparison publish the same
names in the same layout, so the harness can line them up without knowing anything
about either implementation.

Model code calls ``tap(name, x)`` at every tap point. With no ``Taps`` context active
this is one ContextVar lookup and returns ``x`` untouched (no copies, no hooks).
"""
from __future__ import annotations

import contextvars
from typing import Callable, Iterable, Mapping, Optional

import torch


class TapError(ValueError):
    """A tap published against the ``Taps`` rules (twice in one forward, or replaced by a tensor of another
    shape): bad input naming the tap. Raised inside a model's forward, it is the harness's own error there,
    not the model's (``parity.candidates.spec`` lets it through a candidate's boundary unchanged)."""


HEAD_TAPS = {
    None: (),
    "classifier": ("classifier/logits",),
    "squad": ("squad/start_logits", "squad/end_logits"),
}

EMBEDDING_TAPS = (
    "embeddings/word_embeddings",
    "embeddings/token_type_embeddings",
    "embeddings/position_embeddings",
    "embeddings/sum",
    "embeddings/output",
)

LAYER_TAPS = (
    "attention/query",
    "attention/key",
    "attention/value",
    "attention/scores",
    "attention/probs",
    "attention/context",
    "attention/dense",
    "attention/output",
    "intermediate",
    "output/dense",
    "output",
)


def tap_names(num_layers: int, head: Optional[str] = None) -> list[str]:
    """All tap names of a model, in forward order: 5 + 11*L + 1 (+ head taps)."""
    if head not in HEAD_TAPS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(h for h in HEAD_TAPS if h)}")
    names = list(EMBEDDING_TAPS)
    for i in range(num_layers):
        names += [f"layer_{i}/{t}" for t in LAYER_TAPS]
    names.append("pooler/output")
    names += HEAD_TAPS[head]
    return names


def tap_shape(name: str, batch: int, seq: int, hidden: int, heads: int, intermediate: int,
              num_labels: int = 2) -> tuple[int, ...]:
    """The contract layout of a tap: B batch, T sequence, H hidden, N heads, D=H/N, I intermediate."""
    B, T, H, N, D, I = batch, seq, hidden, heads, hidden // heads, intermediate
    if name == "embeddings/position_embeddings":
        return (T, H)
    if name.startswith("embeddings/"):
        return (B, T, H)
    if name == "pooler/output":
        return (B, H)
    if name == "classifier/logits":
        return (B, num_labels)
    if name.startswith("squad/"):
        return (B, T)
    kind = name.split("/", 1)[1]
    if kind in ("attention/query", "attention/key", "attention/value"):
        return (B, N, T, D)
    if kind in ("attention/scores", "attention/probs"):
        return (B, N, T, T)
    if kind == "intermediate":
        return (B, T, I)
    return (B, T, H)


_ACTIVE: contextvars.ContextVar[Optional["Taps"]] = contextvars.ContextVar("bert_torch_taps", default=None)


class Taps:
    """Context manager that records taps and/or replaces some of them.

    with Taps(record=True, inject={"layer_0/output": t}) as taps:
        model(input_ids, ...)
    taps.values["layer_0/attention/probs"]      # recorded tensors, by canonical name

    ``record`` is True (all), False (none) or an iterable of names. Injected tensors must
    have the tap's exact shape; they are cast to the tap's dtype and device. An injected
    tap is recorded with its injected value in ``values``, and with the value the model had
    computed before the replacement in ``computed`` (so one run that injects every block's
    input still shows every block's own output). ``sink(name, tensor)``, when given, receives each
    recorded tap as it is computed, instead of ``values``; with ``sink_computed`` an injected tap reaches
    the sink with its computed value instead, and ``computed`` stays empty. ``seen`` lists every tap
    passed, in order, so a caller can check that each injection name was actually reached.
    ``inject`` is read only at the tap it names (a mapping that loads each value from disk when asked
    holds one at a time).
    """

    def __init__(self, record: bool | Iterable[str] = True,
                 inject: Optional[Mapping[str, torch.Tensor]] = None, detach: bool = True,
                 sink: Optional[Callable[[str, torch.Tensor], None]] = None, sink_computed: bool = False):
        self.record = record if isinstance(record, bool) else frozenset(record)
        # With a sink, each recorded tap is handed over as it is computed and not kept in ``values``:
        # a caller that stores or reduces taps one by one holds no more than the model itself does.
        self.sink = sink
        self.sink_computed = sink_computed and sink is not None
        self.inject = inject if inject is not None else {}
        self.detach = detach
        self.values: dict[str, torch.Tensor] = {}
        self.computed: dict[str, torch.Tensor] = {}
        self.seen: list[str] = []
        self._published: set[str] = set()   # ``seen`` as a set: one lookup per tap, not a scan
        self._token = None

    def __enter__(self) -> "Taps":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        keep = self.record is True or (self.record is not False and name in self.record)
        if (keep or name in self.inject) and name in self._published:
            # Recorded twice, the first value would be lost (or, fed, fed twice): a module that runs more than
            # once per forward (layers shared across depths, a model called twice in one context) makes the
            # name ambiguous, and a comparison of "the" tap would judge whichever came last.
            raise TapError(f"tap {name} was published twice in one forward: the model runs the module that "
                           "publishes it more than once (shared layers?) or ran twice in one Taps context; "
                           "map each contract tap to a module that runs once per forward")
        self._published.add(name)
        self.seen.append(name)
        if name in self.inject:
            new = torch.as_tensor(self.inject[name])
            if tuple(new.shape) != tuple(x.shape):
                raise TapError(f"injected tap {name}: shape {tuple(new.shape)}, expected {tuple(x.shape)}")
            if keep and self.sink_computed:   # the block's own output, what a diagnosis judges it by
                self.sink(name, x.detach() if self.detach else x)
                keep = False
            elif keep:
                self.computed[name] = x.detach() if self.detach else x
            x = new.to(device=x.device, dtype=x.dtype)
        if keep:
            value = x.detach() if self.detach else x
            if self.sink is not None:
                self.sink(name, value)
            else:
                self.values[name] = value
        return x


def tapping() -> bool:
    """Whether a ``Taps`` context is active: the model then takes its op-for-op path (see modeling.py)."""
    return _ACTIVE.get() is not None


def tap(name: str, x: torch.Tensor) -> torch.Tensor:
    """Publish tensor ``x`` as tap ``name``; returns it, or its replacement when one is injected."""
    taps = _ACTIVE.get()
    return x if taps is None else taps(name, x)
