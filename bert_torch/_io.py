"""Files in and out, hardened: strict JSON, atomic writes, reads that name the file at fault.

Used by every writer of the project (``bert_torch`` and, since ``bert_torch`` must not import
``parity``, by ``parity`` and ``reference_tf`` too):

* ``dumps``: strict JSON (RFC 8259 has no NaN/Infinity); a non-finite float is written as the
  string ``"nan"``, ``"inf"`` or ``"-inf"`` (CONTRACT.md), numpy scalars and arrays as numbers.
* ``atomic_output`` / ``atomic_outputs``: write to a temporary name in the destination's own
  directory (so the final ``os.replace`` is a rename, never a copy) and rename only when every
  file of the set is complete; on any exception, SIGTERM or SIGINT the temporaries are removed
  and nothing appears at a final name. Write failures (a directory given as a file, a read-only
  folder, a full disk) become ``OutputError``: one line naming the path.
* ``read_text`` / ``read_json``: size-bounded reads; a decoding, permission or nesting problem
  becomes ``InputFileError``: one line naming the file and what it is (vocab, config, ...).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

# Text inputs (configs, vocabularies, sentence files) are small; a bigger one is a mistake
# or an attack, refused before it is read into memory. 1 GiB covers any real vocab or tsv.
MAX_TEXT_BYTES = 1 << 30
# JSON nesting: a bert_config.json is flat; Python's parser recurses, and recursion is bounded.
MAX_JSON_DEPTH = 64


class InputFileError(ValueError):
    """A file that cannot be read as what it should be: one line naming it."""


class OutputError(OSError):
    """An output that cannot be written: one line naming it (the partial file is already gone)."""

    def __str__(self) -> str:   # OSError's own str() prefixes "[Errno ...]"; ours is the whole line
        return self.args[0] if self.args else "cannot write output"


# --------------------------------------------------------------------------------------------
# Strict JSON

def strict(obj, default: Optional[Callable] = None):
    """``obj`` with every float made JSON-safe and numpy values made Python ones."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: strict(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v, default) for v in obj]
    tolist = getattr(obj, "tolist", None)   # numpy scalars and arrays, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return strict(tolist(), default)
    if default is not None:
        return strict(default(obj), None)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj, default: Optional[Callable] = None, **kw) -> str:
    """``json.dumps`` that never writes a bare NaN/Infinity (``allow_nan=False`` proves it)."""
    return json.dumps(strict(obj, default), allow_nan=False, **kw)


# --------------------------------------------------------------------------------------------
# Atomic outputs

_PENDING: set[str] = set()        # temporaries of writes in progress, removed on SIGTERM/SIGINT
_HANDLED: dict[int, object] = {}  # signal -> the handler ours replaced
_LOCK = threading.Lock()


def _on_signal(signum, frame):
    for tmp in list(_PENDING):
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
    previous = _HANDLED.get(signum)
    if callable(previous):   # Python's SIGINT handler raises KeyboardInterrupt
        return previous(signum, frame)
    signal.signal(signum, signal.SIG_DFL)   # die of the signal, as without us
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return   # signal handlers can only be set from the main thread; the finally still cleans up
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig not in _HANDLED:
            with contextlib.suppress(ValueError, OSError):
                _HANDLED[sig] = signal.signal(sig, _on_signal)


def remove_on_signal(path: str) -> None:
    """Removes ``path`` (a temporary file or folder, e.g. gigabytes of spilled taps) if SIGTERM or SIGINT ends
    the process before ``forget_on_signal(path)``: a killed comparison leaves no scratch behind either."""
    with _LOCK:
        _install_handlers()
        _PENDING.add(path)


def forget_on_signal(path: str) -> None:
    """``path`` is no longer removed on a signal (its owner removed or kept it)."""
    _PENDING.discard(path)


def _umask() -> int:
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _describe(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _prepare_target(path: str, what: str) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{what} {path}: is a directory; give a file name")
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot create directory {directory} ({_describe(e)})") from None
    if not os.path.isdir(directory):
        raise OutputError(f"{what} {path}: {directory} is not a directory")
    return path


def writable_folder(path: str, flag: str, error: Optional[type] = None) -> str:
    """``path`` as a folder this process can write into, made if missing; else ``error`` (default
    ``OutputError``: exit 2) with one line naming ``flag`` and the path."""
    error = error or OutputError
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{flag} {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise error(f"{flag} {path}: cannot create the folder ({_describe(e)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{flag} {path}: not writable")
    return path


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str], what: str = "output") -> Iterator[list[str]]:
    """Yields one temporary path per final path; renames them all into place (in the given order)
    when the block completes, removes them on any failure. A set (a TF checkpoint's data and
    index) appears as a whole: the last of ``paths`` is renamed last, so name the file readers
    look for (the index) last."""
    finals = [_prepare_target(p, what) for p in paths]
    tmps: list[str] = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.", suffix=".tmp")
            os.fchmod(fd, 0o666 & ~_umask())   # mkstemp's 0600 would make outputs private; open() would not
            os.close(fd)
            tmps.append(tmp)
            remove_on_signal(tmp)
        yield list(tmps)
        for tmp in tmps:
            with open(tmp, "rb+") as f:   # on disk before the rename: a crash leaves old or new, not half
                os.fsync(f.fileno())
        for tmp, final in zip(tmps, finals):
            if os.path.isdir(final):
                raise OutputError(f"{what} {final}: is a directory; give a file name")
            os.replace(tmp, final)
    except OutputError:
        raise
    except OSError as e:
        named = dict(zip(tmps, finals)).get(e.filename, finals[0])
        raise OutputError(f"{what} {named}: cannot write ({_describe(e)})") from None
    finally:
        for tmp in tmps:
            forget_on_signal(tmp)
            with contextlib.suppress(OSError):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_output(path: str, what: str = "output") -> Iterator[str]:
    """``atomic_outputs`` for one file: yields the temporary path to write."""
    with atomic_outputs([path], what) as (tmp,):
        yield tmp


def write_text(path: str, text: str, what: str = "output") -> None:
    with atomic_output(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_bytes(path: str, data: bytes, what: str = "output") -> None:
    with atomic_output(path, what) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path: str, obj, what: str = "output", default: Optional[Callable] = None, **kw) -> None:
    write_text(path, dumps(obj, default=default, **kw) + "\n", what)


@contextlib.contextmanager
def atomic_dir(path: str, what: str = "output folder", keep_existing: bool = False) -> Iterator[str]:
    """A folder written aside (a temporary folder beside ``path``) and renamed into place when
    complete, replacing an older one; removed on any failure or SIGTERM/SIGINT.

    ``keep_existing``: a folder already at ``path`` when this one is complete (another process wrote the
    same thing first, and may be reading it) is kept, and this one discarded, never swapped under its
    reader; also when the other lands between the check and the rename (the rename then fails)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
    remove_on_signal(tmp)
    try:
        try:
            yield tmp
        except OSError as e:
            raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
        if keep_existing and os.path.isdir(path):
            return
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as e:
            if keep_existing and os.path.isdir(path):   # the other writer's rename came first
                return
            raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
    finally:
        forget_on_signal(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Tensors streamed, not held

class LazyTensor:
    """A tensor known by its shape and dtype, read only when asked for (``load()``, ``np.asarray``) and
    not kept: each ask reads it again. Converters pass these from reader to writer, so that a checkpoint
    streams through one tensor at a time instead of being held whole, twice (read, then re-laid out)."""

    __slots__ = ("shape", "dtype", "_load")

    def __init__(self, shape, dtype, load: Callable[[], np.ndarray]):
        self.shape, self.dtype, self._load = tuple(int(d) for d in shape), np.dtype(dtype), load

    @classmethod
    def wrap(cls, array) -> "LazyTensor":
        """An array already in memory, so that what is derived from it (``then``) is made one at a time."""
        array = np.asarray(array)
        return cls(array.shape, array.dtype, lambda: array)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        array = np.asarray(self._load())
        if array.shape != self.shape or array.dtype != self.dtype:   # a reader's bug, never silently passed on
            raise ValueError(f"lazy tensor read as {array.dtype}{list(array.shape)}, "
                             f"declared {self.dtype}{list(self.shape)}")
        return array

    def then(self, fn: Callable[[np.ndarray], np.ndarray], shape=None, dtype=None) -> "LazyTensor":
        """``fn`` of this tensor, lazily; declared with ``shape``/``dtype`` (default: this one's)."""
        return LazyTensor(self.shape if shape is None else shape, self.dtype if dtype is None else dtype,
                          lambda: fn(self.load()))

    def __array__(self, dtype=None, copy=None):
        array = self.load()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyTensor({self.dtype}{list(self.shape)})"


# safetensors' dtype names, in the order of its Dtype enum: it writes tensors by dtype, descending, then name.
SAFETENSORS_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
                       "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
                       "F64": np.float64, "I64": np.int64, "U64": np.uint64}
_SAFETENSORS_NAME = {np.dtype(t): name for name, t in SAFETENSORS_DTYPES.items()}
_SAFETENSORS_RANK = {name: i for i, name in enumerate(SAFETENSORS_DTYPES)}


def save_safetensors(arrays: Mapping, path: str, metadata: Optional[dict] = None) -> None:
    """A safetensors file written with plain file writes, so that a full disk is an ``OSError``
    (``safetensors.numpy.save_file``, whose arguments these are, raises its own error type for it).

    Streamed: the header first, then each tensor, made contiguous (and a ``LazyTensor`` read) one at a
    time, so that no second copy of the whole model is ever built in memory. The bytes are those of
    ``safetensors.numpy.save`` (tensors by dtype, descending, then name; the JSON header padded with
    spaces to 8 bytes), the metadata's keys in their given order rather than in a hash map's. Inputs that
    format cannot hold as written here (other dtypes, non-string metadata) go to ``safetensors`` itself."""
    prepared = {k: v if isinstance(v, LazyTensor) else np.ascontiguousarray(v) for k, v in arrays.items()}
    dtypes = {k: np.dtype(v.dtype).newbyteorder("=") for k, v in prepared.items()}
    if (any(d not in _SAFETENSORS_NAME for d in dtypes.values()) or "__metadata__" in prepared
            or not all(isinstance(k, str) for k in prepared)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in (metadata or {}).items())):
        from safetensors.numpy import save
        data = save({k: np.ascontiguousarray(v) for k, v in prepared.items()}, metadata=metadata)
        with open(path, "wb") as f:
            f.write(data)
        return
    order = sorted(prepared, key=lambda k: (-_SAFETENSORS_RANK[_SAFETENSORS_NAME[dtypes[k]]], k))
    header, offset = ({"__metadata__": dict(metadata)} if metadata is not None else {}), 0
    for k in order:
        size = math.prod(prepared[k].shape) * dtypes[k].itemsize
        header[k] = {"dtype": _SAFETENSORS_NAME[dtypes[k]], "shape": list(prepared[k].shape),
                     "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for k in order:
            value = prepared.pop(k)   # not kept once written (a LazyTensor's read is freed with it)
            array = value.load() if isinstance(value, LazyTensor) else value
            if array.shape != tuple(header[k]["shape"]) or array.dtype.newbyteorder("=") != dtypes[k]:
                raise ValueError(f"tensor {k} changed while being written")
            array = np.asarray(array, array.dtype.newbyteorder("<"), order="C")   # safetensors is little-endian
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            del value, array


# --------------------------------------------------------------------------------------------
# Reads that name the file

def read_bytes(path: str, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if os.path.isdir(path):
            raise InputFileError(f"{what} {path}: is a directory, not a file")
        if size > max_bytes:
            raise InputFileError(f"{what} {path}: {size} bytes, more than the {max_bytes} a {what} may have")
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None


def decode(data: bytes, path: str, what: str, encoding: str = "utf-8") -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        guess = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputFileError(f"{what} {path}: not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start}"
                             f"{guess}") from None


def read_text(path: str, what: str = "file", encoding: str = "utf-8", max_bytes: int = MAX_TEXT_BYTES) -> str:
    return decode(read_bytes(path, what, max_bytes), os.fspath(path), what, encoding)


def _depth(s: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), without recursion."""
    depth = deepest = 0
    in_str = esc = False
    for ch in s:
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text: str, where: str, what: str = "JSON file"):
    """``json.loads`` with a nesting bound and a one-line error naming ``where``."""
    if _depth(text) > MAX_JSON_DEPTH:
        raise InputFileError(f"{what} {where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{what} {where}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise InputFileError(f"{what} {where}: JSON nested too deeply") from None


def read_json(path: str, what: str = "JSON file", max_bytes: int = 64 << 20):
    return loads(read_text(path, what, "utf-8-sig", max_bytes), os.fspath(path), what)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
