"""HF transformers directories (the ``save_pretrained`` layout) both ways, without importing transformers.

    python -m bert_torch.convert --tf-checkpoint CKPT --output-format hf --output DIR
    python -m bert_torch.convert --to-tf --torch-weights DIR --output PREFIX      # DIR: an HF directory

A directory written here holds ``config.json``, ``model.safetensors``, and with a vocab ``vocab.txt``,
``tokenizer_config.json`` and ``special_tokens_map.json``, so that ``AutoModel.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it offline. The activation is written by *meaning*: the
official graph's ``gelu`` (bert-tensorflow 1.0.4: the tanh form) becomes HF's ``gelu_new``, and
``gelu_erf`` HF's ``gelu`` (the same word means erf in an HF config.json); read back the other way. So the
directory computes the function the checkpoint's graph computes, not the one its words would suggest there.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from ._io import LazyTensor, atomic_dir, read_bytes, read_json, save_safetensors
from .modeling import ACTIVATIONS, BertConfig, _show, gelu_erf, gelu_tanh, variant_problem
from .weights import WeightsError, detect_head, open_weights, read_weights

# HF's name for each function bert_torch computes, and back (transformers' ACT2FN meanings: gelu_fast and
# gelu_accurate are the tanh form's formula with its constants written out).
TO_HF_ACT = {gelu_tanh: "gelu_new", gelu_erf: "gelu"}
FROM_HF_ACT = {"gelu": "gelu_erf", "gelu_python": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
               "gelu_fast": "gelu", "gelu_accurate": "gelu", "relu": "relu", "tanh": "tanh", "linear": "linear"}
ARCHITECTURES = {None: "BertModel", "classifier": "BertForSequenceClassification", "squad": "BertForQuestionAnswering"}
HEAD_OF = {v: k for k, v in ARCHITECTURES.items()}
FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
          "initializer_range")


def hf_activation(hidden_act: str) -> str:
    fn = ACTIVATIONS[hidden_act]
    if fn in TO_HF_ACT:
        return TO_HF_ACT[fn]
    if hidden_act in ("relu", "tanh", "linear"):
        return hidden_act
    raise ValueError(f"hidden_act {hidden_act!r} has no transformers equivalent")


def write_hf_dir(out_dir: str, tensors: dict, config: BertConfig, vocab_file: Optional[str] = None,
                 do_lower_case: Optional[bool] = None) -> str:
    """Writes (atomically: the folder appears complete or not at all) an HF directory; returns the class."""
    head, num_labels = detect_head(tensors)
    if head not in ARCHITECTURES:
        raise ValueError(f"a {head} head has no transformers directory here; convert with --body-only")
    prefix = "" if head is None else "bert."
    body = {k: v for k, v in tensors.items() if not k.startswith(("classifier.", "qa_outputs.", "cls."))}
    heads = {k: v for k, v in tensors.items() if k.startswith(("classifier.", "qa_outputs."))}
    arrays = {**{prefix + k: _float32(v) for k, v in body.items()}, **{k: _float32(v) for k, v in heads.items()}}
    hf = {"architectures": [ARCHITECTURES[head]], "model_type": "bert",
          **{k: getattr(config, k) for k in FIELDS}, "hidden_act": hf_activation(config.hidden_act),
          "layer_norm_eps": 1e-12,            # the official graph's epsilon (HF's default too, said aloud)
          "position_embedding_type": "absolute", "pad_token_id": 0}
    if head == "classifier":   # detect_head reads names only (-1): the count is the classifier's rows
        labels = int(tensors["classifier.weight"].shape[0])
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}   # transformers' own default names
        hf["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    with atomic_dir(out_dir, "--output", owner="convert") as tmp:
        save_safetensors(arrays, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
        if vocab_file:
            # read_bytes, not a file copy: a regular file only, bounded (a copy of /dev/zero never ends)
            with open(os.path.join(tmp, "vocab.txt"), "wb") as f:
                f.write(read_bytes(vocab_file, "vocab"))
            lower = True if do_lower_case is None else do_lower_case
            with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": lower,
                           "model_max_length": config.max_position_embeddings}, f, indent=2)
            with open(os.path.join(tmp, "special_tokens_map.json"), "w", encoding="utf-8") as f:
                json.dump({"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                           "mask_token": "[MASK]"}, f, indent=2)
    return ARCHITECTURES[head]


def _float32(value):
    """A C-ordered float32 array; a ``LazyTensor`` stays lazy, converted when written (streamed)."""
    if isinstance(value, LazyTensor):
        return value.then(lambda array: np.ascontiguousarray(array, np.float32), dtype=np.float32)
    return np.ascontiguousarray(value, np.float32)


def is_hf_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, "config.json"))   # read_json checks it


def check_hf_config(cfg, where: str) -> None:
    """Refuses an HF config.json (``cfg``, parsed; ``where`` names it) whose model the official graph does not
    compute: a ValueError naming the field, its value and why. Keys that change nothing computed pass.
    transformers itself is no judge: it ignores some of these settings (relative position embeddings in 5.x)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object")
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in FROM_HF_ACT:
        raise ValueError(f"{where}: hidden_act {_show(act)}: the official graph has no such activation (in "
                         f"transformers' names it has {', '.join(sorted(FROM_HF_ACT))}); this model computes "
                         f"something else")
    problem = variant_problem(cfg)
    if problem:
        raise ValueError(f"{where}: {problem}")


def read_hf_dir(path: str, lazy: bool = False) -> tuple[dict, BertConfig]:
    """(tensors under file names, the BertConfig that computes what the directory's model computes).
    With ``lazy``, a model.safetensors' tensors are ``LazyTensor``s, read when used (``open_weights``)."""
    cfg = read_json(os.path.join(path, "config.json"), "HF config")
    check_hf_config(cfg, os.path.join(path, "config.json"))
    act = FROM_HF_ACT[cfg.get("hidden_act", "gelu")]
    try:
        config = BertConfig.from_dict({**{k: cfg[k] for k in FIELDS if k in cfg}, "hidden_act": act})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(path, 'config.json')}: {e}") from None
    weights = next((os.path.join(path, n) for n in ("model.safetensors", "pytorch_model.bin")
                    if os.path.lexists(os.path.join(path, n))), None)   # its reader refuses a FIFO there
    if weights is None:
        raise WeightsError([f"{path}: no model.safetensors or pytorch_model.bin"])
    read = open_weights if lazy else read_weights
    tensors = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in read(weights).items()
               if not k.endswith("position_ids")}   # a buffer, not a weight
    return tensors, config
