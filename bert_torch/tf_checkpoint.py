"""Read and write TensorFlow V2 checkpoints (TensorBundle) without importing TensorFlow.

A checkpoint PREFIX is ``PREFIX.index``, an SSTable (TF's copy of LevelDB's table format)
mapping "" to a BundleHeaderProto and each variable name to a BundleEntryProto, plus
``PREFIX.data-SSSSS-of-NNNNN`` shards holding the raw little-endian C-order tensor bytes.
Protobufs are parsed and written by hand so that only numpy and google_crc32c are needed.
The writer reproduces TF's own output byte for byte (for tensors added in sorted order).
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import glob
import math
import os
import re
import stat
import struct
from typing import Iterable, Mapping

import google_crc32c
import numpy as np

from ._io import LazyTensor, atomic_outputs, decode, read_bytes, regular_file

_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # metaindex and index BlockHandles, zero-padded to 40 bytes, then the magic
_BLOCK_SIZE = 262144  # TF's table::Options default; TF never compresses checkpoint indexes
_RESTART_INTERVAL = 16
_CRC_CHUNK = 1 << 22  # google_crc32c takes only bytes, so big tensors are hashed in slices
_MAX_STATE_BYTES = 1 << 20  # a `checkpoint` state file is a few lines; a bigger one is not read
# TF DataType enum -> numpy dtype, for the types TF stores as raw element bytes.
_NUMPY = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          8: np.complex64, 9: np.int64, 10: np.bool_, 17: np.uint16, 18: np.complex128,
          19: np.float16, 22: np.uint32, 23: np.uint64}
_ENUM = {np.dtype(t): e for e, t in _NUMPY.items()}
_TF_ONLY = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}
_Entry = collections.namedtuple("_Entry", "dtype shape shard offset size crc slices")


class CheckpointError(ValueError):
    """One-line message naming the file and, where relevant, the variable at fault."""


def _mask(crc: int) -> int:
    """TF stores CRCs masked (rotated and offset) so that CRCs of CRC-bearing data stay distinct."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(buf: memoryview) -> int:
    crc = 0
    for i in range(0, len(buf), _CRC_CHUNK):
        crc = google_crc32c.extend(crc, buf[i:i + _CRC_CHUNK].tobytes())
    return crc


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``; return (value, next position)."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte, pos = buf[pos], pos + 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
    raise ValueError("varint too long")


def _put_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


# --- protobuf wire format -----------------------------------------------------------------

def _fields(buf: bytes):
    """Yield (field number, value) of a protobuf message; value is an int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):  # fixed64 / fixed32
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf")
        yield key >> 3, value


def _int_field(num: int, value: int) -> bytes:
    # proto3 omits zero scalars; doing the same keeps our index byte-identical to TF's.
    return _put_varint(num << 3) + _put_varint(value) if value else b""


def _message_field(num: int, payload: bytes) -> bytes:
    return _put_varint(num << 3 | 2) + _put_varint(len(payload)) + payload


def _parse_entry(value: bytes) -> _Entry:
    """BundleEntryProto: 1 dtype, 2 shape, 3 shard_id, 4 offset, 5 size, 6 crc32c, 7 slices."""
    f = {1: 0, 2: b"", 3: 0, 4: 0, 5: 0, 6: 0}
    slices = 0
    for num, v in _fields(value):
        slices += num == 7
        f[num] = v
    # TensorShapeProto: repeated Dim dim = 2 { int64 size = 1 }.
    shape = tuple(dict(_fields(d)).get(1, 0) for n, d in _fields(f[2]) if n == 2)
    return _Entry(f[1], shape, f[3], f[4], f[5], f[6], slices)


def _encode_entry(dtype: int, shape: tuple, offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(_message_field(2, _int_field(1, d)) for d in shape)
    return (_int_field(1, dtype) + _message_field(2, dims) + _int_field(4, offset)
            + _int_field(5, size) + (b"\x35" + struct.pack("<I", crc) if crc else b""))


# --- SSTable (tensorflow/tsl/lib/io/table) ------------------------------------------------

def _snappy_decompress(src: bytes) -> bytes:
    """Decode a raw snappy block (TF's table reader accepts snappy-compressed blocks)."""
    size, pos = _varint(src, 0)
    out = bytearray()
    while pos < len(src):
        tag, pos = src[pos], pos + 1
        if tag & 3 == 0:  # literal; lengths above 60 are spelled out in 1-4 extra bytes
            length = tag >> 2
            if length >= 60:
                length, pos = int.from_bytes(src[pos:pos + length - 59], "little"), pos + length - 59
            if pos + length + 1 > len(src):
                raise ValueError("snappy literal runs past the end of the block")
            out += src[pos:pos + length + 1]
            pos += length + 1
            continue
        width = (0, 1, 2, 4)[tag & 3]  # copies carry 1, 2 or 4 offset bytes
        offset, pos = int.from_bytes(src[pos:pos + width], "little"), pos + width
        if width == 1:  # 11-bit offset (3 bits in the tag), length 4..11
            length, offset = 4 + (tag >> 2 & 7), (tag >> 5) << 8 | offset
        else:
            length = (tag >> 2) + 1
        if pos > len(src) or not 0 < offset <= len(out):
            raise ValueError("corrupt snappy copy")
        # A copy may overlap its own output (offset < length): it repeats the last `offset` bytes.
        start = len(out) - offset
        out += (out[start:start + length] * (length // offset + 1))[:length]
    if len(out) != size:
        raise ValueError(f"snappy block decodes to {len(out)} bytes, its header says {size}")
    return bytes(out)


def _read_block(data: bytes, handle: bytes) -> bytes:
    """Contents of the block a BlockHandle (varint offset, varint size) points at, checked
    against its trailer: 1 compression-type byte, then the masked crc32c of contents+type."""
    offset, pos = _varint(handle, 0)
    end = offset + _varint(handle, pos)[0]
    if end + 5 > len(data):
        raise ValueError(f"block at offset {offset} runs past the end of the file")
    if _mask(google_crc32c.value(data[offset:end + 1])) != struct.unpack_from("<I", data, end + 1)[0]:
        raise ValueError(f"block checksum mismatch at offset {offset}")
    if data[end] not in (0, 1):
        raise ValueError(f"unknown block compression type {data[end]}")
    return _snappy_decompress(data[offset:end]) if data[end] else data[offset:end]


def _block_entries(block: bytes):
    """Yield the (key, value) pairs of a block: entries of (varint shared, varint unshared,
    varint value length, key suffix, value), then uint32 restart offsets and their count."""
    if len(block) < 4:
        raise ValueError("block too short")
    limit = len(block) - 4 - 4 * struct.unpack_from("<I", block, len(block) - 4)[0]
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise ValueError("corrupt block entry")
        key = key[:shared] + block[pos:pos + unshared]
        yield key, block[pos + unshared:pos + unshared + vlen]
        pos += unshared + vlen


def _read_table(path: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of the table at ``path``, in key order."""
    data = read_bytes(path, "TF checkpoint index")   # a regular file, read once, bounded by its size
    if len(data) < _FOOTER_LEN or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise CheckpointError(f"{path} is not a TF checkpoint index (bad magic)")
    try:
        footer = data[-_FOOTER_LEN:]
        _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the (empty) metaindex handle
        return [item for _, handle in _block_entries(_read_block(data, footer[pos:]))
                for item in _block_entries(_read_block(data, handle))]
    except (ValueError, IndexError, struct.error) as e:
        raise CheckpointError(f"{path} is a corrupt TF checkpoint index: {e}") from None


class _BlockBuilder:
    """TF's BlockBuilder: each key is stored as a suffix of its predecessor's, except at
    restart points (every ``interval`` entries) where it is stored whole."""

    def __init__(self, interval: int):
        self.interval, self.counter, self.buf, self.restarts, self.last = interval, 0, bytearray(), [0], b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            shared = len(os.path.commonprefix([self.last, key]))
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
        self.buf += key[shared:] + value
        self.last, self.counter = key, self.counter + 1

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        n = len(self.restarts)
        return bytes(self.buf) + struct.pack(f"<{n + 1}I", *self.restarts, n)


def _build_table(items: list[tuple[bytes, bytes]]) -> bytes:
    """Serialize sorted (key, value) pairs exactly as TF's TableBuilder does (uncompressed)."""
    out = bytearray()

    def write_block(builder: _BlockBuilder) -> bytes:
        contents = builder.finish() + b"\0"  # compression type "none", covered by the crc
        handle = _put_varint(len(out)) + _put_varint(len(contents) - 1)
        out.extend(contents + struct.pack("<I", _mask(google_crc32c.value(contents))))
        return handle

    # A full block is indexed by a short key between its last key and the next block's first.
    index, block, full = _BlockBuilder(1), _BlockBuilder(_RESTART_INTERVAL), None
    for key, value in items:
        if full:
            index.add(_separator(full.last, key), write_block(full))
            full = None
        block.add(key, value)
        if block.size() >= _BLOCK_SIZE:
            full, block = block, _BlockBuilder(_RESTART_INTERVAL)
    last = full or block
    if last.buf:
        index.add(_successor(last.last), write_block(last))
    handles = write_block(_BlockBuilder(1)) + write_block(index)  # metaindex (empty), index
    return bytes(out) + handles.ljust(40, b"\0") + struct.pack("<Q", _MAGIC)


def _separator(start: bytes, limit: bytes) -> bytes:
    """TF's FindShortestSeparator: a short key k with start <= k < limit."""
    n = len(os.path.commonprefix([start, limit]))
    if n < min(len(start), len(limit)) and start[n] < 0xFF and start[n] + 1 < limit[n]:
        return start[:n] + bytes([start[n] + 1])
    return start


def _successor(key: bytes) -> bytes:
    """TF's FindShortSuccessor: a short key >= key."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


# --- checkpoints --------------------------------------------------------------------------

def checkpoint_prefix(path: str) -> str:
    """Resolve a checkpoint directory, prefix, or one of its files to the prefix."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _prefix_in_dir(path)
    prefix = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", path)
    if not os.path.lexists(prefix + ".index"):   # anything else there is named by its reader (_read_table)
        raise CheckpointError(f"no TF checkpoint at {path}: {prefix}.index does not exist")
    return prefix


def _prefix_in_dir(directory: str) -> str:
    candidates, outside = [], None
    state = os.path.join(directory, "checkpoint")
    with contextlib.suppress(OSError):   # none there, or a folder of that name: no state file
        if not stat.S_ISDIR(os.stat(state).st_mode):
            regular_file(state, "checkpoint state file")   # a FIFO or device is refused, never opened
    with contextlib.suppress(OSError, ValueError):  # an unreadable state file is just ignored
        text = decode(read_bytes(state, "checkpoint state file", _MAX_STATE_BYTES), state, "checkpoint state file")
        m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
        if m:  # a text-format string: C escapes, octal for non-ASCII bytes
            named = codecs.escape_decode(m.group(1).encode())[0].decode()
            # Relative paths are relative to the directory. An absolute one (tf.train.Saver writes
            # them) is used by its base name only: a copied or moved checkpoint directory must
            # resolve to its own files, never silently to the original it was copied from.
            if not os.path.isabs(named):
                inside = os.path.normpath(os.path.join(directory, named))
                if os.path.commonpath([os.path.abspath(inside), os.path.abspath(directory)]) != \
                        os.path.abspath(directory):
                    # Reads stay where they were pointed: never follow a state file out of the directory.
                    outside = (f"{os.path.join(directory, 'checkpoint')} names {named!r}, outside {directory}; "
                               f"pass that prefix explicitly to read it")
                candidates.append(inside)
            candidates.append(os.path.join(directory, os.path.basename(named)))
    if outside:
        raise CheckpointError(outside)
    candidates.append(os.path.join(directory, "bert_model.ckpt"))
    for prefix in candidates:
        if os.path.isfile(prefix + ".index"):
            return prefix
    found = [p[:-len(".index")] for p in sorted(glob.glob(os.path.join(glob.escape(directory), "*.index")))]
    if len(found) > 1:
        raise CheckpointError(f"several TF checkpoints in {directory} "
                              f"({', '.join(map(os.path.basename, found))}); pass a prefix")
    if not found:
        raise CheckpointError(f"no TF checkpoint at {directory}: no usable `checkpoint` state file "
                              "and no *.index file")
    return found[0]


def _load_index(prefix: str) -> tuple[int, dict[str, _Entry]]:
    """Parse PREFIX.index into (number of data shards, {name: entry} in key order)."""
    path = prefix + ".index"
    items = _read_table(path)
    try:
        if not items or items[0][0] != b"":
            raise ValueError("no bundle header entry")
        header = dict(_fields(items[0][1]))  # 1 num_shards, 2 endianness, 3 VersionDef
        if header.get(2, 0):
            raise ValueError("big-endian checkpoints are not supported")
        if dict(_fields(header.get(3, b""))).get(2, 0) > 1:
            raise ValueError("its min_consumer version is newer than TensorBundle version 1")
        # Slices of partitioned variables have binary (OrderedCode) keys starting with \0;
        # the variable itself is listed under its own name, with `slices` set.
        entries = {k.decode("utf-8"): _parse_entry(v) for k, v in items[1:] if not k.startswith(b"\0")}
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"{path} is a corrupt TF checkpoint index: {e}") from None
    return header.get(1, 1), entries


def _dtype_name(enum: int) -> str:
    return np.dtype(_NUMPY[enum]).name if enum in _NUMPY else _TF_ONLY.get(enum, f"DataType {enum}")


def list_variables(prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map each variable name to (shape, numpy dtype name), sorted by name; reads only the index.

    Dtypes numpy lacks are given by their TF names ("bfloat16", "string", ...)."""
    _, entries = _load_index(checkpoint_prefix(prefix))
    return {name: (e.shape, _dtype_name(e.dtype)) for name, e in entries.items()}


def open_checkpoint(prefix: str, names: Iterable[str] | None = None) -> dict[str, LazyTensor]:
    """All (or the named) variables as ``LazyTensor``s: every check of ``read_checkpoint`` that the index
    and the data files' sizes allow is made now, before any tensor is read; each tensor is read (and its
    crc32c verified) when it is used, and not kept. A converter streams a checkpoint through this."""
    prefix, num_shards, entries, wanted = _checked_entries(prefix, names)
    return {name: LazyTensor(entries[name].shape, _NUMPY[entries[name].dtype],
                             functools.partial(_load_tensor, _data_path(prefix, entries[name], num_shards), name,
                                               entries[name]))
            for name in wanted}


def read_checkpoint(prefix: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read all (or the named) variables as writable arrays, verifying sizes and crc32c."""
    prefix, num_shards, entries, wanted = _checked_entries(prefix, names)
    arrays = {}
    with contextlib.ExitStack() as files:
        opened = {}
        for name in sorted(wanted, key=lambda n: (entries[n].shard, entries[n].offset)):
            e = entries[name]
            path = _data_path(prefix, e, num_shards)
            if path not in opened:
                opened[path] = files.enter_context(_open_data(path, name))
            arrays[name] = _read_tensor(opened[path], path, name, e)
    return {name: arrays[name] for name in wanted}


def _data_path(prefix: str, e: _Entry, num_shards: int) -> str:
    return f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}"


def _checked_entries(prefix: str, names: Iterable[str] | None) -> tuple[str, int, dict[str, _Entry], list[str]]:
    """(prefix, number of shards, index entries, the wanted names), every wanted entry checked against
    what can be read and against the size of its data file: what we cannot read is refused up front."""
    prefix = checkpoint_prefix(prefix)
    num_shards, entries = _load_index(prefix)
    if isinstance(names, str):  # one name, not an iterable of its characters
        names = [names]
    wanted = list(entries) if names is None else list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise CheckpointError(f"{prefix}.index has no variable {', '.join(map(repr, missing))}")
    for name in wanted:  # reject what we cannot read before reading anything
        e = entries[name]
        if e.slices:
            raise CheckpointError(f"{prefix}.index: variable {name} is partitioned into {e.slices} "
                                  "slices, which is not supported")
        if e.dtype not in _NUMPY:
            raise CheckpointError(f"{prefix}.index: variable {name} has unsupported dtype {_dtype_name(e.dtype)}")
        if any(d < 0 for d in e.shape) or not 0 <= e.shard < num_shards:
            raise CheckpointError(f"{prefix}.index: variable {name} has shape {e.shape} in shard {e.shard} of "
                                  f"{num_shards}: not a valid entry")
        if e.size != math.prod(e.shape) * np.dtype(_NUMPY[e.dtype]).itemsize:
            raise CheckpointError(f"{prefix}.index: variable {name} is stored as {e.size} bytes, "
                                  f"which does not fit shape {e.shape} of {_dtype_name(e.dtype)}")
        # The index's claims against the data file's real size, before a byte is allocated for them.
        path = _data_path(prefix, e, num_shards)
        size = _file_size(path, name)
        if e.offset + e.size > size:
            raise CheckpointError(f"{path} is truncated: variable {name} needs bytes "
                                  f"[{e.offset}, {e.offset + e.size}) but the file has {size}")
    return prefix, num_shards, entries, wanted


def _open_data(path: str, name: str):
    regular_file(path, "TF checkpoint data file", missing_ok=True)   # a missing one is named below
    try:
        return open(path, "rb")
    except OSError as err:
        raise CheckpointError(f"cannot open {path} (needed for variable {name}): {err.strerror}") from None


def _load_tensor(path: str, name: str, e: _Entry) -> np.ndarray:
    with _open_data(path, name) as f:
        return _read_tensor(f, path, name, e)


def _file_size(path: str, name: str) -> int:
    st = regular_file(path, "TF checkpoint data file", missing_ok=True)
    if st is None:
        raise CheckpointError(f"cannot open {path} (needed for variable {name}): No such file or directory")
    return st.st_size


def _read_tensor(f, path: str, name: str, e: _Entry) -> np.ndarray:
    array = np.empty(e.shape, _NUMPY[e.dtype])
    buf = memoryview(array.reshape(-1).view(np.uint8))
    file_size = os.fstat(f.fileno()).st_size
    f.seek(e.offset)
    if e.offset + e.size > file_size or f.readinto(buf) != e.size:
        raise CheckpointError(f"{path} is truncated: variable {name} needs bytes "
                              f"[{e.offset}, {e.offset + e.size}) but the file has {file_size}")
    crc = _mask(_crc32c(buf))
    if crc != e.crc:
        raise CheckpointError(f"{path} is corrupt: crc32c mismatch for variable {name} "
                              f"(index says {e.crc:#010x}, data gives {crc:#010x})")
    return array


def _little_c(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, array.dtype.newbyteorder("<"), order="C")


def write_checkpoint(prefix: str, tensors: Mapping[str, np.ndarray], extra_files: Mapping[str, bytes] = None) -> None:
    """Write PREFIX.index, PREFIX.data-00000-of-00001 and a `checkpoint` state file naming
    PREFIX in its directory (so tf.train.latest_checkpoint finds it), plus ``extra_files``
    (path -> contents, e.g. bert_config.json): all of them or, on any failure or signal, none
    (temporary names renamed when every file is complete; the index last)."""
    prefix = os.fspath(prefix)
    arrays = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name[0] == "\0":  # \0... keys hold slices
            raise CheckpointError(f"{prefix}: variable names must be non-empty str not starting "
                                  f"with NUL, got {name!r}")
        try:
            # A LazyTensor is read when its turn to be written comes: one tensor in memory at a time.
            key, array = name.encode("utf-8"), value if isinstance(value, LazyTensor) else np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:  # surrogates, ragged lists, odd tensors
            raise CheckpointError(f"{prefix}: cannot save variable {name!r}: {e}") from None
        enum = _ENUM.get(array.dtype.newbyteorder("="))
        if enum is None:
            raise CheckpointError(f"{prefix}: variable {name} has unsupported dtype {array.dtype}")
        arrays.append((key, enum, array if isinstance(array, LazyTensor) else _little_c(array)))
    arrays.sort(key=lambda t: t[0])  # the table needs bytewise key order; TF's data order too
    items, offset = [(b"", _int_field(1, 1) + _message_field(3, _int_field(1, 1)))], 0  # 1 shard, LE, v1
    directory = os.path.dirname(prefix) or "."
    # The state file is text-format; octal escapes keep any basename a valid string.
    base = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03o}"
                   for b in os.path.basename(prefix).encode("utf-8"))
    extra = dict(extra_files or {})
    finals = [*extra, os.path.join(directory, "checkpoint"), f"{prefix}.data-00000-of-00001", prefix + ".index"]
    with atomic_outputs(finals, "TF checkpoint") as tmps:
        for tmp, data in zip(tmps, extra.values()):
            with open(tmp, "wb") as f:
                f.write(data)
        *_, state, data_tmp, index_tmp = tmps
        with open(data_tmp, "wb") as f:
            for key, enum, array in arrays:
                if isinstance(array, LazyTensor):
                    array = _little_c(array.load())
                buf = memoryview(array.reshape(-1).view(np.uint8))
                f.write(buf)
                items.append((key, _encode_entry(enum, array.shape, offset, len(buf), _mask(_crc32c(buf)))))
                offset += len(buf)
                del array, buf   # a LazyTensor's array is freed before the next one is read
        with open(index_tmp, "wb") as f:
            f.write(_build_table(items))
        with open(state, "wb") as f:
            f.write(f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n'.encode())
