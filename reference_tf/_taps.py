"""Where each contract tap lives in the official graph, and how its layout there maps to the
contract's.

Each tap is the graph tensor that the rest of the graph consumes, so feeding a value for it in
``session.run`` replaces it for everything downstream. Names follow the official code's
deterministic scopes (bert/embeddings/..., bert/encoder/layer_{i}/...); ``find_taps`` checks
every one at build time, so a different official graph fails loudly instead of mis-tapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from bert_torch.taps import tap_names, tap_shape

from ._errors import ReferenceError
from ._official import BERT_VERSION, Built


class _Same:
    """The graph computes the tap in the contract layout."""

    def to_contract(self, x: np.ndarray) -> np.ndarray:
        return x

    to_graph = to_contract

    def graph_shape(self, shape: tuple) -> tuple:
        return shape


class _HeadsSplit:
    """Graph [B,T,N,D] (dense_layer_3d's einsum output), contract [B,N,T,D]."""

    def to_contract(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 1, 3)

    to_graph = to_contract

    def graph_shape(self, shape: tuple) -> tuple:
        return (shape[0], shape[2], shape[1], shape[3])


@dataclass(frozen=True)
class _HeadsMerged:
    """Graph [B,T,N,D] (the context einsum keeps heads apart), contract [B,T,H]."""
    heads: int

    def to_contract(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1], -1)

    def to_graph(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1)

    def graph_shape(self, shape: tuple) -> tuple:
        return (shape[0], shape[1], self.heads, shape[2] // self.heads)


@dataclass(frozen=True)
class Tap:
    """A contract tap: the graph tensor and the re-layout functions both ways."""
    name: str
    tensor: Any
    layout: Any


# The output of the tf.contrib layer_norm stand-in (tf.nn.batch_normalization's final add).
_LAYER_NORM = "LayerNorm/batchnorm/add_1:0"

_SAME = _Same()
_SPLIT = _HeadsSplit()


def _layout_error(tap: str, why: str, graph_name: str) -> ReferenceError:
    return ReferenceError(f"tap {tap}: {why} (graph: {graph_name}); the official bert-tensorflow "
                          f"{BERT_VERSION} graph is not laid out as expected")


def _locations(graph, num_layers: int, head: Optional[str], heads: int) -> dict[str, tuple]:
    """Tap name -> (graph tensor name, expected op type or None, layout)."""
    e = "bert/embeddings/"
    loc = {
        # embedding_lookup's gather, reshaped to [B,T,H]
        "embeddings/word_embeddings": (e + "Reshape:0", "Reshape", _SAME),
        # one-hot matmul, reshaped to [B,T,H]
        "embeddings/token_type_embeddings": (e + "Reshape_2:0", "Reshape", _SAME),
        # table[:T], before its reshape to [1,T,H] for broadcasting
        "embeddings/position_embeddings": (e + "Slice:0", "Slice", _SAME),
        # (word + token_type) + position
        "embeddings/sum": (e + "add_1:0", "AddV2", _SAME),
        "embeddings/output": (e + _LAYER_NORM, "AddV2", _SAME),
    }
    merged = _HeadsMerged(heads)
    for i in range(num_layers):
        layer = f"bert/encoder/layer_{i}/"
        att = layer + "attention/"
        # The activation's last op depends on hidden_act, so the intermediate tap is found as
        # the input of the output dense's einsum (checked below to lie in the intermediate scope).
        try:
            intermediate = graph.get_operation_by_name(layer + "output/einsum/Einsum").inputs[0].name
        except KeyError:
            raise _layout_error(f"layer_{i}/intermediate", "the op consuming it is missing",
                                layer + "output/einsum/Einsum") from None
        loc.update({
            # einsum + bias of dense_layer_3d
            f"layer_{i}/attention/query": (att + "self/query/add:0", "AddV2", _SPLIT),
            f"layer_{i}/attention/key": (att + "self/key/add:0", "AddV2", _SPLIT),
            f"layer_{i}/attention/value": (att + "self/value/add:0", "AddV2", _SPLIT),
            # `attention_scores += adder`: scaled QK^T plus the -10000 mask adder
            f"layer_{i}/attention/scores": (att + "self/add:0", "AddV2", _SAME),
            f"layer_{i}/attention/probs": (att + "self/Softmax:0", "Softmax", _SAME),
            # probs x values, [B,T,N,D]
            f"layer_{i}/attention/context": (att + "self/einsum_1/Einsum:0", "Einsum", merged),
            # projection einsum + bias, before dropout (identity here) and the residual
            f"layer_{i}/attention/dense": (att + "output/add:0", "AddV2", _SAME),
            f"layer_{i}/attention/output": (att + "output/" + _LAYER_NORM, "AddV2", _SAME),
            f"layer_{i}/intermediate": (intermediate, None, _SAME),
            f"layer_{i}/output/dense": (layer + "output/add:0", "AddV2", _SAME),
            f"layer_{i}/output": (layer + "output/" + _LAYER_NORM, "AddV2", _SAME),
        })
    loc["pooler/output"] = ("bert/pooler/dense/Tanh:0", "Tanh", _SAME)
    if head == "classifier":
        loc["classifier/logits"] = ("loss/BiasAdd:0", "BiasAdd", _SAME)
    elif head == "squad":
        # create_model transposes [B,T,2] logits to [2,B,T] and unstacks them
        loc["squad/start_logits"] = ("unstack:0", "Unpack", _SAME)
        loc["squad/end_logits"] = ("unstack:1", "Unpack", _SAME)
    return loc


def _problem(name: str, tensor, op_type: Optional[str], graph_shape: tuple, final: bool,
             official) -> Optional[str]:
    """What is wrong with ``tensor`` as tap ``name``, or None."""
    if op_type is None and not tensor.op.name.startswith(f"bert/encoder/{name}/"):
        return "outside its scope"
    if op_type is not None and tensor.op.type != op_type:
        return f"op type {tensor.op.type}, expected {op_type}"
    if tensor.shape.rank != len(graph_shape) or not tensor.shape.is_compatible_with(graph_shape):
        return f"static shape {tensor.shape}, expected {list(graph_shape)} in graph layout"
    if not final and not tensor.consumers():
        return "nothing downstream consumes it"
    if official is not None and official.name != tensor.name:
        return f"the official API returns {official.name} instead"
    return None


def find_taps(built: Built, config, head: Optional[str], num_labels: int) -> dict[str, Tap]:
    """Every contract tap of the built graph, checked: present, of the expected op type, of a
    static shape that fits the contract, consumed downstream (all but the final outputs), and
    the very tensor the official API returns where it returns one."""
    graph = built.graph
    names = tap_names(config.num_hidden_layers, head)
    loc = _locations(graph, config.num_hidden_layers, head, config.num_attention_heads)
    final = {"pooler/output", *names[names.index("pooler/output") + 1:]}
    taps = {}
    for name in names:
        tensor_name, op_type, layout = loc[name]
        try:
            tensor = graph.get_tensor_by_name(tensor_name)
        except (KeyError, ValueError):
            raise _layout_error(name, "not found", tensor_name) from None
        expected = layout.graph_shape(tap_shape(
            name, None, None, config.hidden_size, config.num_attention_heads,
            config.intermediate_size, num_labels))
        why = _problem(name, tensor, op_type, expected, name in final, built.official.get(name))
        if why:
            raise _layout_error(name, why, tensor_name)
        taps[name] = Tap(name, tensor, layout)
    return taps
