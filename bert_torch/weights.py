"""PyTorch weight files: read and write them, and load them into a model, strictly.

Files use the contract's names: those of HF transformers' ``BertModel`` state dict for
the body (``embeddings.word_embeddings.weight`` ...), plus the head names
(``classifier.*``, ``qa_outputs.*``, ``cls.predictions.*``, ``cls.seq_relationship.*``).
Task models hold the body under ``bert.``; that prefix is added and removed here, so
every other module deals in file names only.
"""
from __future__ import annotations

import functools
import json
from typing import Mapping, Optional

import numpy as np
import torch

from ._io import SAFETENSORS_DTYPES, LazyTensor, atomic_output, regular_file, save_safetensors
from .modeling import HEADS, BertConfig

# Buffers some HF versions save beside the parameters; they carry no learned values.
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class WeightsError(ValueError):
    """Bad weights: one line per culprit, each naming the tensor (and file) at fault."""

    def __init__(self, problems: list[str], unreadable: bool = False):
        self.problems = list(problems)
        self.unreadable = unreadable   # the file itself, not how its tensors fit a config
        super().__init__("\n".join(self.problems))


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Reads safetensors, or a ``.bin``/``.pt`` state dict with ``weights_only=True``, under file names."""
    _weights_file(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file
            tensors = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)   # never unpickle code
            if not isinstance(state, Mapping):
                raise WeightsError([f"{path}: expected a state dict, found {type(state).__name__}"], unreadable=True)
            tensors = {k: v.detach().cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
    except WeightsError:
        raise
    except Exception as e:   # safetensors/pickle raise many types; all mean "unreadable"
        raise WeightsError([_unreadable(path, e)], unreadable=True) from None
    return _file_names(tensors)


def _weights_file(path: str) -> None:
    """A weights file is a regular file, checked before safetensors or torch opens it (a FIFO would block)."""
    if regular_file(path, "weights file", missing_ok=True) is None:
        raise WeightsError([f"{path}: no such weights file"], unreadable=True)


def _unreadable(path: str, e: Exception) -> str:
    return f"{path}: unreadable weights file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _file_names(tensors: dict) -> dict:
    # HF task models save the body under "bert."; the contract's names have no prefix.
    tensors = {file_name(k): v for k, v in tensors.items()}
    return {k: v for k, v in tensors.items() if k not in IGNORED_BUFFERS}


def open_weights(path: str) -> dict[str, np.ndarray | LazyTensor]:
    """``read_weights``, but a safetensors file's tensors as ``LazyTensor``s, each read from the file when
    used (a converter streams the file through one tensor at a time). The file is checked as
    ``read_weights`` checks it (``safetensors`` parses and validates the header) before this returns;
    ``.bin``/``.pt`` files, and safetensors with dtypes numpy lacks, are read whole by ``read_weights``."""
    if not path.endswith(".safetensors"):
        return read_weights(path)
    _weights_file(path)
    try:
        from safetensors import safe_open
        with safe_open(path, framework="numpy") as f:   # the header validated as load_file validates it
            keys = list(f.offset_keys() if hasattr(f, "offset_keys") else f.keys())
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except Exception as e:   # as read_weights: every failure means "unreadable"
        raise WeightsError([_unreadable(path, e)], unreadable=True) from None
    if not all(header[k]["dtype"] in SAFETENSORS_DTYPES for k in keys):
        return read_weights(path)
    keys.sort(key=lambda k: tuple(header[k]["data_offsets"]))   # load_file's order: the data's

    def load(name: str, start: int, end: int, shape: tuple, dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        regular_file(path, "weights file")   # read again when used: still a regular file
        with open(path, "rb") as f:
            f.seek(8 + n + start)
            got = f.readinto(memoryview(array.reshape(-1).view(np.uint8)))
        if got != end - start:
            raise WeightsError([f"{path}: unreadable weights file (truncated: {name} needs bytes "
                                f"[{8 + n + start}, {8 + n + end}))"], unreadable=True)
        return array

    tensors = {}
    for k in keys:
        info = header[k]
        shape, dtype = tuple(info["shape"]), np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[k] = LazyTensor(shape, dtype, functools.partial(load, k, *info["data_offsets"], shape, dtype))
    return _file_names(tensors)


def write_weights(path: str, tensors: Mapping[str, np.ndarray | LazyTensor],
                  metadata: Optional[dict] = None) -> None:
    """Writes safetensors unless the name ends in ``.bin``/``.pt`` (a torch state dict). Safetensors are
    streamed: ``LazyTensor``s are read one at a time, as they are written."""
    # A temporary name, renamed when complete: a failure, a full disk or a signal leaves nothing.
    with atomic_output(path, "weights file") as tmp:
        if path.endswith((".bin", ".pt")):   # torch.save wants every tensor at once
            arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
            with open(tmp, "wb") as f:
                torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, f)
        else:
            save_safetensors(tensors, tmp, metadata={"format": "pt", **(metadata or {})})


def detect_head(names) -> tuple[Optional[str], int]:
    """Which task head a set of file names carries, and its number of labels."""
    names = set(names)
    if "classifier.weight" in names:
        return "classifier", -1
    if "qa_outputs.weight" in names:
        return "squad", 2
    if any(n.startswith("cls.") for n in names):
        return "pretraining", 2
    return None, 2


def build_model(config: BertConfig, head: Optional[str] = None, num_labels: int = 2, device: str | torch.device = "cpu"):
    """A model of the given head on ``device`` (``meta`` gives shapes without memory)."""
    with torch.device(device):
        cls = HEADS[head]
        return cls(config, num_labels) if head == "classifier" else cls(config)


def expected_shapes(config: BertConfig, head: Optional[str] = None, num_labels: int = 2) -> dict[str, tuple]:
    """File name -> shape, for a model of this config and head, in state-dict order."""
    model = build_model(config, head, num_labels, device="meta")
    return {file_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


def file_name(model_name: str) -> str:
    """Task models keep the body under ``bert.``; files name it as BertModel does."""
    return model_name[len("bert."):] if model_name.startswith("bert.") else model_name


def config_mismatches(shapes: Mapping[str, tuple], config: BertConfig, display=lambda name: name) -> list[str]:
    """Config fields that the tensors' shapes contradict, one line each, with the evidence.

    A wrong ``hidden_size`` makes every tensor misshapen; naming the field is the useful
    answer. ``shapes`` is keyed by file name; ``display`` renders a name for the message.
    """
    found = {}   # field -> (value, evidence tensor)
    table = "embeddings.word_embeddings.weight"
    for name, fields_ in ((table, ("vocab_size", "hidden_size")),
                          ("embeddings.position_embeddings.weight", ("max_position_embeddings", None)),
                          ("embeddings.token_type_embeddings.weight", ("type_vocab_size", None)),
                          ("encoder.layer.0.intermediate.dense.bias", ("intermediate_size",))):   # a bias: no transpose
        if name in shapes and len(shapes[name]) == len(fields_):
            for field_, size in zip(fields_, shapes[name]):
                if field_:
                    found[field_] = (int(size), name)
    layers = {int(n.split(".")[2]) for n in shapes if n.startswith("encoder.layer.")}
    if layers:
        found["num_hidden_layers"] = (max(layers) + 1, f"layers 0 to {max(layers)} present")
    lines = []
    for field_, (value, evidence) in found.items():
        if getattr(config, field_) != value:
            shown = display(evidence) if evidence in shapes else evidence
            shape = f" {list(shapes[evidence])}" if evidence in shapes else ""
            lines.append(f"the config says {field_} {getattr(config, field_)}, the weights have {value} "
                         f"({shown}{shape})")
    return lines


def check_shapes(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple], where: str,
                 config: Optional[BertConfig] = None, to_file_name=lambda name: name) -> None:
    """Every expected tensor present with its shape, nothing else: else one line per culprit.

    With ``config``, contradicted config fields are reported instead of every tensor they
    misshape. ``to_file_name`` maps the keys of ``tensors`` to file names (for TF names).
    """
    problems = [f"{where}: missing {n} (expected shape {list(s)})" for n, s in expected.items() if n not in tensors]
    problems += [f"{where}: {n} has shape {list(tensors[n].shape)}, the config expects {list(s)}"
                 for n, s in expected.items() if n in tensors and tuple(tensors[n].shape) != tuple(s)]
    problems += [f"{where}: unmapped {n} {list(np.shape(v))}: not part of a BERT of this config"
                 for n, v in tensors.items() if n not in expected]
    if problems and config is not None:
        names = {to_file_name(n): n for n in tensors}
        fields_ = config_mismatches({f: tuple(np.shape(tensors[n])) for f, n in names.items() if f},
                                    config, display=lambda f: names[f])
        problems = [f"{where}: {line}" for line in fields_] or problems
    if problems:
        raise WeightsError(problems)


def load_model(path: str, config: BertConfig, head: Optional[str] = "auto", num_labels: Optional[int] = None,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A model with every parameter taken from the weights file at ``path``, checked strictly.

    ``head="auto"`` picks the model class from the head tensors present in the file.
    """
    tensors = read_weights(path)
    return model_from_tensors(tensors, config, head, num_labels, device, dtype, where=path)


def model_from_tensors(tensors: Mapping[str, np.ndarray], config: BertConfig, head: Optional[str] = "auto",
                       num_labels: Optional[int] = None, device="cpu", dtype=torch.float32, where="weights"):
    if head == "auto":
        head, n = detect_head(tensors)
        if head == "classifier":
            n = int(np.shape(tensors["classifier.weight"])[0])
        num_labels = num_labels or n
    num_labels = num_labels or 2
    check_shapes(tensors, expected_shapes(config, head, num_labels), where, config)
    model = build_model(config, head, num_labels, device="meta")
    model_names = {file_name(k): k for k in model.state_dict()}
    state = {model_names[n]: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for n, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def model_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's parameters under file names, as float32 numpy arrays."""
    return {file_name(k): v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
