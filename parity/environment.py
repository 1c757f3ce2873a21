"""Provenance of a comparison: versions, device, threads, numeric settings, file hashes."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

from .inputs import sha256


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str, files: dict[str, str], tf_threads=None) -> dict:
    """``files``: label -> path; each gets its sha256 (checkpoints, config, vocab, sentences)."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tensorflow": _version("tensorflow"),
        "bert_tensorflow": _version("bert-tensorflow"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda and device.startswith("cuda") else None,
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "tensorflow_intra_op": tf_threads or "default (all cores)",
                    "cpu_count": os.cpu_count()},
        "tf32": {"torch_matmul": torch.backends.cuda.matmul.allow_tf32, "torch_cudnn": torch.backends.cudnn.allow_tf32,
                 "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
                 "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE")},
        "onednn": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TF default: on)"),
                   "torch_mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled},
        "determinism": {"torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                        "TF_DETERMINISTIC_OPS": os.environ.get("TF_DETERMINISTIC_OPS")},
        "argv": sys.argv,
        "sha256": {label: sha256(path) for label, path in files.items() if path and os.path.isfile(path)},
    }
