"""Taps spilled to disk, one file each, read back one at a time: what keeps a comparison's memory to a few
taps, whatever the model's size.

A comparison needs every tap of up to four runs of one model (the reference, the candidate, its float32 and
float64 twins): held in memory at once that is layers x batch x length^2, 13 GB for BERT-large at 8 x 128.
Each side instead *streams* its taps (``Side.stream``: in forward order, as they are computed) into a
``TapStore``, which writes each as a ``.npy`` file in a private temporary folder and keeps only its name,
shape and dtype; reading ``store[name]`` loads that one file. The comparison then walks the taps one by one,
so at any moment it holds a tap or two of each run, plus what the running model itself needs. The numbers
are those of the in-memory comparison: the same runs, the same arrays, read back bit for bit.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from bert_torch._io import forget_on_signal, remove_on_signal


class SpilledArray:
    """A tap another process already wrote as a ``.npy`` file (``parity.sides.tf_worker``): a ``TapStore`` takes the
    file over without reading it; anything else reads it (``np.asarray``)."""

    def __init__(self, path: str):
        self.path = path

    def __array__(self, dtype=None, copy=None):
        a = np.load(self.path, allow_pickle=False)
        return a if dtype is None else a.astype(dtype)


class LazyTaps(Mapping):
    """{name: load(name)} over the given names, each loaded only when asked for and not kept: fed taps read
    from a spilled run (or a worker's files) one at a time, as the forward that feeds them reaches each."""

    def __init__(self, names: Iterable[str], load: Callable[[str], object],
                 file: Optional[Callable[[str], str]] = None):
        self.names, self.load = list(dict.fromkeys(names)), load
        self._known = frozenset(self.names)
        self._file = file   # where a value already lies on disk as a .npy file, if it does

    def file(self, name: str) -> Optional[str]:
        """The ``.npy`` file holding ``name``'s value, for a reader that takes files (the TF worker), or None."""
        return self._file(name) if self._file is not None and name in self._known else None

    def __getitem__(self, name: str):
        if name not in self._known:
            raise KeyError(name)
        return self.load(name)

    def __contains__(self, name) -> bool:   # Mapping's own would load the value to answer
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class TapStore(Mapping):
    """{tap name: array} on disk. ``put`` writes one tap; ``store[name]`` reads it back (a fresh array)."""

    def __init__(self, root: Optional[str] = None, label: str = "taps"):
        self.dir = tempfile.mkdtemp(prefix=f"bert-parity-{label}-", dir=root)
        remove_on_signal(self.dir)   # a comparison killed by SIGTERM leaves no gigabytes of taps behind
        self._files: dict[str, str] = {}
        self.nbytes = 0

    def file(self, name: str) -> str:
        """The ``.npy`` file that holds ``name`` (read it, do not move it)."""
        return self._files[name]

    def put(self, name: str, value) -> None:
        if name in self._files:
            raise ValueError(f"tap {name} stored twice")
        path = os.path.join(self.dir, f"{len(self._files):05d}.npy")
        if isinstance(value, SpilledArray):   # already on disk: moved (copied across file systems), not read
            shutil.move(value.path, path)
            header = np.load(path, mmap_mode="r", allow_pickle=False)
            self._files[name] = path
            self.nbytes += header.nbytes
            del header
            return
        arr = np.asarray(value)
        np.save(path, arr, allow_pickle=False)
        self._files[name] = path
        self.nbytes += arr.nbytes

    def __getitem__(self, name: str) -> np.ndarray:
        return np.load(self._files[name], allow_pickle=False)

    def __contains__(self, name) -> bool:
        return name in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        forget_on_signal(self.dir)
        self._files = {}

    def __enter__(self) -> "TapStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
