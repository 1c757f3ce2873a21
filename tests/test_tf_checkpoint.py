"""bert_torch.tf_checkpoint against real TensorFlow (TF-using tests skip if it is missing)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re
import struct
import subprocess
import sys
import tempfile
import time

import google_crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bert_torch import tf_checkpoint as tfc
from bert_torch.tf_checkpoint import (CheckpointError, checkpoint_prefix, list_variables,
                                      read_checkpoint, write_checkpoint)

DATA = ".data-00000-of-00001"
ALL_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
              np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def assert_same(got, want):
    """Bit-identical: same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def random_array(rng, shape, dtype):
    """Arbitrary bit patterns for floats (NaNs, infs, -0.0 included), 0/1 for bool."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def bert_like(rng, layers=12):
    """BERT-style variable names (370 with 12 layers and Adam slots), small random tensors."""
    t = {"bert/embeddings/word_embeddings": random_array(rng, (30, 8), np.float32),
         "bert/embeddings/LayerNorm/gamma": random_array(rng, (8,), np.float32),
         "global_step": np.int64(123456789012)}
    for i in range(layers):
        for sub in ("attention/self/query", "attention/self/key", "attention/output/dense",
                    "intermediate/dense", "output/dense"):
            t[f"bert/encoder/layer_{i}/{sub}/kernel"] = random_array(rng, (8, 8), np.float32)
            t[f"bert/encoder/layer_{i}/{sub}/bias"] = random_array(rng, (8,), np.float32)
            for slot in ("adam_m", "adam_v"):
                t[f"bert/encoder/layer_{i}/{sub}/kernel/{slot}"] = random_array(rng, (8, 8), np.float32)
                t[f"bert/encoder/layer_{i}/{sub}/bias/{slot}"] = random_array(rng, (8,), np.float32)
    t.update({"mixed/half": random_array(rng, (3, 5), np.float16),
              "mixed/double": random_array(rng, (2, 2, 2), np.float64),
              "mixed/int32": random_array(rng, (7,), np.int32),
              "mixed/int64": random_array(rng, (2, 3), np.int64),
              "mixed/bool": random_array(rng, (4, 1), np.bool_),
              "mixed/scalar": np.float32(-0.0),
              "mixed/empty": np.zeros((0, 3), np.float32)})
    return t


def index_data_blocks(index_path):
    """Number of data blocks in a table, via its index block."""
    data = open(index_path, "rb").read()
    footer = data[-48:]
    _, pos = tfc._varint(footer, tfc._varint(footer, 0)[1])
    return len(list(tfc._block_entries(tfc._read_block(data, footer[pos:]))))


def tf_save_v2(tf, prefix, tensors, slices=None):
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[(slices or {}).get(n, "") for n in names],
                      tensors=[tf.constant(tensors[n]) for n in names])


def tf_contents(tf, prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)}


# --- TF writes, we read --------------------------------------------------------------------

def test_reads_what_tf_saver_writes(tf, tmp_path):
    tensors = bert_like(np.random.default_rng(0))
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        for name, value in tensors.items():
            tf1.get_variable(name, initializer=tf.constant(value), use_resource=False)
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            saved = saver.save(sess, str(tmp_path / "model.ckpt"))
    assert len(tensors) > 300
    prefix = checkpoint_prefix(str(tmp_path))  # via the `checkpoint` state file TF wrote
    assert prefix == saved
    listed = list_variables(prefix)
    assert [(n, list(s)) for n, (s, _) in listed.items()] == tf.train.list_variables(prefix)
    dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    assert {n: d for n, (_, d) in listed.items()} == {n: d.name for n, d in dtypes.items()}
    got = read_checkpoint(prefix)
    assert list(got) == sorted(tensors)
    for name, value in tensors.items():
        assert_same(got[name], value)
    subset = read_checkpoint(saved + ".meta", ["global_step", "mixed/half"])
    assert list(subset) == ["global_step", "mixed/half"]
    assert_same(subset["global_step"], np.int64(123456789012))


def test_multi_block_index_is_byte_identical_to_tf(tf, tmp_path):
    """3000 long names make TF split the index over several 256 KiB blocks; our writer must
    produce the same bytes (so the block layout, separators and protos all match TF's)."""
    rng = np.random.default_rng(1)
    tensors = {f"bert/encoder/layer_{i}/attention/self/query/kernel{'_' * int(rng.integers(0, 250))}":
               random_array(rng, (2, 3), ALL_DTYPES[i % len(ALL_DTYPES)]) for i in range(3000)}
    tensors.update({"global_step": np.int64(7), "empty": np.zeros((4, 0), np.float16),
                    "\xff\u00e9/\U0001f600": np.float64(1.5)})
    tf_save_v2(tf, str(tmp_path / "tf" / "m"), tensors)
    write_checkpoint(str(tmp_path / "ours" / "m"), tensors)
    assert index_data_blocks(str(tmp_path / "tf" / "m.index")) >= 3
    for suffix in (".index", DATA):
        assert (tmp_path / "tf" / f"m{suffix}").read_bytes() == (tmp_path / "ours" / f"m{suffix}").read_bytes()
    got = read_checkpoint(str(tmp_path / "tf" / "m"))
    assert list(got) == sorted(tensors, key=str.encode)
    for name, value in tensors.items():
        assert_same(got[name], value)
    assert [(n, list(s)) for n, (s, _) in list_variables(str(tmp_path / "tf" / "m")).items()] == \
        tf.train.list_variables(str(tmp_path / "tf" / "m"))


def test_tf_only_dtypes_and_partitioned_variables_are_reported(tf, tmp_path):
    prefix = str(tmp_path / "m")
    names = ["part", "part", "bf16", "text", "ok"]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=["4 2 0,2:-", "4 2 2,2:-", "", "", ""],
                      tensors=[tf.ones((2, 2)), tf.zeros((2, 2)), tf.constant([1.5], tf.bfloat16),
                               tf.constant(["ab", "c"]), tf.constant([3], tf.int32)])
    # Like tf.train.list_variables: the partitioned variable once, with its full shape.
    assert list_variables(prefix) == {"bf16": ((1,), "bfloat16"), "ok": ((1,), "int32"),
                                      "part": ((4, 2), "float32"), "text": ((2,), "string")}
    assert sorted(n for n, _ in tf.train.list_variables(prefix)) == ["bf16", "ok", "part", "text"]
    assert_same(read_checkpoint(prefix, ["ok"])["ok"], np.array([3], np.int32))
    for name, message in [("part", "variable part is partitioned into 2 slices"),
                          ("bf16", "variable bf16 has unsupported dtype bfloat16"),
                          ("text", "variable text has unsupported dtype string")]:
        with pytest.raises(CheckpointError, match=f"m.index: {message}"):
            read_checkpoint(prefix, [name])
    with pytest.raises(CheckpointError, match="bf16 has unsupported dtype"):  # checked before reading
        read_checkpoint(prefix)


# --- we write, TF reads --------------------------------------------------------------------

def test_tf_reads_what_we_write(tf, tmp_path):
    rng = np.random.default_rng(2)
    tensors = bert_like(rng)
    tensors.update({f"dtype/{np.dtype(d).name}": random_array(rng, (3, 2), d) for d in ALL_DTYPES})
    tensors.update({"unicode/ünï/😀": np.arange(3, dtype=np.int64),
                    "fortran": np.asfortranarray(rng.standard_normal((3, 4))),  # non-C input
                    "big_endian": np.arange(5, dtype=">i4")})
    prefix = str(tmp_path / "out" / "bert_model.ckpt")
    write_checkpoint(prefix, tensors)
    assert tf.train.latest_checkpoint(str(tmp_path / "out")) == prefix
    assert tf.train.list_variables(prefix) == sorted((n, list(np.shape(v))) for n, v in tensors.items())
    got = tf_contents(tf, prefix)
    for name, value in tensors.items():
        want = np.asarray(value)
        assert_same(got[name], want.astype(want.dtype.newbyteorder("=")))


def test_tf_saver_restores_what_we_write(tf, tmp_path):
    tensors = bert_like(np.random.default_rng(3), layers=2)
    prefix = str(tmp_path / "bert_model.ckpt")
    write_checkpoint(prefix, tensors)
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        variables = {n: tf1.get_variable(n, initializer=tf.zeros_like(v), use_resource=False)
                     for n, v in tensors.items()}
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
            restored = sess.run(variables)
    for name, value in tensors.items():
        assert_same(np.asarray(restored[name]), value)


# --- snappy-compressed index blocks (TF never writes them, but its reader accepts them) ----

def snappy_compress(data: bytes) -> bytes:
    """Greedy LZ77 snappy encoder for tests. Copies rotate through all three encodings
    (all are valid for any offset they can express), so TF's decoder checks each kind."""
    out, last, pos, lit, kinds = bytearray(tfc._put_varint(len(data))), {}, 0, 0, 0

    def literal(chunk):
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        else:
            width = (n.bit_length() + 7) // 8
            out.extend(bytes([(59 + width) << 2]) + n.to_bytes(width, "little"))
        out.extend(chunk)

    while pos + 4 <= len(data):
        cand, last[data[pos:pos + 4]] = last.get(data[pos:pos + 4]), pos
        if cand is None:
            pos += 1
            continue
        length = 4
        while pos + length < len(data) and length < 64 and data[cand + length] == data[pos + length]:
            length += 1
        if lit < pos:
            literal(data[lit:pos])
        offset, kinds = pos - cand, kinds + 1
        if kinds % 3 == 0 and length <= 11 and offset < 2048:
            out.extend([1 | (length - 4) << 2 | (offset >> 8) << 5, offset & 0xFF])
        elif kinds % 3 == 1 and offset < 65536:
            out.extend(bytes([2 | (length - 1) << 2]) + offset.to_bytes(2, "little"))
        else:
            out.extend(bytes([3 | (length - 1) << 2]) + offset.to_bytes(4, "little"))
        pos = lit = pos + length
    if lit < len(data):
        literal(data[lit:])
    return bytes(out)


def snappy_table(items, per_block=40):
    """A table like TF's, but with every data block and the index block snappy-compressed."""
    out = bytearray()

    def put(builder, kind):
        raw = builder.finish()
        body = snappy_compress(raw) if kind else raw
        handle = tfc._put_varint(len(out)) + tfc._put_varint(len(body))
        trailer = bytes([kind]) + struct.pack("<I", tfc._mask(google_crc32c.value(body + bytes([kind]))))
        out.extend(body + trailer)
        return handle

    index = tfc._BlockBuilder(1)
    for i in range(0, len(items), per_block):
        block = tfc._BlockBuilder(16)
        for key, value in items[i:i + per_block]:
            block.add(key, value)
        index.add(block.last, put(block, 1))  # a block's last key is a valid index key
    handles = put(tfc._BlockBuilder(1), 0) + put(index, 1)
    return bytes(out) + handles.ljust(40, b"\0") + struct.pack("<Q", tfc._MAGIC)


def test_snappy_compressed_index_is_read_like_tf_does(tf, tmp_path):
    tensors = bert_like(np.random.default_rng(4))
    prefix = str(tmp_path / "m")
    write_checkpoint(prefix, tensors)
    compressed = snappy_table(tfc._read_table(prefix + ".index"))
    assert len(compressed) < 0.7 * os.path.getsize(prefix + ".index")  # copies really happened
    with open(prefix + ".index", "wb") as f:
        f.write(compressed)
    from_tf, ours = tf_contents(tf, prefix), read_checkpoint(prefix)
    assert list(ours) == sorted(tensors)
    for name, value in tensors.items():
        assert_same(ours[name], value)
        assert_same(from_tf[name], value)


def test_snappy_decodes_streams_tf_compressed(tf, tmp_path):
    """TF's own snappy encoder (via SNAPPY TFRecords: frames of u32be length + snappy)."""
    payload = b"".join(b"bert/encoder/layer_%d/attention " % i for i in range(3000)) + bytes(range(256)) * 300
    path = str(tmp_path / "r.tfrecord")
    dataset = tf.data.Dataset.from_tensors(tf.constant(payload))
    tf.raw_ops.DatasetToTFRecord(input_dataset=dataset._variant_tensor, filename=path,
                                 compression_type="SNAPPY")
    raw, pos, decoded = open(path, "rb").read(), 0, b""
    while pos < len(raw):
        (n,) = struct.unpack_from(">I", raw, pos)
        decoded += tfc._snappy_decompress(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    assert len(raw) < len(payload) / 4
    assert decoded[12:-4] == payload  # TFRecord framing: u64 length, u32 crc, data, u32 crc


@pytest.mark.parametrize("stream, expected", [
    (b"\x0a\x00a\x15\x01", b"a" * 10),  # literal, then an overlapping copy-1 (run length)
    (b"\x0c\x0cabcd\x1e\x04\x00", b"abcd" * 3),  # copy-2
    (b"\x09\x08xyz\x17\x03\x00\x00\x00", b"xyz" * 3),  # copy-4 with length 6
    (b"\x47\xf0\x46" + bytes(range(71)), bytes(range(71))),  # literal with 1 length byte
    # 256- and 18-byte literals, then a copy-1 whose 11-bit offset (274) needs the tag's bits
    (tfc._put_varint(283) + b"\xf0\xff" + bytes(range(256)) + b"\xf0\x11" + bytes(18) + b"\x35\x12",
     bytes(range(256)) + bytes(18) + bytes(range(9))),
])
def test_snappy_hand_made_streams(stream, expected):
    assert tfc._snappy_decompress(stream) == expected


@pytest.mark.parametrize("stream, message", [
    (b"\x05\x00a\x15\x02", "corrupt snappy copy"),  # offset beyond the output
    (b"\x05\x00a\x15\x00", "corrupt snappy copy"),  # offset 0
    (b"\x05\x10ab", "literal runs past"),
    (b"\x07\x00a\x15\x01", "decodes to 10 bytes"),
])
def test_snappy_corrupt_streams(stream, message):
    with pytest.raises(ValueError, match=message):
        tfc._snappy_decompress(stream)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 40))
def test_snappy_round_trips_test_encoder(data, repeat):
    data = data * (repeat if len(data) < 100 else 1)
    assert tfc._snappy_decompress(snappy_compress(data)) == data


# --- ours -> ours --------------------------------------------------------------------------

names = st.text(st.one_of(st.sampled_from("/_ab0"), st.characters(blacklist_categories=("Cs",))),
                min_size=1, max_size=20).filter(lambda s: s[0] != "\0")
arrays = st.sampled_from(ALL_DTYPES).flatmap(lambda d: hnp.arrays(
    d, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names, arrays, max_size=6))
def test_round_trip(tensors):
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "sub", "x.ckpt")
        write_checkpoint(prefix, tensors)
        assert checkpoint_prefix(os.path.dirname(prefix)) == prefix
        assert list_variables(prefix) == {n: (tensors[n].shape, tensors[n].dtype.name) for n in sorted(tensors)}
        got = read_checkpoint(prefix)
        assert list(got) == sorted(tensors)
        for name, value in tensors.items():
            assert_same(got[name], value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.binary(max_size=12).map(lambda k: k.replace(b"\x01", b"\xff")),
                          st.binary(max_size=30)), max_size=60))
def test_table_blocks_and_separators(monkeypatch, items):
    """With tiny blocks: every key/value survives, and each index key k satisfies
    last key of its block <= k < first key of the next block (what TF's Seek relies on)."""
    monkeypatch.setattr(tfc, "_BLOCK_SIZE", 64)
    items = sorted(dict(items).items())
    table = tfc._build_table(items)
    with tempfile.NamedTemporaryFile() as f:
        f.write(table)
        f.flush()
        assert tfc._read_table(f.name) == items
    footer = table[-48:]
    _, pos = tfc._varint(footer, tfc._varint(footer, 0)[1])
    blocks = [(k, list(tfc._block_entries(tfc._read_block(table, h))))
              for k, h in tfc._block_entries(tfc._read_block(table, footer[pos:]))]
    for i, (index_key, entries) in enumerate(blocks):
        assert entries and entries[-1][0] <= index_key
        if i + 1 < len(blocks):
            assert index_key < blocks[i + 1][1][0][0]


# --- errors --------------------------------------------------------------------------------

def one_line_error(match, fn, *args):
    with pytest.raises(CheckpointError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def ckpt(tmp_path):
    prefix = str(tmp_path / "bert_model.ckpt")
    tensors = {"bert/embeddings/word_embeddings": np.ones((4, 3), np.float32),
               "bert/encoder/layer_1/output/dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
               "global_step": np.int64(5)}
    write_checkpoint(prefix, tensors)
    return prefix, tensors


def test_truncated_data_file(ckpt):
    prefix, tensors = ckpt
    # Data order is key order: embeddings [0, 48), kernel [48, 96), global_step [96, 104).
    assert os.path.getsize(prefix + DATA) == 104
    os.truncate(prefix + DATA, 101)
    one_line_error(r"bert_model.ckpt.data-00000-of-00001 is truncated: variable global_step needs "
                   r"bytes \[96, 104\) but the file has 101$", read_checkpoint, prefix)
    os.truncate(prefix + DATA, 50)
    one_line_error(r"data-00000-of-00001 is truncated: variable bert/encoder/layer_1/output/dense/kernel "
                   r"needs bytes \[48, 96\) but the file has 50$", read_checkpoint, prefix)
    assert_same(read_checkpoint(prefix, ["bert/embeddings/word_embeddings"])["bert/embeddings/word_embeddings"],
                tensors["bert/embeddings/word_embeddings"])


def test_flipped_byte_fails_crc(ckpt):
    prefix, _ = ckpt
    with open(prefix + DATA, "r+b") as f:
        f.seek(60)
        byte = f.read(1)
        f.seek(60)
        f.write(bytes([byte[0] ^ 0x10]))
    one_line_error(r"data-00000-of-00001 is corrupt: crc32c mismatch for variable "
                   r"bert/encoder/layer_1/output/dense/kernel \(index says 0x", read_checkpoint, prefix)
    assert list(read_checkpoint(prefix, "global_step")) == ["global_step"]  # other tensors still read


def test_garbage_and_corrupt_index(ckpt):
    prefix, _ = ckpt
    good = open(prefix + ".index", "rb").read()
    with open(prefix + ".index", "wb") as f:
        f.write(b"this is not an sstable" * 10)
    one_line_error(r"bert_model.ckpt.index is not a TF checkpoint index \(bad magic\)", read_checkpoint, prefix)
    one_line_error("bad magic", list_variables, prefix)
    with open(prefix + ".index", "wb") as f:
        f.write(b"x")
    one_line_error("bad magic", list_variables, prefix)
    with open(prefix + ".index", "wb") as f:  # valid footer, damaged data block
        f.write(good[:20] + bytes([good[20] ^ 1]) + good[21:])
    one_line_error(r"bert_model.ckpt.index is a corrupt TF checkpoint index: block checksum mismatch",
                   list_variables, prefix)


def test_missing_files(ckpt, tmp_path):
    prefix, _ = ckpt
    os.remove(prefix + DATA)
    one_line_error(r"cannot open .*bert_model.ckpt.data-00000-of-00001 \(needed for variable "
                   r"bert/embeddings/word_embeddings\): No such file", read_checkpoint, prefix)
    assert list_variables(prefix)  # the index alone is enough
    nope = re.escape(str(tmp_path / "nope"))
    one_line_error(rf"no TF checkpoint at {nope}: {nope}.index does not exist$", read_checkpoint, str(tmp_path / "nope"))
    one_line_error(r"has no variable 'bert/pooler', 'x'", read_checkpoint, prefix, ["bert/pooler", "x"])
    (tmp_path / "empty").mkdir()
    one_line_error(rf"no TF checkpoint at {re.escape(str(tmp_path / 'empty'))}: ", checkpoint_prefix,
                   str(tmp_path / "empty"))


def test_bad_tensors_for_write(tmp_path):
    prefix = str(tmp_path / "m")
    for tensors, match in [({1: np.zeros(2)}, "variable names must be non-empty str.*got 1$"),
                           ({"": np.zeros(2)}, "got ''"),
                           ({"\0x": np.zeros(2)}, "not starting with NUL"),
                           ({"bad\ud800": np.zeros(2)}, "cannot save variable 'bad\\\\ud800'"),
                           ({"a/b": np.array(["s"])}, "variable a/b has unsupported dtype <U1"),
                           ({"a/o": np.array([None])}, "variable a/o has unsupported dtype object"),
                           ({"a/r": [[1], [2, 3]]}, "cannot save variable 'a/r'")]:
        one_line_error(match, write_checkpoint, prefix, tensors)
    assert not os.path.exists(prefix + ".index")


# --- checkpoint_prefix ---------------------------------------------------------------------

def test_checkpoint_prefix_resolution(tmp_path):
    a, b = str(tmp_path / "model.ckpt-100"), str(tmp_path / "model.ckpt-200")
    write_checkpoint(a, {"v": np.zeros(1)})
    (tmp_path / "checkpoint").unlink()
    assert checkpoint_prefix(str(tmp_path)) == a  # the single *.index
    write_checkpoint(b, {"v": np.ones(1)})  # the state file names b
    assert checkpoint_prefix(str(tmp_path)) == b
    for path in (b, b + ".index", b + DATA, b + ".meta"):
        assert checkpoint_prefix(path) == b
    # An absolute path written on another machine: retried inside this directory.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run/model.ckpt-100"\n')
    assert checkpoint_prefix(str(tmp_path)) == a
    # A copied directory whose state file still names the (existing) original: the copy wins.
    copy = tmp_path / "copy"
    write_checkpoint(str(copy / "model.ckpt-100"), {"v": np.full(1, 7.0)})
    (copy / "checkpoint").write_text(f'model_checkpoint_path: "{a}"\n')
    assert checkpoint_prefix(str(copy)) == str(copy / "model.ckpt-100")
    (tmp_path / "checkpoint").unlink()
    one_line_error(r"several TF checkpoints in .* \(model.ckpt-100, model.ckpt-200\); pass a prefix",
                   checkpoint_prefix, str(tmp_path))
    write_checkpoint(str(tmp_path / "bert_model.ckpt"), {"v": np.zeros(1)})
    (tmp_path / "checkpoint").unlink()
    assert checkpoint_prefix(str(tmp_path)) == str(tmp_path / "bert_model.ckpt")


def test_state_file_escapes_odd_basenames(tf, tmp_path):
    prefix = str(tmp_path / 'we"ird\\ ckpt é')
    write_checkpoint(prefix, {"v": np.arange(3)})
    assert checkpoint_prefix(str(tmp_path)) == prefix
    assert tf.train.get_checkpoint_state(str(tmp_path)).model_checkpoint_path == prefix
    # latest_checkpoint globs for PREFIX.index, where a backslash is an escape; avoid it there.
    prefix = str(tmp_path / 'we"ird ckpt é')
    write_checkpoint(prefix, {"v": np.arange(3)})
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefix


# --- scale and isolation -------------------------------------------------------------------

def test_100mb_tensor(tmp_path):
    big = np.random.default_rng(5).standard_normal((25_000_000,), dtype=np.float32)  # 100 MB
    prefix = str(tmp_path / "big")
    start = time.perf_counter()
    write_checkpoint(prefix, {"big": big, "small": np.ones(3, np.float32)})
    written = time.perf_counter()
    got = read_checkpoint(prefix)["big"]
    print(f"100 MB: write {written - start:.2f}s, read {time.perf_counter() - written:.2f}s")
    assert got.flags.writeable and got.flags.c_contiguous
    assert_same(got, big)


def test_tf_accepts_crc_of_tensor_hashed_in_slices(tf, tmp_path):
    big = np.random.default_rng(6).standard_normal((4 * tfc._CRC_CHUNK + 123,), dtype=np.float32)
    write_checkpoint(str(tmp_path / "big"), {"big": big})
    assert_same(tf.train.load_checkpoint(str(tmp_path / "big")).get_tensor("big"), big)  # TF checks crc


def test_module_never_imports_tensorflow(tmp_path):
    code = ("import sys, numpy as np; from bert_torch import tf_checkpoint as t; "
            f"t.write_checkpoint({str(tmp_path / 'm')!r}, {{'v': np.ones(2)}}); "
            f"t.read_checkpoint({str(tmp_path)!r}); "
            "assert not any(m.split('.')[0] == 'tensorflow' for m in sys.modules), 'tensorflow imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
