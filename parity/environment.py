"""Provenance of a comparison: versions, device, threads, numeric settings, seeds, file hashes, git state.

Everything here is read without importing TensorFlow: versions come from package metadata,
and TF's runtime settings are read only when TensorFlow is already loaded in this process
(a golden-file comparison runs without it).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Optional

import torch

from parity.files import REPO_ROOT
from parity.inputs import sha256



def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_state(root: str = REPO_ROOT) -> dict:
    """Commit and dirtiness of the source tree the numbers came from (None outside a git checkout)."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "changed_files": None}
    # Untracked files count: a new, uncommitted module can change the numbers as much as an edit.
    status = git("status", "--porcelain", "--untracked-files=normal") or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit.strip(), "dirty": bool(changed), "changed_files": changed[:50]}


def _tensorflow_runtime() -> Optional[dict]:
    """TF's own view of its settings, only if TF is already imported (never imports it)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    try:
        return {"version": tf.__version__,
                "tf32_execution": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
                "op_determinism": bool(tf.config.experimental.is_op_determinism_enabled()),
                "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}
    except Exception as e:   # a partial TF install must not cost the report
        return {"error": f"{type(e).__name__}: {e}"}


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve")


def machine() -> dict:
    """What decides this machine's floating-point rounding: the CPU, the ISA its kernels use, the GPU.

    Golden files and calibration files carry it, so that a replay elsewhere can say so (docs/precision.md
    and docs/golden.md)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu in ("", platform.machine(), "x86_64", "i386"):
                    cpu = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {"cpu": cpu, "arch": platform.machine(), "isa": [f for f in ISA_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None}


def same_machine(a: Optional[dict], b: Optional[dict]) -> bool:
    """Whether two ``machine()`` records round alike (same CPU model and kernel ISA, same GPU)."""
    keys = ("cpu", "arch", "torch_cpu_capability", "gpu")
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def environment(device: str, files: dict[str, str], tf_threads=None, seeds: Optional[dict] = None) -> dict:
    """``files``: label -> path; each gets its sha256 (checkpoints, config, vocab, sentences, data).

    ``seeds``: label -> seed of everything random that fed the numbers (inputs, checkpoints).
    """
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tensorflow": _version("tensorflow"),
        "bert_tensorflow": _version("bert-tensorflow"),
        "numpy": _version("numpy"),
        "safetensors": _version("safetensors"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "machine": machine(),
        "device": device,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda and device.startswith("cuda") else None,
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "tensorflow_intra_op": tf_threads or "default (all cores)",
                    "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "tf32": {"torch_matmul": torch.backends.cuda.matmul.allow_tf32, "torch_cudnn": torch.backends.cudnn.allow_tf32,
                 "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
                 "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE")},
        "onednn": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TF default: on)"),
                   "torch_mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled},
        "determinism": {"torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                        "TF_DETERMINISTIC_OPS": os.environ.get("TF_DETERMINISTIC_OPS"),
                        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED")},
        "tensorflow_runtime": _tensorflow_runtime(),
        "seeds": dict(seeds or {}),
        "git": git_state(),
        "argv": sys.argv,
        "sha256": {label: sha256(path) for label, path in files.items() if path and os.path.isfile(path)},
        # What was actually read, by absolute path (a state file or a default may have chosen it).
        "files": {label: os.path.abspath(path) for label, path in files.items() if path and os.path.isfile(path)},
    }
