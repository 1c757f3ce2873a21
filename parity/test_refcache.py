"""The TF reference cache against the real official graph: a reused run gives the live run's numbers bit for
bit, a damaged entry is recomputed, a fault planted in the official graph never meets the cache, and every
report says what it reused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest


from parity import frontdoor
from parity.release import gate as release
from parity.sides import refcache
from parity.finetune.features import mrpc_batches, take
from parity.finetune.training import tf_gradients
from parity.inputs import SAMPLE


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """A fresh cache folder in $BERT_PARITY_TF_CACHE; ``restart()`` forgets the process's cache object (a new run)."""
    root = str(tmp_path / "tf-cache")
    monkeypatch.setenv(refcache.CACHE_ENV, root)
    monkeypatch.setenv(refcache.LOG_ENV, "")
    monkeypatch.setenv(refcache.OWNER_ENV, "")
    monkeypatch.setattr(refcache, "_ACTIVE", {})
    return root


def compare(minilm, out, expect: int = 0) -> dict:
    code = frontdoor.main(["compare", "--tf-checkpoint", minilm["dir"], "--torch-weights", minilm["torch_weights"],
                     "--report-dir", str(out), "--batch-size", "2", "--seq-len", "32"])
    report = json.loads((out / "report.json").read_text())
    assert code == expect and report["verdict"] == ("pass" if expect == 0 else "fail")
    return report


def numbers(report: dict) -> list:
    return [{k: v for k, v in t.items() if k != "seconds"} for t in report["taps"]]


def damage_one_entry(root: str, kind: str) -> str:
    entries = sorted(os.path.join(d) for d, _, fs in os.walk(os.path.join(root, kind)) if "arrays.npz" in fs)
    path = os.path.join(entries[0], "arrays.npz")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    return os.path.basename(entries[0])


@pytest.mark.heavy
def test_compare_reuses_the_official_run_bit_for_bit_and_says_so(minilm, cache_env, tmp_path, monkeypatch):
    first = compare(minilm, tmp_path / "first")
    p = first["environment"]["tf_cache"]
    assert p["used"] and p["runs"] >= 1 and p["computed"] == p["runs"] and p["hit"] == 0

    monkeypatch.setattr(refcache, "_ACTIVE", {})
    second = compare(minilm, tmp_path / "second")
    p = second["environment"]["tf_cache"]
    assert p["hit"] == p["runs"] == first["environment"]["tf_cache"]["runs"] and p["computed"] == 0
    assert numbers(second) == numbers(first)

    # A fault planted in the official graph (the sigmoid GELU for the tanh one) is computed, not answered
    # from the clean entries, and not stored over them.
    import tensorflow as tf
    from bert import modeling as official
    monkeypatch.setattr(refcache, "_ACTIVE", {})
    with monkeypatch.context() as m:
        m.setattr(official, "gelu", lambda x: x * tf.sigmoid(1.702 * x))
        planted = compare(minilm, tmp_path / "planted", expect=1)
    p = planted["environment"]["tf_cache"]
    assert p["hit"] == 0 and len(p["not_stored"]) == p["runs"] >= 1
    assert "bert.modeling.gelu" in p["not_stored"][0]["why"]
    monkeypatch.setattr(refcache, "_ACTIVE", {})
    assert numbers(compare(minilm, tmp_path / "after")) == numbers(first)

    key = damage_one_entry(cache_env, "taps")
    monkeypatch.setattr(refcache, "_ACTIVE", {})
    third = compare(minilm, tmp_path / "third")
    p = third["environment"]["tf_cache"]
    assert p["recomputed"] == 1 and p["rejected"][0]["entry"].endswith(key[:16]) and "corrupt" in p["rejected"][0]["why"]
    assert numbers(third) == numbers(first)


@pytest.mark.heavy
def test_cached_gradients_equal_a_live_run_bit_for_bit(minilm, cache_env, monkeypatch):
    batch = take(mrpc_batches(None, minilm["vocab"], "dev", 32, sample_tsv=SAMPLE), slice(0, 4))
    monkeypatch.setenv(refcache.CACHE_ENV, "")
    live = tf_gradients(minilm, batch)
    monkeypatch.setenv(refcache.CACHE_ENV, cache_env)
    stored = tf_gradients(minilm, batch)
    reused = tf_gradients(minilm, batch)
    for got in (stored, reused):
        assert got[1] == live[1]
        for a, b in ((got[0], live[0]), (got[2], live[2])):
            assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    tf_gradients(minilm, dict(batch, label_ids=1 - batch["label_ids"]))   # other labels: another computation
    assert [e.outcome for e in refcache.RefCache.active().events] == ["computed", "hit", "computed"]


@pytest.mark.heavy
def test_release_report_made_from_the_cache_says_so(cache_env, tmp_path, monkeypatch):
    monkeypatch.setenv(refcache.CACHE_ENV, "")   # the release sets it from --tf-cache alone

    def run(name):
        monkeypatch.setattr(refcache, "_ACTIVE", {})
        code = release.main(["--checks", "layerwise/random-tiny-1layer", "--report-dir", str(tmp_path / name),
                             "--work-dir", str(tmp_path / "work"), "--baseline", "", "--waivers", "",
                             "--tf-cache", cache_env])
        assert code == 0
        return (json.loads((tmp_path / name / "report.json").read_text()),
                (tmp_path / name / "report.md").read_text())

    cold, cold_md = run("cold")
    warm, warm_md = run("warm")
    c, w = cold["environment"]["tf_cache"], warm["environment"]["tf_cache"]
    assert c["computed"] == c["runs"] >= 1 and c["hit"] == 0
    assert w["hit"] == w["runs"] == c["runs"] and w["oldest_entry_used"]
    assert "0 of" in cold_md.split("TF reference cache")[1].splitlines()[0]
    assert f"{w['hit']} of {w['runs']} reference runs reused" in warm_md
    assert numbers(warm) == numbers(cold)


def test_a_tf_cache_that_is_a_file_is_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(refcache.CACHE_ENV, "")
    (tmp_path / "f").write_text("not a folder")
    code = release.main(["--checks", "layerwise/random-tiny-1layer", "--report-dir", str(tmp_path / "r"),
                         "--baseline", "", "--waivers", "", "--tf-cache", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--tf-cache" in err[0] and "not a folder" in err[0]
