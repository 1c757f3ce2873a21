"""The TF reference cache (parity/sides/refcache.py): a result is reused only when everything that determines it
is the same and the stored entry is intact; anything else is recomputed, and every use is reported."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.sides import refcache as refcache
from parity.sides.refcache import CacheError, Entry, File, RefCache


class Counted:
    """A stand-in computation that counts its runs and writes a file, as a training run saves a checkpoint."""

    def __init__(self, scale: float = 1.0):
        self.calls, self.scale = 0, scale

    def __call__(self, out_dir: str) -> Entry:
        self.calls += 1
        with open(os.path.join(out_dir, "model.ckpt.index"), "wb") as f:
            f.write(b"checkpoint bytes %d" % self.calls)
        return Entry(arrays={"logits": np.arange(6, dtype=np.float32).reshape(2, 3) * self.scale},
                     values={"losses": [0.7, float("nan")], "steps": (1, 2)})


PARTS = {"inputs": np.array([[101, 7, 102]], np.int32), "lr": 5e-5, "seed": 0}


def fetch(cache, compute, parts=PARTS):
    return cache.fetch("training", parts, compute, code=(Counted,))


def test_second_fetch_is_a_hit_with_the_same_arrays_values_and_files(tmp_path):
    cache, compute = RefCache(str(tmp_path / "c")), Counted()
    first = fetch(cache, compute)
    second = fetch(cache, compute)
    assert compute.calls == 1
    assert [e.outcome for e in cache.events] == ["computed", "hit"]
    np.testing.assert_array_equal(first.arrays["logits"], second.arrays["logits"])
    assert second.arrays["logits"].dtype == np.float32
    assert json.dumps(first.values) == json.dumps(second.values)   # NaN kept; the tuple a list both times
    assert first.values["steps"] == [1, 2]
    with open(os.path.join(second.dir, "model.ckpt.index"), "rb") as f:
        assert f.read() == b"checkpoint bytes 1"


@pytest.mark.parametrize("change", ["array", "float", "extra key", "code"])
def test_anything_that_determines_the_result_changed_is_a_miss(tmp_path, change):
    cache, compute = RefCache(str(tmp_path / "c")), Counted()
    fetch(cache, compute)
    parts = dict(PARTS)
    code = (Counted,)
    if change == "array":
        parts["inputs"] = np.array([[101, 8, 102]], np.int32)
    elif change == "float":
        parts["lr"] = 5.0000001e-5
    elif change == "extra key":
        parts["dropout"] = 0.1
    else:
        code = (Counted, fetch)
    cache.fetch("training", parts, compute, code=code)
    assert compute.calls == 2 and cache.events[-1].outcome == "computed"


def test_other_versions_or_another_machine_are_a_miss(tmp_path, monkeypatch):
    cache, compute = RefCache(str(tmp_path / "c")), Counted()
    fetch(cache, compute)
    real = refcache.fingerprint()
    for changed in ({**real, "versions": {**real["versions"], "tensorflow": "2.99.0"}},
                    {**real, "reference_code_sha256": "0" * 64},
                    {**real, "machine": {**real["machine"], "isa": ["avx512f"]}},
                    {**real, "env": {**real["env"], "TF_ENABLE_ONEDNN_OPTS": "0"}}):
        monkeypatch.setattr(refcache, "fingerprint", lambda c=changed: c)
        fetch(cache, compute)
    assert compute.calls == 5
    monkeypatch.setattr(refcache, "fingerprint", lambda: real)
    fetch(cache, compute)
    assert compute.calls == 5 and cache.events[-1].outcome == "hit"


def entry_dir(cache: RefCache) -> str:
    key, _ = cache.key("training", PARTS, (Counted,))
    return cache.path("training", key)


def corrupt_arrays(where):
    path = os.path.join(where, "arrays.npz")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def corrupt_file(where):
    with open(os.path.join(where, "files", "model.ckpt.index"), "ab") as f:
        f.write(b"!")


def truncate_meta(where):
    path = os.path.join(where, "meta.json")
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])


def other_version_meta(where):
    """An entry written by another TensorFlow, moved to this key's folder: its meta.json says so."""
    path = os.path.join(where, "meta.json")
    meta = json.load(open(path))
    meta["ident"]["environment"]["versions"]["tensorflow"] = "2.15.0"
    json.dump(meta, open(path, "w"))


def extra_file(where):
    open(os.path.join(where, "files", "stale.data-00000-of-00001"), "wb").write(b"x")


def missing_arrays(where):
    os.remove(os.path.join(where, "arrays.npz"))


@pytest.mark.parametrize("damage,why", [(corrupt_arrays, "corrupt"), (corrupt_file, "corrupt"),
                                        (truncate_meta, "unreadable meta.json"),
                                        (other_version_meta, "differs in: environment"),
                                        (extra_file, "added or missing"), (missing_arrays, "added or missing")])
def test_a_damaged_or_foreign_entry_is_recomputed_never_used(tmp_path, damage, why):
    cache, compute = RefCache(str(tmp_path / "c")), Counted()
    fetch(cache, compute)
    damage(entry_dir(cache))
    again = fetch(cache, Counted(scale=1.0))   # a fresh computation: what the entry should have held
    event = cache.events[-1]
    assert event.outcome == "recomputed" and why in event.why, event
    np.testing.assert_array_equal(again.arrays["logits"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert fetch(cache, compute).arrays is not None and cache.events[-1].outcome == "hit"   # rewritten intact


def test_an_entry_over_the_bound_is_used_not_stored_and_its_files_stay_for_the_caller(tmp_path):
    cache, compute = RefCache(str(tmp_path / "c"), max_entry_bytes=16), Counted()
    got = fetch(cache, compute)
    assert cache.events[-1].outcome == "not stored" and "bound" in cache.events[-1].why
    assert os.path.isfile(os.path.join(got.dir, "model.ckpt.index"))
    fetch(cache, compute)
    assert compute.calls == 2


def test_least_recently_used_entries_are_evicted_to_stay_under_the_bound(tmp_path):
    cache = RefCache(str(tmp_path / "c"))
    for seed in range(3):
        fetch(cache, Counted(), {**PARTS, "seed": seed})
    one = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(entry_dir(cache)) for f in fs)
    os.utime(os.path.join(cache.path("training", cache.key("training", {**PARTS, "seed": 0}, (Counted,))[0]),
                          "meta.json"), (1, 1))   # seed 0 used longest ago
    cache.max_bytes = int(2.5 * one)   # three entries do not fit with a fourth: the oldest goes
    fetch(cache, Counted(), {**PARTS, "seed": 3})
    kept = {s: os.path.isdir(cache.path("training", cache.key("training", {**PARTS, "seed": s}, (Counted,))[0]))
            for s in range(4)}
    assert kept == {0: False, 1: True, 2: True, 3: True}


def test_events_go_to_the_log_and_the_summary_says_what_was_reused(tmp_path):
    log = str(tmp_path / "uses.jsonl")
    cache, compute = RefCache(str(tmp_path / "c"), log_file=log), Counted()
    fetch(cache, compute)
    fetch(cache, compute)
    corrupt_arrays(entry_dir(cache))
    fetch(cache, compute)
    with open(log, "a") as f:
        f.write('{"kind": "taps", "key"')   # a line torn by a killed process
    s = refcache.summary(refcache.read_log(log), cache.root)
    assert (s["runs"], s["hit"], s["computed"], s["recomputed"]) == (3, 1, 1, 1)
    assert s["used"] and s["oldest_entry_used"] and s["rejected"][0]["why"].endswith("(corrupt)")


def test_a_cache_path_that_is_a_file_is_one_line_of_bad_input(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError, match="not a folder"):
        RefCache(str(tmp_path / "f"))


def test_files_are_keyed_by_content_not_path(tmp_path):
    cache = RefCache(str(tmp_path / "c"))
    a, b = tmp_path / "a.index", tmp_path / "b" / "a.index"
    b.parent.mkdir()
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert cache.key("k", {"ckpt": File(str(a))})[0] == cache.key("k", {"ckpt": File(str(b))})[0]
    b.write_bytes(b"other")
    assert cache.key("k", {"ckpt": File(str(a))})[0] != cache.key("k", {"ckpt": File(str(b))})[0]


arrays = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int32, np.int64]),
                    hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
                    elements=st.integers(-3, 3))


@settings(max_examples=200, deadline=None)
@given(arrays, arrays)
def test_two_arrays_share_a_key_exactly_when_dtype_shape_and_bytes_agree(a, b):
    cache = RefCache.__new__(RefCache)   # key() needs no folder
    same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert (cache.key("k", {"x": a})[0] == cache.key("k", {"x": b})[0]) == same


def test_a_patched_reference_is_computed_and_never_meets_the_cache(tmp_path, monkeypatch):
    """A function of the reference replaced by a test's (a planted fault) is not the reference the key names:
    its results are neither answered from the cache nor stored in it."""
    import sys
    import types
    official = types.ModuleType("bert.stand_in_modeling")

    def gelu(x):
        return x
    gelu.__module__ = official.__name__   # defined "there", as Google's own functions are
    official.gelu = gelu
    monkeypatch.setitem(sys.modules, official.__name__, official)
    cache, compute = RefCache(str(tmp_path / "c")), Counted()
    fetch(cache, compute)
    assert refcache.patched_reference() is None
    monkeypatch.setattr(official, "gelu", lambda x: 2 * x)   # defined in this test module
    fetch(cache, compute)
    fetch(cache, compute)
    assert compute.calls == 3
    assert [e.outcome for e in cache.events] == ["computed", "not stored", "not stored"]
    assert "bert.stand_in_modeling.gelu" in cache.events[-1].why and "test_refcache" in cache.events[-1].why
    monkeypatch.undo()
    fetch(cache, compute)
    assert compute.calls == 3 and cache.events[-1].outcome == "hit"   # the clean entry, untouched


def test_a_key_computed_by_two_processes_at_once_keeps_the_entry_already_in_use(tmp_path):
    """Two xdist workers (or two reports) may miss on one key together. The second to finish must not
    replace the first one's entry, whose files the first may be reading: it keeps that entry, and both
    get the same results."""
    root = str(tmp_path / "c")
    ours, theirs = RefCache(root), RefCache(root)
    held = []

    def compute_while_the_other_stores(out_dir):
        held.append(fetch(theirs, Counted()))   # the other process finishes first and starts using its entry
        return Counted()(out_dir)

    got = fetch(ours, compute_while_the_other_stores)
    (first,) = held
    assert [e.outcome for e in theirs.events] == ["computed"] and ours.events[-1].outcome == "computed"
    index = os.path.join(first.dir, "model.ckpt.index")
    assert os.path.isfile(index) and open(index, "rb").read() == b"checkpoint bytes 1"
    assert os.path.samefile(got.dir, first.dir)   # one entry, the first one, untouched
    created = json.load(open(os.path.join(entry_dir(ours), "meta.json")))["created"]
    assert theirs.events[-1].created == "" and created   # written once, by the first
    np.testing.assert_array_equal(got.arrays["logits"], first.arrays["logits"])
    assert fetch(RefCache(root), Counted()).arrays is not None   # a third process: a hit on it
    assert not [p for p in os.listdir(os.path.dirname(entry_dir(ours))) if p.endswith(".tmp")]   # nothing aside left


def test_a_file_that_vanishes_while_a_hit_is_verified_is_a_miss_not_a_crash(tmp_path, monkeypatch):
    """Another process may remove an entry while this one hashes it: that is a reason to recompute, and
    the entry is not deleted on that account (it may be whole, and in use)."""
    cache = RefCache(str(tmp_path / "c"))
    fetch(cache, Counted())
    real, calls = refcache.sha256, []

    def vanished_once(path):   # the first file checked is gone; the rest (and the new entry's) hash as usual
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path)

    monkeypatch.setattr(refcache, "sha256", vanished_once)
    where = entry_dir(cache)
    inode = os.stat(where).st_ino
    again = fetch(cache, Counted())
    assert cache.events[-1].outcome == "recomputed" and "No such file or directory" in cache.events[-1].why
    np.testing.assert_array_equal(again.arrays["logits"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert os.stat(where).st_ino == inode   # the entry was not deleted on that account (nor replaced)
    assert fetch(cache, Counted()).arrays is not None and cache.events[-1].outcome == "hit"
