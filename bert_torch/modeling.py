"""A PyTorch BERT that computes what Google's official TensorFlow graph computes.

Module and parameter names mirror the checkpoint's variable scopes (HF naming), so the
weight map is mechanical: ``bert/encoder/layer_3/attention/self/query/kernel`` is
``encoder.layer.3.attention.self.query.weight`` (transposed, as every dense kernel is).

Every place where the official graph has a numerical quirk, we copy it on purpose and
say so. Every contract tap passes through ``tap(name, x)`` (see ``taps.py``), so any
intermediate tensor can be observed or replaced from outside at no cost when unused.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .taps import tap, tapping

# The fast path: when no tap is recorded or injected (no ``Taps`` context), the model computes the same
# formulas with PyTorch's fused kernels (``F.layer_norm``, ``F.gelu``, ``scaled_dot_product_attention``):
# the same function as the op-for-op path up to float32 rounding (different op order), and what users run.
# The gate proves it against the official graph at every tensor it exposes (all layer outputs and the
# pooler, parity/test_fast_path.py). Set False to run the op-for-op path everywhere.
FAST_PATH = True


def fast() -> bool:
    return FAST_PATH and not tapping()


def _find_onednn_linear():
    # oneDNN's fully connected layer: what torch's own CPU inference compilers (inductor's freezing, mkldnn
    # fusion) lower ``nn.Linear`` to, reached only through a private op. On the 2-core AVX-512 machine it ran
    # MiniLM's forward at 8 x 128 in 183 ms where ``F.linear`` (MKL's sgemm) took 223 ms, BERT-base's in 1.12 s
    # against 1.54 s (build/prof/dnn_fwd.py, one run each). Absent from a torch build: None, and F.linear.
    try:
        op = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
        x = torch.ones(2, 3)
        return op if op is not None and torch.equal(op(x, torch.ones(4, 3), None, "none", [], ""),
                                                    torch.full((2, 4), 3.0)) else None
    except Exception:   # noqa: BLE001 - any failure of a private op means "not here"
        return None


_ONEDNN_LINEAR = _find_onednn_linear()
ONEDNN_LINEAR = True   # set False to keep F.linear on the fast path too


def _find_onednn_activations() -> dict:
    # The intermediate layer's activation applied by the same oneDNN call, on each output tile while it is in
    # cache (a post-op), instead of a second pass over the [B*T, intermediate] output: MiniLM's intermediate
    # layer at 8 x 128 took 7.2 ms instead of 9.2 ms (one run, AVX-512; where one is used: FUSED_ACTIVATIONS).
    # oneDNN computes these functions with its own approximations: within 1.2e-6 of F.gelu at |y| <= 12
    # (tests/test_modeling.py bounds it).
    # Each post-op is probed here, on values where a wrong function shows: one that fails is not used.
    if _ONEDNN_LINEAR is None:
        return {}
    y = torch.linspace(-6.0, 6.0, 97).reshape(-1, 1)   # [97,1] @ [1,1]^T: the linear is the identity
    found = {}
    for act, (attr, algorithm) in {"gelu_tanh": ("gelu", "tanh"), "gelu_erf": ("gelu", "none"),
                                   "relu": ("relu", ""), "tanh": ("tanh", "")}.items():
        try:
            got = _ONEDNN_LINEAR(y, torch.ones(1, 1), None, attr, [], algorithm)
        except Exception:   # noqa: BLE001 - a post-op this build does not have
            continue
        if torch.allclose(got, FAST_ACTIVATIONS[act](y), rtol=1e-5, atol=1e-5):
            found[act] = (attr, algorithm)
    return {name: found[act] for name, act in ACTIVATION_FORMS.items() if act in found}


def cpu_capability() -> str:
    """The vector ISA torch dispatches its CPU kernels for ("AVX512", "AVX2", "DEFAULT", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:   # noqa: BLE001 - a torch without the query: assume nothing
        return "DEFAULT"


def avx512() -> bool:
    """Whether torch runs AVX-512 kernels here: what decides the two speed choices below."""
    return cpu_capability().startswith("AVX512")


def _activations_worth_fusing() -> frozenset:
    # Whether a post-op pays depends on the code oneDNN generates for this CPU's vector ISA. Measured,
    # [1024,384] @ [384,1536] with bias, 2 threads, post-op against the linear then the activation: on an AVX-512
    # AMD EPYC the tanh GELU took 7.2 ms fused against 9.2 ms; on an AVX2 AMD EPYC 18.3 ms against 14.1 ms,
    # the erf GELU 14.7 against 12.4, tanh 17.6 against 15.6, ReLU 10.6 against 11.6 (BERT-base's [1024,768] @
    # [768,3072]: tanh GELU 58.1 against 46.8). So the transcendental post-ops only with AVX-512; ReLU's always.
    # A choice of speed only: either way the gate proves the fast path's numbers against the official graph.
    return frozenset(ACTIVATION_FORMS) if avx512() else frozenset({"relu"})


# Where the training backward's dx = dy @ W goes. oneDNN, given the transposed weight, was faster on an AVX-512
# CPU (with it, a BERT-base training step took 4.10 s against 4.87 s through F.linear) and slower on an AVX2 one:
# [1024,3072] @ [3072,768] 81.2 ms against torch's mm 50.8, [1024,768] @ [768,3072] 53.0 against 40.0 (2 threads,
# medians of 15 interleaved calls). So oneDNN with AVX-512, torch's mm otherwise.
ONEDNN_INPUT_GRAD = avx512()


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:   # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class _OneDNNLinear(torch.autograd.Function):
    """``x2 @ w^T + b`` through oneDNN, with nn.Linear's backward written out: the private op has no backward
    of its own. ``dx = dy @ w`` goes through oneDNN too where that pays (``ONEDNN_INPUT_GRAD``); ``dw = dy^T @ x``
    and ``db`` stay torch's (oneDNN was slower for the transposed product). On an AVX-512 CPU a BERT-base
    training step at 8 x 128 took 4.10 s this way against 4.87 s through F.linear, MiniLM's at 32 x 128 2.28 s
    against 2.58 s (interleaved, one run each)."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return _ONEDNN_LINEAR(x2, w, b, "none", [], "")                          # [n,in] -> [n,out]

    @staticmethod
    @once_differentiable   # the backward's own ops are not differentiable: a second derivative fails loudly
    def backward(ctx, dy: torch.Tensor):
        x2, w = ctx.saved_tensors
        dy = dy.contiguous()                                                      # [n,out]
        dx = None
        if ctx.needs_input_grad[0]:                                               # [n,out] @ [out,in] -> [n,in]
            dx = _ONEDNN_LINEAR(dy, w.t(), None, "none", [], "") if ONEDNN_INPUT_GRAD else dy.mm(w)
        dw = dy.t().mm(x2) if ctx.needs_input_grad[1] else None                   # [out,n] @ [n,in] -> [out,in]
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None      # [out]
        return dx, dw, db


def dense(layer: nn.Linear, x: torch.Tensor, act: Optional[str] = None) -> torch.Tensor:
    """``layer(x)``, then the activation named ``act`` (a ``hidden_act``, fast form) if given; on the fast
    path, in float32 on the CPU, through oneDNN's linear instead: in inference with the activation fused into
    it, in training with nn.Linear's backward (``_OneDNNLinear``).

    Only where nothing else can tell: no autocast and full float32 matmul precision (precision tiers keep
    ``F.linear``, which honours them), float32 input and weights, no Taps context. The fast path's gate checks
    its numbers against the official graph either way, and the fine-tuning gate its gradients.
    """
    w = layer.weight
    if not (ONEDNN_LINEAR and _ONEDNN_LINEAR is not None and fast() and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32 and not _autocast_cpu()
            and torch.get_float32_matmul_precision() == "highest"):
        return layer(x) if act is None else FAST_ACTIVATIONS[act](layer(x))
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])                                                 # [...,in] -> [n,in]
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                    or (layer.bias is not None and layer.bias.requires_grad)):
        y, attr = _OneDNNLinear.apply(x2, w, layer.bias), "none"
    else:
        attr, algorithm = _ONEDNN_ACTIVATIONS.get(act, ("none", "")) if act in FUSED_ACTIVATIONS else ("none", "")
        y = _ONEDNN_LINEAR(x2, w, layer.bias, attr, [], algorithm)
    y = y.view(*shape[:-1], w.shape[0])                                           # [n,out] -> [...,out]
    return y if act is None or attr != "none" else FAST_ACTIVATIONS[act](y)


# Bounds checked before anything is built: generous (BERT-large is 24 layers of 1024, 16 heads,
# 4096 intermediate, 30522 x 512 tables), yet a config cannot ask for more than a machine holds.
SIZE_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024,
               "num_attention_heads": 1024, "intermediate_size": 1 << 18,
               "max_position_embeddings": 1 << 17, "type_vocab_size": 1 << 16}
BERT_LARGE = {"vocab_size": 30522, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "max_position_embeddings": 512, "type_vocab_size": 2}
FLOAT_RANGES = {"hidden_dropout_prob": (0.0, 1.0), "attention_probs_dropout_prob": (0.0, 1.0),
                "initializer_range": (0.0, 1e3)}
MAX_PARAMETERS = 1 << 34   # 17e9 parameters, 64 GiB of float32: past any BERT


def _show(value) -> str:
    """A config value in an error line: short, whatever its type or nesting."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The official graph's LayerNorm adds this to the variance, in float32 (tf.contrib.layers.layer_norm in TF 1.x).
OFFICIAL_LAYER_NORM_EPS = 1e-12


def _one_of(*official):
    return lambda value, config: value in official


def _float32_of(value, official: float) -> bool:
    # The graph adds the epsilon in float32: a config that wrote it as a rounded double names the same one.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return bool(torch.tensor(float(value)) == torch.tensor(official))
    except OverflowError:   # an integer past any float
        return False


def _per_head(value, config) -> bool:
    heads, hidden = config.get("num_attention_heads", 12), config.get("hidden_size", 768)
    return value is None or (isinstance(value, int) and isinstance(heads, int) and value * heads == hidden)


_ABSENT = _one_of(None)
_ROTARY = "rotary position embeddings are no part of the official BERT graph, whose positions are learned and added"
_CROSS = "cross-attention to an encoder's states is no part of the official BERT graph"
# Settings of BERT variants, read wherever a config is read (bert_config.json, an HF config.json): key ->
# (whether a value is what the official graph computes, why another is not). Keys in neither this table nor
# the official fields (HF's bookkeeping, Google's own pooler_* and directionality notes) change nothing the
# graph computes and are kept as they are. Absent keys take their official meaning, so a JSON null only passes
# where it is that meaning (transformers 4.x read position_embedding_type null as no position embeddings).
VARIANT_SETTINGS = {
    "model_type": (_one_of("bert"), "the official graph computes BERT, and other model types read the same "
                                    "tensors another way (roberta, for one, numbers positions from "
                                    "pad_token_id + 1)"),
    "position_embedding_type": (_one_of("absolute"), "the official BERT graph has absolute position embeddings "
                                                     "only"),
    "is_decoder": (_one_of(False, None), "a decoder attends causally (each token to those before it), the "
                                         "official BERT graph both ways"),
    "add_cross_attention": (_one_of(False, None), _CROSS),
    "cross_attention_hidden_size": (_ABSENT, _CROSS),
    "is_encoder_decoder": (_one_of(False, None), "an encoder-decoder is no part of the official BERT graph"),
    "directionality": (_one_of("bidi", None), "the official BERT graph attends both ways ('bidi')"),
    "layer_norm_eps": (lambda v, c: _float32_of(v, OFFICIAL_LAYER_NORM_EPS),
                       f"the official graph's LayerNorm adds {OFFICIAL_LAYER_NORM_EPS:g} to the variance (fixed in "
                       f"its code, in float32): another epsilon is other arithmetic"),
    "rms_norm_eps": (_ABSENT, "RMSNorm is no part of the official BERT graph, which has LayerNorm"),
    "normalization_type": (_one_of("layer_norm", None), "the official BERT graph normalises with LayerNorm"),
    "pre_layer_norm": (_one_of(False, None), "the official BERT graph normalises after each residual sum"),
    "normalize_before": (_one_of(False, None), "the official BERT graph normalises after each residual sum"),
    "embedding_size": (lambda v, c: v is None or v == c.get("hidden_size", 768),
                       "embeddings of another width, projected to hidden_size (ALBERT, ELECTRA), are no part of "
                       "the official graph, whose embeddings are hidden_size wide"),
    "num_hidden_groups": (_ABSENT, "ALBERT's layer groups (layers sharing their weights) are no part of the "
                                   "official BERT graph"),
    "inner_group_num": (_ABSENT, "ALBERT's layer groups (layers sharing their weights) are no part of the "
                                 "official BERT graph"),
    "use_bottleneck": (_one_of(False, None), "MobileBERT's bottlenecks are no part of the official BERT graph"),
    "trigram_input": (_one_of(False, None), "MobileBERT's trigram input is no part of the official BERT graph"),
    "num_feedforward_networks": (_one_of(1, None), "the official BERT graph has one feed-forward network a layer"),
    "head_dim": (_per_head, "the official graph's heads are hidden_size / num_attention_heads wide"),
    "num_key_value_heads": (lambda v, c: v is None or v == c.get("num_attention_heads", 12),
                            "the official graph has as many key and value heads as query heads"),
    "attention_bias": (_one_of(True, None), "every dense layer of the official BERT graph has a bias"),
    "qkv_bias": (_one_of(True, None), "every dense layer of the official BERT graph has a bias"),
    "relative_attention": (_one_of(False, None), "relative-position attention is no part of the official BERT "
                                                 "graph"),
    "relative_attention_num_buckets": (_ABSENT, "relative-position attention is no part of the official BERT graph"),
    "position_biased_input": (_one_of(True, None), "the official BERT graph adds position embeddings to the input"),
    "rotary_value": (_one_of(False, None), _ROTARY),
    "rope_theta": (_ABSENT, _ROTARY),
    "rope_scaling": (_ABSENT, _ROTARY),
    "rope_parameters": (_ABSENT, _ROTARY),
    "attention_type": (_one_of("original_full", None), "the official BERT graph attends to every token (no "
                                                       "block-sparse or windowed attention)"),
    "attention_window": (_ABSENT, "the official BERT graph attends to every token (no windowed attention)"),
    "sliding_window": (_ABSENT, "the official BERT graph attends to every token (no windowed attention)"),
    "layer_types": (_ABSENT, "the official BERT graph's layers are all alike"),
    "per_layer_config": (_ABSENT, "the official BERT graph's layers are all alike"),
    "pruned_heads": (lambda v, c: v in (None, {}, []), "the official graph keeps num_attention_heads in every "
                                                       "layer, and pruned heads make another attention"),
    "scale_embedding": (_one_of(False, None), "the official BERT graph does not scale its embeddings"),
    "pooler_type": (_one_of("first_token_transform", None), "the official graph's pooler is tanh(dense(the "
                                                            "first token))"),
    "quantization_config": (_ABSENT, "quantized weights compute in other arithmetic than the official float32 "
                                     "graph"),
    # Other BERT-family models' own words for the same kinds of change (NEZHA, ERNIE, RemBERT, ConvBERT, and
    # configs that spell the epsilon as GPT-2 and T5 do).
    "layer_norm_epsilon": (lambda v, c: _float32_of(v, OFFICIAL_LAYER_NORM_EPS),
                           f"the official graph's LayerNorm adds {OFFICIAL_LAYER_NORM_EPS:g} to the variance: "
                           f"another epsilon is other arithmetic"),
    "use_relative_position": (_one_of(False, None), "relative-position attention (NEZHA) is no part of the "
                                                    "official BERT graph"),
    "max_relative_position": (lambda v, c: not c.get("use_relative_position"),
                              "relative-position attention (NEZHA) is no part of the official BERT graph"),
    "use_task_id": (_one_of(False, None), "task-type embeddings (ERNIE) are no part of the official BERT graph"),
    "input_embedding_size": (lambda v, c: v is None or v == c.get("hidden_size", 768),
                             "embeddings of another width (RemBERT) are no part of the official BERT graph"),
    "output_embedding_size": (lambda v, c: v is None or v == c.get("hidden_size", 768),
                              "embeddings of another width (RemBERT) are no part of the official BERT graph"),
    "head_ratio": (_one_of(1, None), "ConvBERT's mixed convolution and attention heads are no part of the official "
                                     "BERT graph"),
    "conv_kernel_size": (_ABSENT, "ConvBERT's span convolutions are no part of the official BERT graph"),
    "num_groups": (_one_of(1, None), "grouped feed-forward layers (ConvBERT) are no part of the official BERT "
                                     "graph"),
}


def variant_problem(config: dict) -> Optional[str]:
    """The settings of ``config`` (a config file's keys) under which its model computes something the official
    graph does not, each as ``FIELD VALUE: why``, in one line; None when every setting is the official graph's.
    ``hidden_act`` is left to the reader: its words mean different functions in different files."""
    found = [f"{key} {_show(config[key])}: {why}" for key, (official, why) in VARIANT_SETTINGS.items()
             if key in config and not official(config[key], config)]
    if found:   # all of them: a decoder with cross-attention is refused for both, not one at a time
        return "; ".join(found) + "; this model computes something else"
    chunk = config.get("chunk_size_feed_forward")
    # Chunking splits the feed-forward layer's tokens into groups: the same function, but only a count of tokens.
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0):
        return f"chunk_size_feed_forward {_show(chunk)}: must be a non-negative integer (a number of tokens)"
    return None


@dataclass
class BertConfig:
    """The fields of Google's ``bert_config.json``, with the official defaults.

    ``type_vocab_size`` defaults to 16 as in the official ``modeling.BertConfig``; most
    released checkpoints set 2 in their json. ``hidden_act="gelu"`` means the GELU of the
    official graph we verify against (bert-tensorflow 1.0.4: the tanh form); choose
    ``"gelu_erf"`` for the erf form the 2018 checkpoints were trained with.
    Keys the official config does not know (e.g. HF's ``model_type``) are kept in
    ``extra`` and written back unchanged; those that make a BERT variant the official graph
    does not compute (``VARIANT_SETTINGS``) are refused, naming the field, its value and why.
    """

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 16
    initializer_range: float = 0.02
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"bert config: {name} must be a positive integer, got {_show(value)}")
            if value > limit:
                raise ValueError(f"bert config: {name} {value} is over the limit {limit} "
                                 f"(BERT-large has {BERT_LARGE.get(name, '-')})")
        for name, (low, high) in FLOAT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"bert config: {name} must be a number in [{low:g}, {high:g}], got {_show(value)}")
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"bert config: hidden_act must be a string, got {_show(self.hidden_act)}")
        if self.num_parameters() > MAX_PARAMETERS:
            raise ValueError(f"bert config: {self.num_parameters():.3g} parameters, over the limit "
                             f"{MAX_PARAMETERS:.3g} (BERT-large has 3.4e8)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"bert config: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"bert config: hidden_act {_show(self.hidden_act)}: no activation of the official graph "
                             f"has that name (they are {', '.join(sorted(ACTIVATIONS))}); this model computes "
                             f"something else")
        problem = variant_problem(self.to_dict())
        if problem:
            raise ValueError(f"bert config: {problem}")

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)} - {"extra"}
        if "vocab_size" not in d:
            raise ValueError("bert config: required field vocab_size is missing")
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def from_json_file(cls, path: str) -> "BertConfig":
        from ._io import read_json   # size, encoding, nesting and syntax errors name the file
        d = read_json(path, "bert config", max_bytes=1 << 20)
        if not isinstance(d, dict):
            raise ValueError(f"bert config {path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    def to_json_string(self) -> str:
        from ._io import dumps
        return dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str) -> None:
        from ._io import write_text
        write_text(path, self.to_json_string(), "bert config")

    def num_parameters(self) -> int:
        """Parameters of the body, computed from the fields (nothing allocated)."""
        H, I = self.hidden_size, self.intermediate_size
        layer = 4 * (H * H + H) + 2 * H * I + I + H + 4 * H   # attention, FFN, two LayerNorms
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size + 2) * H
        return embeddings + self.num_hidden_layers * layer + H * H + H

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The GELU of bert-tensorflow 1.0.4's ``modeling.gelu``, in its op order: x * cdf."""
    cdf = 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))
    return x * cdf


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU of the 2018 release (and of the released checkpoints' training)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


ACTIVATIONS = {
    "gelu": gelu_tanh,       # what the official graph we verify against computes
    "gelu_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,   # HF's name for the tanh form
    "gelu_erf": gelu_erf,
    "gelu_exact": gelu_erf,
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


# The same functions as fused kernels, for the fast path.
FAST_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_erf": F.gelu,
    "gelu_exact": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}
# Which function each name computes, for the fused forms above (one probe per function).
ACTIVATION_FORMS = {"gelu": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_erf": "gelu_erf",
                    "gelu_exact": "gelu_erf", "relu": "relu", "tanh": "tanh"}
# hidden_act -> oneDNN post-op (attribute, algorithm) that passed its probe on this build.
_ONEDNN_ACTIVATIONS = _find_onednn_activations()
# The hidden_acts fused where a post-op passed its probe: those that pay on this CPU (_activations_worth_fusing).
# Set it to frozenset() to apply every activation after oneDNN's linear, as a second kernel.
FUSED_ACTIVATIONS = _activations_worth_fusing()


class LayerNorm(nn.Module):
    """LayerNorm computed the way TF's ``moments`` + ``batch_normalization`` compute it.

    The official graph's epsilon is 1e-12 (not PyTorch's 1e-5), and TF folds gamma into
    the inverse std before applying it: ``x * inv + (beta - mean * inv)``. Copying that
    op order keeps us at TF's rounding noise instead of a few ulps beside it.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))   # TF: gamma
        self.bias = nn.Parameter(torch.zeros(hidden_size))    # TF: beta
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast():   # one fused kernel; TF's op order below only matters at the rounding level
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).square().mean(-1, keepdim=True)   # biased, like tf.nn.moments
        inv = torch.rsqrt(variance + self.eps) * self.weight
        return x * inv + (self.bias - mean * inv)


class BertEmbeddings(nn.Module):
    """Word + token type + position embeddings, then LayerNorm (scope ``bert/embeddings``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        words = tap("embeddings/word_embeddings", self.word_embeddings(input_ids))                # [B,T,H]
        types = tap("embeddings/token_type_embeddings", self.token_type_embeddings(token_type_ids))  # [B,T,H]
        positions = tap("embeddings/position_embeddings", self.position_embeddings.weight[:T])     # [T,H]
        # TF adds (words + types) first, then positions; float addition is not associative.
        x = tap("embeddings/sum", words + types + positions)
        return self.dropout(tap("embeddings/output", self.LayerNorm(x)))


class BertSelfAttention(nn.Module):
    """Multi-head attention (scope ``layer_i/attention/self``)."""

    def __init__(self, config: BertConfig, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, x: torch.Tensor, mask_adder: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        N, D, p = self.num_heads, self.head_size, self.prefix

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, N, D).transpose(1, 2)   # [B,T,H] -> [B,T,N,D] -> [B,N,T,D]

        q = tap(f"{p}/query", split_heads(dense(self.query, x)))
        k = tap(f"{p}/key", split_heads(dense(self.key, x)))
        v = tap(f"{p}/value", split_heads(dense(self.value, x)))
        if fast():
            # softmax(q k^T / sqrt(D) + mask_adder) v in one kernel; the -10000 adder passes as a float mask.
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_adder.to(q.dtype),
                                                     dropout_p=self.dropout.p if self.training else 0.0,
                                                     scale=1.0 / math.sqrt(D))   # [B,N,T,D]
            return context.transpose(1, 2).reshape(B, T, H)   # [B,N,T,D] -> [B,T,N,D] -> [B,T,H]
        scores = torch.matmul(q, k.transpose(-1, -2))     # [B,N,T,D] @ [B,N,D,T] -> [B,N,T,T]
        # TF multiplies by the reciprocal of sqrt(D) rather than dividing by sqrt(D).
        scores = tap(f"{p}/scores", scores * (1.0 / math.sqrt(D)) + mask_adder)
        probs = tap(f"{p}/probs", F.softmax(scores, dim=-1))
        context = torch.matmul(self.dropout(probs), v)    # [B,N,T,T] @ [B,N,T,D] -> [B,N,T,D]
        context = context.transpose(1, 2).reshape(B, T, H)  # [B,N,T,D] -> [B,T,N,D] -> [B,T,H]
        return tap(f"{p}/context", context)


class BertSelfOutput(nn.Module):
    """Attention output projection, residual, LayerNorm (scope ``layer_i/attention/output``)."""

    def __init__(self, config: BertConfig, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = self.dropout(tap(f"{self.prefix}/dense", dense(self.dense, context)))
        return tap(f"{self.prefix}/output", self.LayerNorm(h + residual))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig, prefix: str):
        super().__init__()
        self.self = BertSelfAttention(config, f"{prefix}/attention")
        self.output = BertSelfOutput(config, f"{prefix}/attention")

    def forward(self, x: torch.Tensor, mask_adder: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_adder), x)


class BertIntermediate(nn.Module):
    """Dense layer to the intermediate size and the activation (scope ``layer_i/intermediate``)."""

    def __init__(self, config: BertConfig, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.hidden_act = config.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast() and self.hidden_act in FAST_ACTIVATIONS:
            return dense(self.dense, x, self.hidden_act)
        return tap(f"{self.prefix}/intermediate", self.act(self.dense(x)))


class BertOutput(nn.Module):
    """Dense layer back to hidden size, residual, LayerNorm (scope ``layer_i/output``)."""

    def __init__(self, config: BertConfig, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = self.dropout(tap(f"{self.prefix}/output/dense", dense(self.dense, h)))
        return tap(f"{self.prefix}/output", self.LayerNorm(h + residual))


class BertLayer(nn.Module):
    """One transformer block (scope ``bert/encoder/layer_i``)."""

    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        prefix = f"layer_{index}"
        self.attention = BertAttention(config, prefix)
        self.intermediate = BertIntermediate(config, prefix)
        self.output = BertOutput(config, prefix)

    def forward(self, x: torch.Tensor, mask_adder: torch.Tensor) -> torch.Tensor:
        attention_output = self.attention(x, mask_adder)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_adder: torch.Tensor) -> list[torch.Tensor]:
        all_layers = []
        for layer in self.layer:
            x = layer(x, mask_adder)
            all_layers.append(x)
        return all_layers


class BertPooler(nn.Module):
    """tanh(dense(first token)) (scope ``bert/pooler``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return tap("pooler/output", torch.tanh(dense(self.dense, sequence_output[:, 0])))  # [B,T,H] -> [B,H]


class BertPreTrainedModel(nn.Module):
    """Shared weight initialisation: truncated normal like the official ``create_initializer``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config

    def init_weights(self, module: nn.Module) -> None:
        r = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            # tf.truncated_normal_initializer(stddev=r) redraws beyond two standard deviations.
            nn.init.trunc_normal_(module.weight, std=r, a=-2 * r, b=2 * r)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BertModel(BertPreTrainedModel):
    """The BERT body (TF scope ``bert/``): embeddings, encoder, pooler."""

    # The official graph's attention-mask adder (see forward). An attribute, not a literal,
    # so that parity.diagnose's tests can plant the -1e9 of other ports and prove it is caught.
    mask_adder_value = -10000.0

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self.init_weights)

    def check_inputs(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> None:
        """Reject inputs that an embedding lookup would silently get wrong (or crash on, on GPU)."""
        c = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if B == 0 or T == 0:
            # The official graph returns empty outputs for B == 0, and fails only in the pooler for T == 0.
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}; "
                             f"need at least one sequence of at least one token")
        if T > c.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {c.max_position_embeddings}")
        # The official graph looks token types up by one_hot @ table: an id outside the table is an
        # all-zero row, silently. Word ids go through tf.gather: an error on CPU (zeros on GPU, as TF documents).
        for name, t, bound, size_name in (("input_ids", input_ids, c.vocab_size, "vocab_size"),
                                          ("token_type_ids", token_type_ids, c.type_vocab_size, "type_vocab_size")):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {(B, T)}")
            bad = (t < 0) | (t >= bound)
            if bool(bad.any()):
                at = tuple(int(i) for i in bad.nonzero()[0])   # the first offending [row, position]
                raise ValueError(f"{name} holds {int(t[at])} at {list(at)}, outside [0, {bound}) "
                                 f"({size_name} {bound})")
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, T)}")
        # The mask enters as the adder (1 - mask) * -10000: a 2 would ADD 10000 to the score.
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bool(bad.any()):
            at = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"attention_mask holds {attention_mask[at].item()} at {list(at)}; "
                             f"only 0 (padding) and 1 (real token) are allowed")

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, output_all_encoded_layers: bool = True):
        """Returns (encoded_layers, pooled_output): a list of L [B,T,H] (or the last one), and [B,H]."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.check_inputs(input_ids, token_type_ids, attention_mask)
        dtype = self.embeddings.word_embeddings.weight.dtype
        # The official graph adds -10000 (not -inf) at masked keys: exp underflows to exactly 0
        # in float32 for real scores, and a fully masked row stays finite (uniform).
        mask_adder = (1.0 - attention_mask[:, None, None, :].to(dtype)) * self.mask_adder_value   # [B,T] -> [B,1,1,T]
        x = self.embeddings(input_ids, token_type_ids)
        encoded_layers = self.encoder(x, mask_adder)
        pooled_output = self.pooler(encoded_layers[-1])
        if not output_all_encoded_layers:
            return encoded_layers[-1], pooled_output
        return encoded_layers, pooled_output


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT + a linear classifier on the pooled output (TF: ``output_weights``, ``output_bias``)."""

    def __init__(self, config: BertConfig, num_labels: int = 2):
        super().__init__(config)
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_weights(self.classifier)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        logits = tap("classifier/logits", self.classifier(self.dropout(pooled)))   # [B,C]
        if labels is None:
            return logits
        return F.cross_entropy(logits, labels)


class BertForQuestionAnswering(BertPreTrainedModel):
    """BERT + start/end span logits (TF: ``cls/squad/output_weights``, ``cls/squad/output_bias``)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights(self.qa_outputs)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                start_positions=None, end_positions=None):
        sequence_output, _ = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        logits = self.qa_outputs(sequence_output)                     # [B,T,2]
        start_logits = tap("squad/start_logits", logits[..., 0])      # [B,T]
        end_logits = tap("squad/end_logits", logits[..., 1])          # [B,T]
        if start_positions is None or end_positions is None:
            return start_logits, end_logits
        # Positions outside the sequence are ignored, as in the original port.
        T = start_logits.shape[1]
        start = start_positions.clamp(0, T)
        end = end_positions.clamp(0, T)
        loss = F.cross_entropy(start_logits, start, ignore_index=T) + F.cross_entropy(end_logits, end, ignore_index=T)
        return loss / 2


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.fast_act = FAST_ACTIVATIONS.get(config.hidden_act)
        self.LayerNorm = LayerNorm(config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Masked-LM head (scope ``cls/predictions``); the decoder is the word embedding table."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))   # TF: cls/predictions/output_bias

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        # The decoder is the word embedding table itself, as in the official graph (not saved twice).
        return torch.matmul(self.transform(x), word_embeddings.t()) + self.bias   # [B,T,H] @ [H,V] -> [B,T,V]


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)   # TF: cls/seq_relationship

    def forward(self, sequence_output, pooled_output, word_embeddings):
        return self.predictions(sequence_output, word_embeddings), self.seq_relationship(pooled_output)


class BertForPreTraining(BertPreTrainedModel):
    """BERT + the masked-LM and next-sentence heads that Google's checkpoints carry."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.cls.apply(self.init_weights)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                masked_lm_labels=None, next_sentence_label=None):
        sequence_output, pooled = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        prediction_scores, seq_relationship_score = self.cls(
            sequence_output, pooled, self.bert.embeddings.word_embeddings.weight)
        if masked_lm_labels is None or next_sentence_label is None:
            return prediction_scores, seq_relationship_score
        mlm = F.cross_entropy(prediction_scores.flatten(0, 1), masked_lm_labels.flatten(), ignore_index=-1)
        return mlm + F.cross_entropy(seq_relationship_score, next_sentence_label)


HEADS: dict[Optional[str], Any] = {
    None: BertModel,
    "classifier": BertForSequenceClassification,
    "squad": BertForQuestionAnswering,
    "pretraining": BertForPreTraining,
}
