"""Google's official BERT code (bert-tensorflow), unmodified, made to build under TensorFlow 2.

Every compatibility shim lives in this module, each with the reason it is needed. The official
modules are never copied or edited: they are imported as installed, and only the environment
around them is adjusted.
"""
from __future__ import annotations

import os

# The official pooler uses tf.layers.dense, which TF >= 2.16 only provides on top of Keras 2
# (tf_keras). TensorFlow reads this switch once, when it is first imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TF's C++ log lines (oneDNN notices, a `cuInit` error on machines without a GPU...) are noise to a user
# of a CPU comparison: silenced unless the caller chose a level (`bert-parity --verbose` sets 0).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
import glob  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any, Optional  # noqa: E402

import tensorflow.compat.v1 as tf1  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1"):   # the Python side of TF's logging, likewise
    absl_logging.set_verbosity(absl_logging.ERROR)
    tf1.logging.set_verbosity(tf1.logging.ERROR)

from bert_torch._io import InputFileError, read_json, regular_file  # noqa: E402
from bert_torch.modeling import variant_problem  # noqa: E402

from ._errors import ReferenceError  # noqa: E402

BERT_VERSION = metadata.version("bert-tensorflow")

# Building flips process-wide state (TensorShape semantics, absl flag registry): one build at a time.
_BUILD_LOCK = threading.RLock()

# hidden_act spellings: the tanh form is what modeling.gelu computes in 1.0.4; the erf form is what
# the 2018 release of the official code computed.
_TANH_GELU = ("gelu", "gelu_tanh", "gelu_new")
_ERF_GELU = ("gelu_erf", "gelu_exact")


def _contrib_layer_norm(inputs, begin_norm_axis=-1, begin_params_axis=-1, scope=None):
    """Stand-in for TF 1.x tf.contrib.layers.layer_norm, limited to what modeling.layer_norm asks:
    normalise and scale over the last axis, variables LayerNorm/beta and LayerNorm/gamma."""
    if begin_norm_axis != -1 or begin_params_axis != -1:
        raise NotImplementedError("the layer_norm stand-in only normalises over the last axis")
    with tf1.variable_scope(scope, default_name="LayerNorm"):
        params_shape = inputs.shape[-1:]
        beta = tf1.get_variable("beta", params_shape, initializer=tf1.zeros_initializer())
        gamma = tf1.get_variable("gamma", params_shape, initializer=tf1.ones_initializer())
        mean, variance = tf1.nn.moments(inputs, [inputs.shape.rank - 1], keepdims=True)
        # The same two ops and fixed epsilon as contrib's layer_norm in TF 1.15.
        return tf1.nn.batch_normalization(inputs, mean, variance, beta, gamma, variance_epsilon=1e-12)


def _import_modeling():
    """Import bert.modeling. TF 2 has no tf.contrib, and modeling.py imports
    tensorflow.contrib.layers at module level for layer_norm alone, so a stand-in is registered
    for that one import and removed afterwards (no other code should take this process for TF 1)."""
    layers = types.ModuleType("tensorflow.contrib.layers")
    layers.layer_norm = _contrib_layer_norm
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.layers = layers
    stand_ins = {"tensorflow.contrib": contrib, "tensorflow.contrib.layers": layers}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        from bert import modeling as imported
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    return imported


modeling = _import_modeling()

OFFICIAL_CONFIG_FIELDS = tuple(inspect.signature(modeling.BertConfig.__init__).parameters)[1:]


def run_module(name: str):
    """The official bert.<name> script module (run_classifier, run_squad, run_pretraining),
    imported on first use."""
    full = f"bert.{name}"
    if full not in sys.modules:
        with _BUILD_LOCK:
            # Each run_* script defines its absl flags at import, many with the same names
            # (bert_config_file, vocab_file, ...), and absl refuses a name already defined by
            # another module. Only their model functions are used here, never main(), so the
            # flags are inert: let a later script's definitions override an earlier one's.
            for module_name, defined in flags.FLAGS.flags_by_module_dict().items():
                if module_name.startswith("bert.run_"):
                    for flag in defined:
                        flag.allow_override = True
            importlib.import_module(full)
    return sys.modules[full]


def erf_gelu(x):
    """GELU exactly as the 2018 release computed it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    cdf = 0.5 * (1.0 + tf1.math.erf(x / tf1.sqrt(2.0)))
    return x * cdf


def load_config(bert_config: dict | str | os.PathLike) -> dict:
    """bert_config as a dict: a copy of the given dict, or the parsed bert_config.json."""
    if isinstance(bert_config, dict):
        return dict(bert_config)
    try:
        loaded = read_json(bert_config, "bert_config")   # a regular file, bounded by its size
    except InputFileError as e:
        raise ReferenceError(str(e)) from None
    if not isinstance(loaded, dict):
        raise ReferenceError(f"bert_config {bert_config} is not a JSON object")
    variant = variant_problem(loaded)   # the official graph would build a plain BERT and compare it as if it were this
    if variant:
        raise ReferenceError(f"bert_config {bert_config}: {variant}")
    return loaded


def official_config(config: dict) -> tuple[Any, str]:
    """The official BertConfig for a config dict, and the description of the graph it builds."""
    if "vocab_size" not in config:
        raise ReferenceError("bert_config has no vocab_size")
    config = dict(config)
    act = config.get("hidden_act", "gelu")
    key = act.lower() if isinstance(act, str) else act
    if key in _TANH_GELU:
        config["hidden_act"] = "gelu"
        what = "GELU: tanh, as shipped"
    elif key in _ERF_GELU:
        # get_activation() returns a non-string hidden_act unchanged: the official hook for
        # swapping the activation function, and only it.
        config["hidden_act"] = erf_gelu
        what = "GELU: erf substituted for the shipped tanh form"
    else:
        try:
            modeling.get_activation(act)
        except ValueError as e:
            raise ReferenceError(f"bert_config hidden_act {act!r}: {e}") from None
        what = f"activation: {act}"
    return modeling.BertConfig.from_dict(config), f"official bert-tensorflow {BERT_VERSION} graph ({what})"


@contextlib.contextmanager
def building(graph):
    """Context in which the official code adds ops to ``graph``.

    The official code was written against TF 1 TensorShape semantics (run_classifier reads
    ``shape[-1].value``), so those are switched on for the duration and restored afterwards.
    The deprecation warning tf.layers.dense gives for the official pooler is noise to users.
    """
    with _BUILD_LOCK, graph.as_default(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.layers\.dense.* is deprecated")
        was_v2 = not isinstance(tf1.TensorShape([1])[0], tf1.Dimension)
        tf1.disable_v2_tensorshape()
        try:
            yield
        finally:
            if was_v2:
                tf1.enable_v2_tensorshape()


@dataclass
class Built:
    """An official inference graph: its int32 [B,T] placeholders; the tensors the official API
    hands back, by tap name (to cross-check the tap table); and a scalar over the head's outputs
    (for create_optimizer, when writing checkpoints with Adam slots)."""
    graph: Any
    input_ids: Any
    token_type_ids: Any
    input_mask: Any
    official: dict[str, Any] = field(default_factory=dict)
    loss: Optional[Any] = None


def build(config, head: Optional[str], num_labels: int, seed: Optional[int] = None) -> Built:
    """Build the official graph (is_training=False, embedding lookup by gather) in a new tf.Graph
    with dynamic [batch, seq_len] inputs; ``seed`` is the graph-level seed of the initializers."""
    graph = tf1.Graph()
    with building(graph):
        if seed is not None:
            tf1.set_random_seed(seed)
        ids = tf1.placeholder(tf1.int32, [None, None], name="input_ids")
        types_ = tf1.placeholder(tf1.int32, [None, None], name="token_type_ids")
        mask = tf1.placeholder(tf1.int32, [None, None], name="input_mask")
        built = Built(graph, ids, types_, mask)
        if head is None:
            model = modeling.BertModel(config, is_training=False, input_ids=ids, input_mask=mask,
                                       token_type_ids=types_, use_one_hot_embeddings=False)
            built.official = {
                "embeddings/word_embeddings": model.get_word_embedding_output(),
                "embeddings/output": model.get_embedding_output(),
                **{f"layer_{i}/output": t for i, t in enumerate(model.get_all_encoder_layers())},
                "pooler/output": model.get_pooled_output(),
            }
            built.loss = tf1.reduce_mean(model.get_pooled_output())
        elif head == "classifier":
            # create_model also builds the training loss, so it needs labels; they do not
            # reach the logits.
            labels = tf1.zeros_like(ids[:, 0])
            loss, _, logits, _ = run_module("run_classifier").create_model(
                config, False, ids, mask, types_, labels, num_labels, False)
            built.official = {"classifier/logits": logits}
            built.loss = loss
        elif head == "squad":
            start, end = run_module("run_squad").create_model(config, False, ids, mask, types_, False)
            built.official = {"squad/start_logits": start, "squad/end_logits": end}
            built.loss = tf1.reduce_mean(start) + tf1.reduce_mean(end)
        else:
            raise ReferenceError(f"unknown head {head!r}; expected None, 'classifier' or 'squad'")
    return built


def first_line(error: Exception) -> str:
    """The first line of a (TensorFlow) error message, for one-line ReferenceErrors."""
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def check_checkpoint_files(checkpoint: str) -> None:
    """TensorFlow opens a checkpoint's files itself (a folder's ``checkpoint`` state file, the index, the data
    shards): each one there must be a regular file, checked before TF opens it, since a FIFO would block the
    open and a device never end. A missing one is left to TF, which names it."""
    if os.path.isdir(checkpoint):
        paths = [os.path.join(checkpoint, "checkpoint"), *glob.glob(os.path.join(glob.escape(checkpoint), "*.index")),
                 *glob.glob(os.path.join(glob.escape(checkpoint), "*.data-*"))]
    else:
        paths = [checkpoint + ".index", *glob.glob(glob.escape(checkpoint) + ".data-*")]
    for path in paths:
        try:
            regular_file(path, "checkpoint file", missing_ok=True)
        except InputFileError as e:
            raise ReferenceError(str(e)) from None


def restore(session, prefix: str) -> None:
    """Restore every variable of the session's graph from checkpoint ``prefix``.

    Checkpoint variables the graph does not use (pretraining heads, Adam slots) are ignored; a
    graph variable absent from the checkpoint, or stored with another shape, is a ReferenceError.
    """
    with session.graph.as_default():
        variables = tf1.global_variables()
    check_checkpoint_files(prefix)
    try:
        stored = dict(tf1.train.list_variables(prefix))
    except (tf1.errors.OpError, ValueError) as e:
        raise ReferenceError(f"cannot read checkpoint {prefix}: {first_line(e)}") from None
    problems = []
    for var in variables:
        name, shape = var.op.name, var.shape.as_list()
        if name not in stored:
            problems.append(f"variable {name} (shape {shape}) is missing from the checkpoint")
        elif list(stored[name]) != shape:
            problems.append(f"variable {name} has shape {list(stored[name])} in the checkpoint "
                            f"but {shape} in the graph built from bert_config")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ReferenceError(f"checkpoint {prefix}: " + "; ".join(problems[:3]) + more)
    try:
        with session.graph.as_default():
            tf1.train.Saver(variables).restore(session, prefix)
    except tf1.errors.OpError as e:
        raise ReferenceError(f"cannot restore checkpoint {prefix}: {first_line(e)}") from None
