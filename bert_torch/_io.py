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
* ``regular_file``: every reader's check, before it opens an input: a FIFO, pipe, device or socket is
  refused by name. ``sha256`` of a file ``read_bytes`` read is the hash of the bytes it read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import stat
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
        _PENDING.add(os.path.abspath(path))


def forget_on_signal(path: str) -> None:
    """``path`` is no longer removed on a signal (its owner removed or kept it)."""
    _PENDING.discard(os.path.abspath(path))


def _umask() -> int:
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _temp_prefix(final: str) -> str:
    """A temporary's name beside ``final``: its name cut so that the whole stays within a file system's 255 bytes
    (a legal output name must not fail because its temporary's is longer)."""
    return "." + os.fsencode(os.path.basename(final))[:200].decode(errors="ignore") + "."


def _describe(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


# Files this tool wrote into a folder it does not own (the user's): name -> [size, mtime_ns, inode] when written.
# An existing file is replaced only while it is listed there unchanged: a file of the user's of the same name
# (their own bert_config.json beside a --to-tf prefix, a weights file they made) is never overwritten.
FILES_LEDGER = ".bert-parity-files"
MAX_LEDGER_BYTES = 1 << 20


def _signature(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_ledger(directory: str) -> dict:
    path = os.path.join(directory, FILES_LEDGER)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return {}
        with open(path, encoding="utf-8") as f:
            ledger = json.loads(f.read(MAX_LEDGER_BYTES))
        return ledger if isinstance(ledger, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_ledger(path: str) -> bool:
    """Whether the file at ``path`` is a ledger this tool wrote (a JSON object of name -> signature)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(MAX_LEDGER_BYTES))
        return isinstance(data, dict) and all(isinstance(v, list) and len(v) == 3 for v in data.values())
    except (OSError, ValueError):
        return False


def written_by_us(path: str) -> bool:
    """Whether the file at ``path`` is an output this tool wrote there, unchanged since."""
    try:
        return _read_ledger(os.path.dirname(os.path.abspath(path))).get(os.path.basename(path)) == _signature(path)
    except OSError:
        return False


# Commands (``bert_torch.commands.run_main``) replace only their own earlier outputs; library calls (``write_checkpoint``
# from a user's script or a test planting a fault in place) write where they are told, as any library function does.
_GUARD = threading.local()


@contextlib.contextmanager
def only_our_outputs_replaced() -> Iterator[None]:
    """Within this block (a command's run) an existing file is replaced only when ``written_by_us``."""
    before = getattr(_GUARD, "on", False)
    if not before:   # a command's inputs are its own: what an earlier call in this process read is not one
        _INPUTS.clear()
    _GUARD.on = True
    try:
        yield
    finally:
        _GUARD.on = before


def check_replaceable(path: str, what: str) -> None:
    """An existing file at ``path`` may be replaced only when this tool wrote it and nobody changed it since."""
    if (getattr(_GUARD, "on", False) and os.path.lexists(path) and not written_by_us(path)
            and not _inside_pending(os.path.dirname(os.path.abspath(path)))):   # (a folder being written aside is ours)
        raise OutputError(f"{what} {path}: exists and was not written by bert-parity (or was changed since); "
                          f"it is never replaced: remove it yourself or give another name")


def _inside_pending(directory: str) -> bool:
    """Whether ``directory`` is (inside) a folder being written aside, which is ours as a whole."""
    directory = os.path.abspath(directory)
    return any(os.path.commonpath([directory, p]) == p for p in list(_PENDING) if os.path.isdir(p))


def _record_outputs(finals: Sequence[str]) -> None:
    """Lists the files just written in their folder's ledger (best effort: a folder that cannot take it only
    means a later run will not replace them)."""
    if not getattr(_GUARD, "on", False):   # a library call: no command will be asked to replace it
        return
    by_dir: dict[str, list[str]] = {}
    for final in finals:
        by_dir.setdefault(os.path.dirname(final), []).append(final)
    for directory, files in by_dir.items():
        if _inside_pending(directory):
            continue
        where = os.path.join(directory, FILES_LEDGER)
        if os.path.lexists(where) and not _is_ledger(where):   # a file of the user's by that name is kept
            continue
        ledger = {k: v for k, v in _read_ledger(directory).items()
                  if os.path.lexists(os.path.join(directory, k))}
        with contextlib.suppress(OSError):
            ledger.update({os.path.basename(f): _signature(f) for f in files})
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{FILES_LEDGER}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(dumps(ledger, indent=1) + "\n")
                os.replace(tmp, os.path.join(directory, FILES_LEDGER))
            finally:
                with contextlib.suppress(OSError):
                    os.remove(tmp)


def _prepare_target(path: str, what: str) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{what} {path}: is a directory; give a file name")
    if os.path.basename(path) in (FILES_LEDGER, OUTPUT_MARKER):
        raise OutputError(f"{what} {path}: that name is this tool's own record of what it wrote; give another name")
    check_not_input(path, what)
    check_replaceable(path, what)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot create directory {directory} ({_describe(e)})") from None
    if not os.path.isdir(directory):
        raise OutputError(f"{what} {path}: {directory} is not a directory")
    return path


def describe_special(st: os.stat_result) -> str:
    """What a path that is not a regular file or a folder is, in words."""
    mode = st.st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO or pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


# Files and folders this process has read as inputs: an output is never written over one of them.
_INPUTS: dict[tuple[int, int], str] = {}


def note_input(path: str) -> None:
    """Records ``path`` as an input of this run (``check_not_input`` refuses to write over it)."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        _INPUTS[(st.st_dev, st.st_ino)] = os.path.realpath(path)


def check_not_input(path: str, what: str) -> None:
    """An output at ``path`` would replace or delete an input of this run (the checkpoint just read, the
    folder holding it): refused, naming both."""
    if not getattr(_GUARD, "on", False):   # a library call (a script rewriting a checkpoint in place) may
        return
    try:
        st = os.stat(path)
    except OSError:   # nothing there yet
        st = None
    if st is not None and (st.st_dev, st.st_ino) in _INPUTS:
        raise OutputError(f"{what} {path}: is an input of this run; an input is never overwritten: "
                          f"give another output name")
    real = os.path.realpath(path)
    inside = next((p for p in _INPUTS.values() if os.path.isdir(real) and
                   os.path.commonpath([real, p]) == real), None)
    if inside is not None:
        raise OutputError(f"{what} {path}: holds {inside}, an input of this run; give another output name")


def _nearest_existing(path: str) -> str:
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    return here


def _check_parent(path: str, what: str) -> None:
    label = f"{what} {path}".strip()
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise OutputError(f"{label}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: cannot write in {parent} (permission denied)")


def check_output_file(path: str, what: str = "") -> None:
    """``path`` can become an output file: not a folder or special file, in a folder that exists or can be made."""
    label = f"{what} {path}".strip()
    if os.path.basename(path) in (FILES_LEDGER, OUTPUT_MARKER):
        raise OutputError(f"{label}: that name is this tool's own record of what it wrote; give another name")
    if path.endswith(os.sep):
        raise OutputError(f"{label}: is a folder name (it ends with {os.sep}); give a file name")
    if os.path.lexists(path):
        try:
            st = os.stat(path)
        except OSError as e:
            raise OutputError(f"{label}: {_describe(e)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{label}: is a folder; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{label}: is {describe_special(st)}; give a regular file name")
        check_replaceable(path, what or "output")
    _check_parent(path, what)


OUTPUT_MARKER = ".bert-parity-output"   # in every output folder: which command wrote it (JSON)
MAX_MARKER_BYTES = 8 << 20   # a marker lists every file of its folder: bounded, as every read is


def _marker(path: str) -> Optional[dict]:
    """Folder ``path``'s marker (``{"command": ..., "files": [...]}``), or None when it is not an output of ours."""
    marker = os.path.join(path, OUTPUT_MARKER)
    try:
        if not stat.S_ISREG(os.stat(marker).st_mode):   # a FIFO there would block the open: not a marker of ours
            return None
        with open(marker, encoding="utf-8") as f:
            data = json.loads(f.read(MAX_MARKER_BYTES))
        return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None
    except (OSError, ValueError):
        return None


def output_owner(path: str) -> Optional[str]:
    """The command that wrote folder ``path`` (its marker), or None when it is not an output of ours."""
    marker = _marker(path)
    return marker["command"] if marker else None


def _listing(path: str) -> dict[str, list[int]]:
    """Every file under folder ``path`` (links not followed), relative to it, the marker left out -> its size
    and modification time: a file changed since it was written is no longer the tool's to replace."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(full)
                found[os.path.relpath(full, path)] = [st.st_size, st.st_mtime_ns]
    found.pop(OUTPUT_MARKER, None)
    return dict(sorted(found.items()))


def spelled(owner: str) -> str:
    """The command an owner names: a subcommand (``compare``) of the front door, or a whole spelling
    (``python -m parity.minilm``) for a command that is not one."""
    return owner if " " in owner else f"bert-parity {owner}"


def check_output_dir(path: str, owner: Optional[str], what: str = "") -> None:
    """``path`` can become the output folder of command ``owner``: absent, empty, or a previous output of the
    same command (which is then replaced as a whole). Anything else is refused before any work: a folder
    holding other files is never emptied (``--output .`` or the checkpoint's own folder lose nothing).
    ``owner`` None: a working folder written into file by file (a cache, spilled taps), which may exist."""
    label = f"{what} {path}".strip()
    if os.path.lexists(path):
        try:
            st = os.stat(path)
        except OSError as e:
            raise OutputError(f"{label}: {_describe(e)}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{label}: exists and is not a folder"
                              + ("" if stat.S_ISREG(st.st_mode) else f" ({describe_special(st)})"))
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{label}: not writable")
        if owner is None:
            return
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            raise OutputError(f"{label}: cannot list it ({_describe(e)})") from None
        marker = _marker(path)
        found = marker["command"] if marker else None
        if entries and found == owner:   # ours, unless somebody has put files of their own in it since
            listed = marker.get("files")
            listed = listed if isinstance(listed, dict) else {}
            foreign = [f for f, sig in _listing(path).items() if listed.get(f) != sig]
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise OutputError(f"{label}: a previous output of `{spelled(owner)}`, but it now holds files "
                                  f"bert-parity did not write or that changed since ({shown}); it is not replaced: "
                                  f"move them, or give a new or empty folder")
        if entries and found != owner:
            if found is not None:
                raise OutputError(f"{label}: holds the output of `{spelled(found)}`, which {owner} does not "
                                  f"replace; give a new or empty folder")
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(f"{label}: exists and holds files bert-parity did not write ({shown}); give a new "
                              f"or empty folder (nothing there is deleted or replaced)")
    _check_parent(path, what)


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
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=_temp_prefix(final), suffix=".tmp")
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
            check_replaceable(final, what)   # again: another program may have put a file there meanwhile
            os.replace(tmp, final)
        _record_outputs(finals)
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
def atomic_dir(path: str, what: str = "output folder", keep_existing: bool = False,
               owner: Optional[str] = None) -> Iterator[str]:
    """A folder written aside (a temporary folder beside ``path``) and renamed into place when complete, so
    that it appears whole or not at all; removed on any failure or SIGTERM/SIGINT.

    ``owner``: the command writing it. Its marker (``OUTPUT_MARKER``) goes into the folder, and a folder
    already at ``path`` is replaced only when it is empty or marked as a previous output of ``owner``
    (``check_output_dir``, made before any work and again before the swap); anything else is refused, never
    deleted. Without ``owner`` an existing folder is never replaced.

    ``keep_existing``: a folder already at ``path`` when this one is complete (another process wrote the
    same thing first, and may be reading it) is kept, and this one discarded, never swapped under its
    reader; also when the other lands between the check and the rename (the rename then fails)."""
    # A link names the folder it points to: that is what is written aside and replaced, and the link stays.
    path = os.path.realpath(os.fspath(path))
    if not keep_existing:   # (a kept entry, such as a cache's, never replaces anything: its reads are no inputs)
        check_not_input(path, what)
        check_output_dir(path, owner or "", what)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=".tmp")
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
    remove_on_signal(tmp)
    old = None
    try:
        try:
            yield tmp
            if owner:   # which command wrote the folder, and every file it wrote (nothing else is ever replaced)
                with open(os.path.join(tmp, OUTPUT_MARKER), "w", encoding="utf-8") as f:
                    f.write(dumps({"command": owner, "files": _listing(tmp)}) + "\n")
        except OSError as e:
            raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
        if keep_existing and os.path.isdir(path):
            return
        try:
            if os.path.isdir(path):
                check_output_dir(path, owner or "", what)   # still empty, or still ours
                check_not_input(path, what)   # and holds none of the files this run has read since it began
                old = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=".old")
                remove_on_signal(old)
                os.replace(path, os.path.join(old, "previous"))   # aside first: never a moment with neither
            os.replace(tmp, path)
        except OSError as e:
            if keep_existing and os.path.isdir(path):   # the other writer's rename came first
                return
            if old is not None and not os.path.lexists(path):   # put the previous output back
                with contextlib.suppress(OSError):
                    os.replace(os.path.join(old, "previous"), path)
            if isinstance(e, OutputError):
                raise
            raise OutputError(f"{what} {path}: cannot write ({_describe(e)})") from None
    finally:
        forget_on_signal(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            forget_on_signal(old)
            shutil.rmtree(old, ignore_errors=True)


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

def regular_file(path: str, what: str = "file", missing_ok: bool = False) -> Optional[os.stat_result]:
    """The ``os.stat`` of ``path`` (links followed) when it is a regular file, recorded as an input of this run
    (``note_input``); anything else is ``InputFileError``: one line naming ``what``, the path and what it is.

    Decided from the stat, before the file is opened, because opening is already the harm: opening a FIFO for
    reading blocks until a writer comes, a device reads forever (``/dev/zero``) or nothing (``/dev/null``), and
    a pipe (``--sentences <(cat f)``) gives its bytes once, so that a second read (the report's hash) sees
    others. ``missing_ok``: a path that does not exist gives None, for callers that name a missing file in
    their own words."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        if missing_ok:
            return None
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None
    except OSError as e:   # a symbolic link loop, a path through a file, no permission on a folder
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{what} {path}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{what} {path}: {describe_special(st)}, not a regular file; save it to a file "
                             f"and give its path")
    note_input(path)
    return st


def _open_regular(path: str, what: str):
    """``path`` opened for binary reading once ``regular_file`` passed it; opened without blocking and checked
    again on the descriptor, so that a FIFO put in its place in between is refused too, never waited on."""
    regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise InputFileError(f"{what} {path}: {describe_special(st)}, not a regular file; save it to a file "
                             f"and give its path")
    os.set_blocking(fd, True)
    return f


# The sha256 of the bytes read_bytes last returned for a file ((device, inode) -> size, mtime, digest), so that
# the hash a report records is of the bytes the run used, not of a second read of a file that has changed.
_DIGESTS: dict[tuple[int, int], tuple[int, int, str]] = {}


def read_bytes(path: str, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of regular file ``path``, at most ``max_bytes`` of them (a bigger file is refused before any
    is read); their sha256 is what ``sha256(path)`` gives while the file stays as it was."""
    path = os.fspath(path)
    try:
        with _open_regular(path, what) as f:
            st = os.fstat(f.fileno())
            if st.st_size > max_bytes:
                raise InputFileError(f"{what} {path}: {st.st_size} bytes, more than the {max_bytes} a {what} "
                                     f"may have")
            data = f.read(st.st_size)   # the size the file has, never more: a file that grows is cut there
            st = os.fstat(f.fileno())
    except OSError as e:
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None
    _DIGESTS[st.st_dev, st.st_ino] = (st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest())
    return data


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


def sha256(path: str, what: str = "file") -> str:
    """The sha256 of regular file ``path``: of the bytes ``read_bytes`` read from it when its size and
    modification time are still those it had then (a report hashes its inputs after the run read them),
    else of its content now, read in chunks."""
    path = os.fspath(path)
    try:
        with _open_regular(path, what) as f:
            st = os.fstat(f.fileno())
            size, mtime, digest = _DIGESTS.get((st.st_dev, st.st_ino), (None, None, None))
            if (size, mtime) == (st.st_size, st.st_mtime_ns):
                return digest
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise InputFileError(f"{what} {path}: cannot read ({_describe(e)})") from None
    return h.hexdigest()
