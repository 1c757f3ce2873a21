"""The converter streams (issue #13 item 5): its memory above the interpreter's baseline stays within 1.5x the
checkpoint, in every direction, because tensors go from reader to writer one at a time (``LazyTensor``).

Memory is a property, not a timing: a ~56 MB checkpoint is converted in a child process, which reports its own
peak RSS (VmHWM) after its baseline (``import bert_torch.convert`` and torch's first model, built on the
meta device: a fixed cost, whatever the model's size) and after the conversions. Holding the model whole even
once more than streaming needs (the old converter held it 3x) breaks the bound; streaming needs the largest
tensor (12 MB here) and its transpose.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import bert_torch
from bert_torch import BertConfig
from bert_torch._io import LazyTensor, save_safetensors
from bert_torch.convert import file_to_tf_name, main
from bert_torch.tf_checkpoint import _load_index, read_checkpoint, write_checkpoint
from bert_torch.weights import expected_shapes

# ~56 MB of float32: big enough that one extra copy of it dwarfs allocator noise (a converter holding the model
# twice needs 112 MB above the baseline, past the bound of 1.5 x 56 + 16), small enough for `make check`.
MEDIUM = BertConfig(vocab_size=8192, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)
SLACK = 16 << 20   # allocator and interpreter noise

CHILD = r"""
import json, os, resource, sys
def peak():   # bytes
    # Linux: VmHWM, this process's own peak. Its ru_maxrss would not do: it starts at the RSS of the parent
    # that forked it (the maximum is carried across exec), here a pytest process holding the checkpoint.
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # macOS: bytes, and a fresh process's own
import bert_torch.convert as convert
from bert_torch import BertConfig
from bert_torch.weights import expected_shapes
expected_shapes(BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                           intermediate_size=4))   # torch's first module: a fixed cost, part of the baseline
out = {"baseline": peak()}
for step, argv in json.loads(sys.argv[1]):
    assert convert.main(argv) == 0, step
    out[step] = peak()
print(json.dumps(out))
"""


def random_checkpoint(directory, config: BertConfig, head="pretraining") -> int:
    """An official-layout checkpoint of random float32 bit patterns (NaNs too: conversion moves bytes);
    returns its data file's size."""
    rng = np.random.default_rng(0)
    tf_vars = {}
    for name, shape in expected_shapes(config, head).items():
        tf_name, transpose = file_to_tf_name(name)
        shape = shape[::-1] if transpose else shape
        tf_vars[tf_name] = np.frombuffer(rng.bytes(4 * int(np.prod(shape))), np.float32).reshape(shape)
    os.makedirs(directory, exist_ok=True)
    write_checkpoint(os.path.join(directory, "bert_model.ckpt"), tf_vars)
    config.to_json_file(os.path.join(directory, "bert_config.json"))
    return os.path.getsize(os.path.join(directory, "bert_model.ckpt.data-00000-of-00001"))


@pytest.mark.heavy
def test_conversions_stream_within_one_and_a_half_checkpoints(tmp_path):
    ck = str(tmp_path / "ck")
    size = random_checkpoint(ck, MEDIUM)
    assert size > 50 << 20
    cfg = os.path.join(ck, "bert_config.json")
    steps = [
        ("tf -> safetensors", ["--tf-checkpoint", ck, "--output", str(tmp_path / "w.safetensors")]),
        ("safetensors -> tf", ["--to-tf", "--torch-weights", str(tmp_path / "w.safetensors"), "--bert-config", cfg,
                               "--output", str(tmp_path / "back" / "bert_model.ckpt")]),
        ("tf -> hf dir", ["--tf-checkpoint", ck, "--body-only", "--output-format", "hf",
                          "--output", str(tmp_path / "hf")]),
        ("hf dir -> tf", ["--to-tf", "--torch-weights", str(tmp_path / "hf"),
                          "--output", str(tmp_path / "from_hf" / "bert_model.ckpt")]),
    ]
    here = os.path.dirname(os.path.dirname(bert_torch.__file__))   # the child converts with this bert_torch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(steps)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    peaks = json.loads(run.stdout.splitlines()[-1])
    for step, _ in steps:
        above = peaks[step] - peaks["baseline"]
        assert above <= 1.5 * size + SLACK, (f"{step}: peak RSS {above / 2**20:.0f} MB above the baseline, "
                                             f"checkpoint {size / 2**20:.0f} MB")
    # Streamed, and still exact: the round trips give the checkpoint's bytes back.
    original = read_checkpoint(os.path.join(ck, "bert_model.ckpt"))
    for prefix in ("back", "from_hf"):
        got = read_checkpoint(str(tmp_path / prefix / "bert_model.ckpt"))
        expected = {k: v for k, v in original.items() if prefix == "back" or k.startswith("bert/")}
        assert got.keys() == expected.keys()
        assert all(got[k].tobytes() == expected[k].tobytes() for k in got)


def test_streamed_safetensors_are_the_bytes_safetensors_writes(tmp_path):
    """save_safetensors writes header then tensors itself; a reader sees what safetensors.numpy.save gives:
    the same bytes (tensor order: dtype descending, then name; header padded to 8), lazy or not."""
    from safetensors.numpy import save
    rng = np.random.default_rng(1)
    dtypes = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32, np.float32,
              np.float64, np.int64, np.uint64]
    for trial in range(40):
        tensors = {}
        for i in range(int(rng.integers(0, 7))):
            dt = np.dtype(dtypes[rng.integers(len(dtypes))])
            dt = dt.newbyteorder(">") if rng.random() < 0.2 else dt
            shape = tuple(int(d) for d in rng.integers(0, 4, rng.integers(0, 4)))
            raw = rng.integers(0, 256, int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
            tensors[f"t{trial}.{i}é{'x' * int(rng.integers(0, 9))}"] = (
                raw.astype(bool).reshape(shape) if dt == np.bool_ else raw.view(dt).reshape(shape))
        metadata = {"format": "pt"} if trial % 2 else None
        want = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
        for lazy in (False, True):
            path = str(tmp_path / f"{trial}{lazy}.safetensors")
            given = {k: LazyTensor.wrap(np.ascontiguousarray(v)) for k, v in tensors.items()} if lazy else tensors
            save_safetensors(given, path, metadata=metadata)
            with open(path, "rb") as f:
                assert f.read() == want, (trial, lazy)


def test_metadata_keeps_its_order(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_safetensors({"a": np.zeros(2, np.float32)}, path, metadata={"z": "1", "format": "pt", "a": "2"})
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        assert list(json.loads(f.read(n))["__metadata__"]) == ["z", "format", "a"]


@pytest.mark.parametrize("where", ["mapped", "optimizer slot"])
def test_a_corrupt_tensor_fails_the_streamed_conversion_whole(tmp_path, capsys, where):
    """A crc mismatch found while streaming (a mapped tensor) or before (a skipped optimizer slot, still
    checksummed): exit 2, one line naming the variable, nothing at the final name."""
    rng = np.random.default_rng(2)
    tf_vars = {file_to_tf_name(n)[0]: rng.standard_normal(s[::-1] if file_to_tf_name(n)[1] else s, dtype=np.float32)
               for n, s in expected_shapes(TINY).items()}
    victim = "bert/pooler/dense/kernel"
    if where == "optimizer slot":
        tf_vars[victim + "/adam_m"] = np.ones((16, 16), np.float32)
        victim += "/adam_m"
    prefix = str(tmp_path / "ck" / "bert_model.ckpt")
    write_checkpoint(prefix, tf_vars)
    TINY.to_json_file(str(tmp_path / "ck" / "bert_config.json"))
    entry = _load_index(prefix)[1][victim]
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.seek(entry.offset + 5)
        byte = f.read(1)
        f.seek(entry.offset + 5)
        f.write(bytes([byte[0] ^ 0x10]))
    out = tmp_path / "out.safetensors"
    assert main(["--tf-checkpoint", str(tmp_path / "ck"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "crc32c mismatch" in err[0] and victim in err[0], err
    assert not out.exists() and os.listdir(tmp_path) == ["ck"]   # no temporary left behind either
