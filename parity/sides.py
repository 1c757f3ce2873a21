"""The one interface the harness knows: a *side* runs inputs and returns named taps.

    side.run(inputs, fetch=None, inject=None) -> {tap name: float32 array in contract layout}

``fetch`` picks taps (None: all); ``inject`` replaces taps by given arrays. The harness
never looks behind this: a TensorFlow graph, a PyTorch model and (later) a saved golden
file are interchangeable.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol

import numpy as np
import torch

from bert_torch.modeling import BertConfig
from bert_torch.taps import Taps, tap_names
from bert_torch.weights import load_model

from .inputs import Inputs


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

    def __init__(self, model: torch.nn.Module, device: str = "cpu", head: Optional[str] = None):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.head = head
        cfg = model.config
        self.tap_names = tap_names(cfg.num_hidden_layers, TAP_HEADS.get(head))
        self.description = (f"bert_torch {type(model).__name__} (hidden_act={cfg.hidden_act}, "
                            f"{next(model.parameters()).dtype}, {self.device})")

    @classmethod
    def from_weights(cls, path: str, config: BertConfig, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> "TorchSide":
        model = load_model(path, config, head="auto", device=device, dtype=dtype)
        head = {"BertForSequenceClassification": "classifier", "BertForQuestionAnswering": "squad",
                "BertForPreTraining": "pretraining"}.get(type(model).__name__)
        return cls(model, device, head)

    def run(self, inputs: Inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        unknown = sorted(set(inject or ()) - set(self.tap_names))
        if unknown:
            raise ValueError(f"pytorch side: no tap named {unknown[0]}")
        dtype = next(self.model.parameters()).dtype
        as_tensor = lambda a, dt: torch.from_numpy(np.asarray(a)).to(self.device, dt)
        with torch.no_grad(), Taps(record=True if fetch is None else fetch,
                                   inject={k: as_tensor(v, dtype) for k, v in (inject or {}).items()}) as taps:
            args = [as_tensor(a, torch.long) for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
            if self.head == "pretraining":
                self.model.bert(*args)   # the MLM/NSP heads have no contract taps
            else:
                self.model(*args)
        return {k: v.float().cpu().numpy() for k, v in taps.values.items()}


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

    def run(self, inputs: Inputs, fetch=None, inject=None) -> dict[str, np.ndarray]:
        out = self.ref.run(inputs.input_ids, inputs.token_type_ids, inputs.input_mask, fetch=fetch, inject=inject)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def close(self) -> None:
        self.ref.close()
