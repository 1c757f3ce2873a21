"""Where things are: the repository, the committed samples, the shared data sets.

One definition of each path the harness reads (atomic writes, strict JSON and hashing live in
``bert_torch/_io.py``, which the model's commands share)."""
from __future__ import annotations

import os
from typing import Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
SAMPLE_DIR = os.path.join(PACKAGE_DIR, "data")   # the small committed samples (parity/data/README.md)
# The folder of the official graph's cached results (parity.sides.refcache), for every command that runs it;
# `bert-parity release --tf-cache DIR` sets it for the release's run.
CACHE_ENV = "BERT_PARITY_TF_CACHE"


def sample(name: str) -> str:
    """A committed sample file by name (installed with the package)."""
    return os.path.join(SAMPLE_DIR, name)


def default_data_dir() -> Optional[str]:
    """``../shared/data`` beside the repository root (GLUE MRPC, SQuAD v1.1), when it exists."""
    path = os.path.normpath(os.path.join(REPO_ROOT, os.pardir, "shared", "data"))
    return path if os.path.isdir(path) else None
