"""A cache of the official graph's results (taps, gradients, loss curves, fine-tuned predictions and
checkpoints), so that a release report whose reference did not change does not recompute it.

An entry is keyed by everything that determines its numbers:
- what the caller says determines them (``parts``): the checkpoint and data files by sha256, the input
  arrays by their bytes, sizes, seeds, learning rates;
- the code that computes them: ``reference_tf/``, Google's installed ``bert`` package and the caller's own
  functions (``code``), all by the sha256 of their source;
- the environment: the versions of TensorFlow, tf-keras, bert-tensorflow and numpy, the TF settings read from
  the environment (oneDNN, TF32, determinism, visible GPUs), and the machine (CPU model and ISA, GPU),
  since TF rounds differently on another CPU.
Anything else changed is a different key: a miss, recomputed. An entry is never trusted as it lies: its
``meta.json`` must name the same key, parts, code and environment, and every stored file must hash to what
``meta.json`` recorded when it was written; an entry that fails either is deleted and recomputed, and the
event says why. Entries are written aside and renamed into place (no partial entry under a final name).
Each use is an ``Event`` (hit, computed, recomputed, not stored), kept on the cache and appended as a JSON line to
``$BERT_PARITY_TF_CACHE_LOG`` when set: a report made from the cache says so in its provenance.

Off unless asked for: ``RefCache.active()`` is the cache at ``$BERT_PARITY_TF_CACHE`` (``make report`` sets it,
``--tf-cache DIR`` on the release gate), else None.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from bert_torch._io import (InputFileError, _describe, atomic_dir, forget_on_signal, read_json,
                            remove_on_signal, sha256, writable_folder)

from parity.files import CACHE_ENV, REPO_ROOT  # noqa: F401  (CACHE_ENV: where it is declared)

LOG_ENV = "BERT_PARITY_TF_CACHE_LOG"
OWNER_ENV = "BERT_PARITY_TF_CACHE_OWNER"   # the release process that set the two above
FORMAT = "bert-parity-tf-cache"
FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 1 << 30     # an entry larger than this is computed and used, not stored
MAX_CACHE_BYTES = 16 << 30    # the oldest entries are evicted to stay under this
# TF's behaviour that environment variables change (read by TF at import or at session creation).
TF_ENV = ("TF_ENABLE_ONEDNN_OPTS", "NVIDIA_TF32_OVERRIDE", "TF_DETERMINISTIC_OPS", "CUDA_VISIBLE_DEVICES",
          "TF_USE_LEGACY_KERAS", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


# The start of the reason an entry was not used when reading it failed rather than its contents (another
# process removing or replacing it meanwhile): recomputed, and the entry is not deleted on that account.
TRANSIENT = "unreadable just now ("


class CacheError(InputFileError):
    """A cache folder that cannot be used (not a folder, not writable): one line, exit 2."""


@dataclasses.dataclass(frozen=True)
class File:
    """A file among an entry's ``parts``: keyed by its sha256, not its path (a copy elsewhere is the same)."""
    path: str


@dataclasses.dataclass
class Entry:
    """What a computation returns to the cache: arrays, JSON values, and files written under ``dir``
    (``compute(dir)`` writes them there; a hit hands back the stored copies' folder)."""
    arrays: dict = dataclasses.field(default_factory=dict)
    values: dict = dataclasses.field(default_factory=dict)
    dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    key: str
    outcome: str          # "hit", "computed", "recomputed" (a stored entry was rejected), "not stored"
    why: str = ""
    created: str = ""     # when the entry used was written (UTC)
    seconds: float = 0.0  # the computation's time (a hit: what it saved)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _source_sha(paths: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _py_files(folder: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".py")]


@functools.lru_cache(maxsize=1)
def reference_code_sha() -> str:
    """sha256 of the reference's source: ``reference_tf/`` and Google's installed ``bert`` package
    (found without importing it: its modules import TensorFlow)."""
    files = _py_files(os.path.join(REPO_ROOT, "reference_tf"))
    spec = importlib.util.find_spec("bert")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        files += _py_files(folder)
    return _source_sha(files)


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict:
    """The environment part of every key (nothing here imports TensorFlow)."""
    from parity.environment import machine
    m = machine()
    return {"versions": {d: _version(d) for d in ("tensorflow", "tf-keras", "bert-tensorflow", "numpy")},
            "reference_code_sha256": reference_code_sha(),
            "env": {k: os.environ.get(k) for k in TF_ENV},
            "machine": {k: m.get(k) for k in ("cpu", "arch", "isa", "gpu")},
            "cpu_count": os.cpu_count()}


_FILE_SHA: dict = {}


def _file_sha(path: str) -> str:
    """sha256 of a file, remembered per (path, size, mtime, inode) within this process."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _FILE_SHA:
        _FILE_SHA[memo] = sha256(path)
    return _FILE_SHA[memo]


def describe(obj):
    """``parts`` as JSON: arrays by dtype, shape and sha256 of their bytes; files by name and sha256."""
    if isinstance(obj, File):
        return {"file": os.path.basename(obj.path), "sha256": _file_sha(obj.path)}
    if isinstance(obj, np.ndarray) or type(obj).__module__ == "torch":
        a = np.ascontiguousarray(np.asarray(obj))
        return {"array": hashlib.sha256(a.view(np.uint8).reshape(-1)).hexdigest() if a.size else "empty",
                "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"tf cache: cannot key on a {type(obj).__name__}")


def code_sha(code: Iterable) -> str:
    """sha256 of the source of the functions, classes or modules that compute an entry."""
    h = hashlib.sha256()
    for obj in code:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()


def checkpoint_files(prefix: str) -> list[File]:
    """An official checkpoint's ``.index`` and data shards (the ``checkpoint`` file names paths only)."""
    folder, base = os.path.split(os.path.abspath(prefix))
    names = sorted(n for n in os.listdir(folder) if n == base + ".index" or n.startswith(base + ".data-"))
    return [File(os.path.join(folder, n)) for n in names]


def _payload_bytes(entry: Entry) -> int:
    n = sum(np.asarray(a).nbytes for a in entry.arrays.values())
    if entry.dir:
        n += sum(os.path.getsize(p) for p in _all_files(entry.dir))
    return n


def _all_files(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)


class RefCache:
    def __init__(self, root: str, max_entry_bytes: int = MAX_ENTRY_BYTES, max_bytes: int = MAX_CACHE_BYTES,
                 log_file: Optional[str] = None):
        self.root = os.path.abspath(writable_folder(root, "--tf-cache", CacheError))
        self.max_entry_bytes, self.max_bytes = max_entry_bytes, max_bytes
        self.log_file = log_file
        self.events: list[Event] = []

    @classmethod
    def active(cls) -> Optional["RefCache"]:
        """The cache named by ``$BERT_PARITY_TF_CACHE`` (one per folder and process), or None."""
        root = os.environ.get(CACHE_ENV)
        if not root:
            return None
        key = (os.path.abspath(root), os.environ.get(LOG_ENV))
        if key not in _ACTIVE:
            _ACTIVE[key] = cls(root, log_file=os.environ.get(LOG_ENV))
        return _ACTIVE[key]

    # ------------------------------------------------------------------ keys and entries
    def key(self, kind: str, parts: Mapping, code: Iterable = ()) -> tuple[str, dict]:
        ident = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "parts": describe(parts),
                 "code_sha256": code_sha(code), "environment": fingerprint()}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest(), ident

    def path(self, kind: str, key: str) -> str:
        return os.path.join(self.root, kind, key[:2], key)

    def _load(self, where: str, ident: dict) -> tuple[Optional[Entry], str, dict]:
        """(entry, why it was rejected, its meta.json) of a stored entry; (None, "", {}) when there is none."""
        meta_path = os.path.join(where, "meta.json")
        if not os.path.isdir(where):
            return None, "", {}
        try:
            meta = read_json(meta_path, "tf cache entry", max_bytes=16 << 20)
        except (InputFileError, OSError) as e:
            return None, f"unreadable meta.json ({str(e).splitlines()[0]})", {}
        if not isinstance(meta, dict) or meta.get("ident") != ident:
            differs = sorted(k for k in ident if not isinstance(meta, dict) or
                             (meta.get("ident") or {}).get(k) != ident[k])
            return None, f"meta.json is for another computation (differs in: {', '.join(differs) or 'everything'})", {}
        stored = meta.get("files")
        if not isinstance(stored, dict):
            return None, "meta.json lists no files", {}
        try:
            present = {os.path.relpath(p, where) for p in _all_files(where)} - {"meta.json"}
            if present != set(stored):
                return None, f"files added or missing ({sorted(present ^ set(stored))[:3]})", {}
            for rel, digest in stored.items():
                if sha256(os.path.join(where, rel)) != digest:
                    return None, f"{rel} does not hash to the sha256 recorded when it was written (corrupt)", {}
            arrays = {}
            if "arrays.npz" in stored:
                with np.load(os.path.join(where, "arrays.npz"), allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            return None, f"arrays.npz unreadable ({e})", {}
        except OSError as e:   # removed or replaced by another process meanwhile: recomputed, left where it is
            return None, f"{TRANSIENT}{os.path.relpath(e.filename or where, where)}: {_describe(e)})", {}
        files = os.path.join(where, "files")
        return Entry(arrays, meta.get("values") or {}, files if os.path.isdir(files) else None), "", meta

    def _store(self, where: str, ident: dict, entry: Entry, seconds: float) -> str:
        """Writes ``entry`` at ``where`` (aside, then renamed); the reason it was not stored, or ""."""
        size = _payload_bytes(entry)
        if size > self.max_entry_bytes:
            return f"{size / 2**20:.0f} MiB, over the {self.max_entry_bytes / 2**20:.0f} MiB bound of one entry"
        free = shutil.disk_usage(self.root).free
        if size * 1.1 + (256 << 20) > free:
            return f"{free / 2**20:.0f} MiB free on the cache's disk"
        self._evict(size)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # Another process that computed this key first keeps its entry (it may be reading its files): the
        # same numbers by the key, so this copy is discarded rather than swapped in under that reader.
        with atomic_dir(where, "tf cache entry", keep_existing=True) as tmp:
            if entry.arrays:
                with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
                    np.savez(f, **{k: np.asarray(v) for k, v in entry.arrays.items()})
            if entry.dir:
                shutil.copytree(entry.dir, os.path.join(tmp, "files"))
            files = {os.path.relpath(p, tmp): sha256(p) for p in _all_files(tmp)}
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:   # NaN losses stay NaN
                json.dump({"ident": ident, "files": files, "values": entry.values, "created": created,
                           "seconds": round(seconds, 2)}, f, indent=1)
        return ""

    def _evict(self, incoming: int) -> None:
        """Removes the least recently used entries until ``incoming`` more bytes fit under ``max_bytes``."""
        entries = []
        for meta in _all_files(self.root):
            if os.path.basename(meta) == "meta.json" and ".tmp" not in meta:
                folder = os.path.dirname(meta)
                entries.append((os.path.getmtime(meta), folder, sum(os.path.getsize(p) for p in _all_files(folder))))
        total = sum(e[2] for e in entries)
        for _, folder, size in sorted(entries):
            if total + incoming <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as f:   # one short line: appends do not interleave
                f.write(json.dumps(event.to_dict()) + "\n")

    # ------------------------------------------------------------------ the one entry point
    def fetch(self, kind: str, parts: Mapping, compute: Callable[[str], Entry], code: Iterable = ()) -> Entry:
        """The stored entry for (kind, parts, code, environment) if it is intact, else ``compute(dir)``
        (``dir``: an empty folder for the files it writes), stored for next time."""
        key, ident = self.key(kind, parts, code)
        patched = patched_reference()
        if patched:   # a planted fault in the reference: computed, never answered from or stored in the cache
            return self._uncached(kind, key, compute, f"the reference is patched in this process ({patched})")
        where = self.path(kind, key)
        entry, why, meta = self._load(where, ident)
        if entry is not None:
            with contextlib.suppress(OSError):   # recently used: evicted last (gone meanwhile: nothing to mark)
                os.utime(os.path.join(where, "meta.json"))
            self._record(Event(kind, key, "hit", created=str(meta.get("created", "")),
                               seconds=float(meta.get("seconds") or 0)))
            return entry
        if why and not why.startswith(TRANSIENT):   # damaged or foreign: removed (a transient one may be whole)
            shutil.rmtree(where, ignore_errors=True)
        # The computation's own folder: unique, since another process may compute the same key at once.
        os.makedirs(os.path.join(self.root, ".scratch"), exist_ok=True)
        scratch = tempfile.mkdtemp(dir=os.path.join(self.root, ".scratch"), prefix=f"{key}.")
        remove_on_signal(scratch)
        keep_scratch = False
        try:
            t0 = time.time()
            entry = compute(scratch)
            seconds = time.time() - t0
            entry.values = json.loads(json.dumps(entry.values))   # as a hit returns them (tuples -> lists)
            has_files = bool(os.listdir(scratch))
            entry.dir = scratch if has_files else None
            not_stored = self._store(where, ident, entry, seconds)
            if not_stored:
                keep_scratch = has_files   # the caller's files: removed when this process ends
                if keep_scratch:
                    _LEFT.append(scratch)
            else:
                entry.dir = os.path.join(where, "files") if has_files else None
        finally:
            if not keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
                forget_on_signal(scratch)
        self._record(Event(kind, key, "not stored" if not_stored else ("recomputed" if why else "computed"),
                           why=not_stored or why, seconds=round(seconds, 2)))
        return entry

    def _uncached(self, kind: str, key: str, compute: Callable[[str], Entry], why: str) -> Entry:
        t0 = time.time()
        entry = compute_here(kind, compute)
        self._record(Event(kind, key, "not stored", why=why, seconds=round(time.time() - t0, 2)))
        return entry

def patched_reference() -> Optional[str]:
    """A function or method of the reference (``reference_tf``, Google's ``bert`` package) replaced in this
    process by one defined in a test or a script, e.g. a fault planted in the official graph: what it computes
    is not the reference the key names. Returns what is replaced, or None."""
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "reference_tf" or name.startswith(("reference_tf.", "bert."))):
            continue
        for attr, obj in list(vars(mod).items()):
            inner = list(vars(obj).items()) if isinstance(obj, type) and obj.__module__ == name else []
            for label, o in [(attr, obj)] + [(f"{attr}.{k}", v) for k, v in inner]:
                where = getattr(o, "__module__", None)
                if isinstance(where, str) and _foreign(where):
                    return f"{name}.{label} is {where}.{getattr(o, '__qualname__', type(o).__name__)}"
    return None


def _foreign(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module == "__main__" or last.startswith("test_") or last == "conftest" or module.startswith("tests.")


_LEFT: list[str] = []
atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _LEFT])
_ACTIVE: dict = {}


def summary(events: Iterable[dict], root: Optional[str]) -> dict:
    """The provenance of a run's reference results: how many came from the cache, from when, and what was
    recomputed and why (``events``: ``Event.to_dict()`` rows, e.g. read back from the log file)."""
    events = list(events)
    count = {o: sum(e["outcome"] == o for e in events) for o in ("hit", "computed", "recomputed", "not stored")}
    hits = [e for e in events if e["outcome"] == "hit"]
    return {"dir": root, "used": bool(root), "runs": len(events), **{k.replace(" ", "_"): v for k, v in count.items()},
            "seconds_saved": round(sum(e["seconds"] for e in hits), 1),
            "oldest_entry_used": min((e["created"] for e in hits), default=None),
            "entries_used": sorted({f"{e['kind']}/{e['key'][:16]}" for e in hits}),
            "rejected": [{"entry": f"{e['kind']}/{e['key'][:16]}", "why": e["why"]}
                         for e in events if e["outcome"] == "recomputed"],
            "not_stored": [{"entry": f"{e['kind']}/{e['key'][:16]}", "why": e["why"]}
                           for e in events if e["outcome"] == "not stored"]}


def read_log(path: str) -> list[dict]:
    """The events a log file holds (a torn last line, from a killed process, is skipped)."""
    rows = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and {"kind", "key", "outcome"} <= set(row):
                    rows.append({"why": "", "created": "", "seconds": 0.0, **row})
    return rows


def reference(kind: str, parts: Mapping, compute: Callable[[str], Entry], code: Iterable = (),
              out_dir: Optional[str] = None) -> Entry:
    """``compute`` through the active cache (``RefCache.active()``), or directly when there is none: its
    files then go to ``out_dir`` (a temporary folder removed at exit when not given)."""
    cache = RefCache.active()
    if cache is not None:
        return cache.fetch(kind, parts, compute, code)
    return compute_here(kind, compute, out_dir)


def compute_here(kind: str, compute: Callable[[str], Entry], out_dir: Optional[str] = None) -> Entry:
    """``compute`` with no cache: its files go to ``out_dir`` (a temporary folder removed at exit when not
    given), its values through JSON as a cached entry's are."""
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix=f"bert-parity-{kind}-")
        _LEFT.append(out_dir)
        remove_on_signal(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    entry = compute(out_dir)
    entry.values = json.loads(json.dumps(entry.values))   # the same types a cached run returns
    entry.dir = out_dir if os.listdir(out_dir) else None
    return entry

def provenance() -> dict:
    """For a report's environment: whether its TF results came from the cache, which, and from when."""
    cache = RefCache.active()
    if cache is None:
        return {"used": False, "dir": None}
    events = read_log(cache.log_file) if cache.log_file else [e.to_dict() for e in cache.events]
    return summary(events, cache.root)


def describe_provenance(p: Optional[dict]) -> str:
    """One line of it, for report.md and the HTML page."""
    if not p or not p.get("used"):
        return "TF reference: computed in this run (no TF reference cache)"
    line = (f"TF reference cache {p['dir']}: {p['hit']} of {p['runs']} reference runs reused"
            + (f" (entries written from {p['oldest_entry_used']}; {p['seconds_saved']:.0f} s of TF not rerun)"
               if p["hit"] else "")
            + f", {p['computed']} computed, {p['recomputed']} recomputed")
    if p["rejected"]:
        line += " (" + "; ".join(f"{r['entry']}: {r['why']}" for r in p["rejected"][:3]) + ")"
    if p["not_stored"]:
        line += f", {len(p['not_stored'])} not stored ({p['not_stored'][0]['why']})"
    return line
