"""The blocks a diagnosis judges (embeddings; per layer attention and feed-forward; pooler; head), which
tap feeds each, and the runs that feed every block the other side's input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from bert_torch.taps import EMBEDDING_TAPS, LAYER_TAPS

from parity.compare.core import RunStore
from parity.inputs import Inputs
from parity.sides.base import Side
from parity.sides.tapstore import LazyTaps


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


def local_taps(side, inputs: Inputs, source: Mapping[str, np.ndarray], bs: list[Block],
               store: Optional[RunStore] = None, label: str = "local") -> Mapping[str, np.ndarray]:
    """Every block's taps as ``side`` computes them when fed ``source``'s input to that block.

    With a spilling ``store`` the runs stream (``Side.stream``): each tap goes to disk as it is computed and
    each fed input is read from ``source`` only when the run reaches it, so memory holds a block's taps,
    never a run's. Else the runs are held (``Side.run``), as before streaming existed; the two agree number
    for number (parity/test_streaming.py)."""
    if store is not None and store.spill:
        return store.produce(label, lambda consume: _stream_local(side, inputs, source, bs, consume))
    if side.capabilities.computed:
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


def _feeds(bs: list[Block], source: Mapping[str, np.ndarray]) -> LazyTaps:
    """The blocks' inputs from ``source``, each read when the run reaches it (from a spilled run: one file)."""
    return LazyTaps((b.input for b in bs if b.input), source.__getitem__, file=getattr(source, "file", None))


def _stream_local(side, inputs: Inputs, source: Mapping[str, np.ndarray], bs: list[Block], consume) -> None:
    if side.capabilities.computed:   # one run: every block fed, each block's own output handed over as computed
        wanted = {t for b in bs for t in b.taps}
        side.stream(inputs, lambda n, v: consume(n, v) if n in wanted else None,
                    inject=_feeds(bs, source), computed=True)
        return
    for run in schedule(bs):   # a fed tap comes back as fed: blocks whose taps another one's input is, apart
        wanted = {t for b in run for t in b.taps}
        side.stream(inputs, lambda n, v: consume(n, v) if n in wanted else None,
                    inject=_feeds(run, source))


def float64_twin(side) -> Optional[Side]:
    """The same PyTorch model in float64 (a deep copy keeps any patched attribute)."""
    return side.float64() if side.capabilities.float64 else None
