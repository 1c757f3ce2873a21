"""bert_torch._io: strict JSON, atomic outputs (failure, full disk, signals), reads that name the file;
BertConfig bounds; make_inputs on degenerate sentence files; run-size bounds (issue #12)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bert_torch._io import (InputFileError, OutputError, atomic_output, atomic_outputs, dumps, read_json,
                            read_text, write_text)
from bert_torch.modeling import BertConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# --- strict JSON ---------------------------------------------------------------------------

finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | finite_or_not | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                                                      max_size=4),
                           max_leaves=20)


def _expected(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, list):
        return [_expected(x) for x in v]
    if isinstance(v, dict):
        return {k: _expected(x) for k, x in v.items()}
    return v


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_dumps_is_strict_json_and_spells_non_finite(value):
    text = dumps(value)
    def no_constants(token):
        raise AssertionError(f"bare {token} in {text}")
    assert json.loads(text, parse_constant=no_constants) == _expected(value)


def test_dumps_numpy_values():
    doc = {"a": np.float32("nan"), "b": np.array([1.5, np.inf, -np.inf]), "c": np.int64(3), "d": (np.float64(2),)}
    assert json.loads(dumps(doc)) == {"a": "nan", "b": [1.5, "inf", "-inf"], "c": 3, "d": [2.0]}
    with pytest.raises(TypeError):
        dumps({"x": object()})


# --- atomic outputs --------------------------------------------------------------------------

def test_atomic_output_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(str(final)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("interrupted")
    assert not final.exists() and leftovers(tmp_path) == []
    with atomic_output(str(final)) as tmp:   # an older output at the final name survives a failed rewrite
        open(tmp, "wb").write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(str(final)) as tmp:
            open(tmp, "wb").write(b"new but partial")
            raise RuntimeError
    assert final.read_bytes() == b"old"


def test_a_file_the_tool_did_not_write_is_never_replaced(tmp_path):
    """Outputs replace only what this tool wrote there, unchanged since (its folder's ledger); a user's file of
    the same name, or one of ours changed since, is refused before anything is written, and kept."""
    from bert_torch._io import OutputError, only_our_outputs_replaced, write_bytes
    theirs, ours = tmp_path / "bert_config.json", tmp_path / "w.bin"
    with only_our_outputs_replaced():   # as within every command (run_main)
        _the_rule(theirs, ours, tmp_path, OutputError, write_bytes)
    write_bytes(str(theirs), b"a library call")   # a library call writes where it is told
    assert theirs.read_bytes() == b"a library call" and sorted(os.listdir(tmp_path)) == [
        ".bert-parity-files", "bert_config.json", "w.bin"]


def _the_rule(theirs, ours, tmp_path, OutputError, write_bytes):
    theirs.write_bytes(b"the user's own")
    with pytest.raises(OutputError, match="not written by bert-parity"):
        write_bytes(str(theirs), b"ours")
    assert theirs.read_bytes() == b"the user's own" and leftovers(tmp_path) == []
    write_bytes(str(ours), b"1")
    write_bytes(str(ours), b"2")   # a previous output of ours: replaced
    assert ours.read_bytes() == b"2"
    ours.write_bytes(b"edited by the user")
    with pytest.raises(OutputError, match="changed since"):
        write_bytes(str(ours), b"3")
    assert ours.read_bytes() == b"edited by the user"


def test_atomic_outputs_appear_together(tmp_path):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    with atomic_outputs(paths) as tmps:
        for t, v in zip(tmps, (b"1", b"2")):
            open(t, "wb").write(v)
        assert not any(os.path.exists(p) for p in paths)   # nothing visible before the set is complete
    assert [open(p, "rb").read() for p in paths] == [b"1", b"2"] and leftovers(tmp_path) == []


def test_output_errors_are_one_line_naming_the_path(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="adir: is a directory"):
        write_text(str(tmp_path / "adir"), "x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError) as e:
        write_text(str(tmp_path / "afile" / "below"), "x")   # a parent that is a file
    assert str(e.value).count("\n") == 0 and "afile" in str(e.value) and "Errno" not in str(e.value)


def run_py(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, **kw)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_mid_write_leaves_nothing(tmp_path, sig):
    final = tmp_path / "w.bin"
    proc = run_py(f"""
        import os, signal
        from bert_torch._io import atomic_output
        with atomic_output({str(final)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 100000)
                os.kill(os.getpid(), signal.{sig})
                f.write(b"never")
        """)
    assert proc.returncode in (-getattr(signal, sig), 1), proc.stderr   # killed, or KeyboardInterrupt
    assert not final.exists() and leftovers(tmp_path) == []


def test_full_disk_is_one_line(tmp_path):
    """A full disk, simulated by RLIMIT_FSIZE (writes past it fail with EFBIG, as ENOSPC would)."""
    final = tmp_path / "big.bin"
    proc = run_py(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))
        from bert_torch._io import write_bytes
        try:
            write_bytes({str(final)!r}, b"x" * 200000, "weights file")
        except OSError as e:
            print(e, file=sys.stderr)
            sys.exit(2)
        """)
    assert proc.returncode == 2 and "weights file" in proc.stderr and "big.bin" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not final.exists() and leftovers(tmp_path) == []


# --- reads that name the file --------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "latin-1"])
def test_wrong_encoding_names_the_file(tmp_path, encoding):
    p = tmp_path / "cfg.json"
    p.write_bytes('{"vocab_size": 3, "x": "é"}'.encode(encoding))
    with pytest.raises(InputFileError) as e:
        read_json(str(p), "bert config")
    assert str(e.value).startswith(f"bert config {p}: not UTF-8") and "\n" not in str(e.value)


def test_read_bounds(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("x" * 1000)
    with pytest.raises(InputFileError, match="more than the 100"):
        read_text(str(p), "sentences file", max_bytes=100)
    with pytest.raises(InputFileError, match="is a directory"):
        read_text(str(tmp_path), "vocab")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputFileError, match="nested deeper"):
        read_json(str(tmp_path / "deep.json"), "bert config")


# --- BertConfig bounds ---------------------------------------------------------------------

@pytest.mark.parametrize("field,value,words", [
    ("num_hidden_layers", 1_000_000_000, "over the limit 1024"),
    ("vocab_size", 10**12, "over the limit"),
    ("hidden_dropout_prob", "0.1", "must be a number in [0, 1]"),
    ("attention_probs_dropout_prob", 1.5, "must be a number in [0, 1]"),
    ("initializer_range", float("nan"), "must be a number"),
    ("hidden_act", {"a": [1]}, "must be a string"),
    ("hidden_size", True, "positive integer"),
    ("intermediate_size", [[[[1]]]], "positive integer"),
])
def test_config_bounds_one_line_naming_file_and_field(tmp_path, field, value, words):
    d = {"vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4, field: value}
    p = tmp_path / "bert_config.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        BertConfig.from_json_file(str(p))
    msg = str(e.value)
    assert str(p) in msg and field in msg and words in msg and "\n" not in msg, msg


def test_config_bert_large_is_within_bounds():
    large = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096)
    assert 3.3e8 < large.num_parameters() < 3.4e8   # BERT-large's 335M body parameters, from the fields


def test_run_size_bounds():
    from parity.inputs import InputError, check_run_size
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64)
    check_run_size(2, 16, 0, cfg)   # a small run passes
    for args, flag in (((0, 16, 0), "--batch-size"), ((2, 65, 0), "--seq-len"), ((2, 16, -1), "--seed"),
                       ((100000, 64, 0), "--batch-size")):
        with pytest.raises(InputError, match=flag):
            check_run_size(*args, cfg)
    big = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=1024, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=4096)
    with pytest.raises(InputError, match="GiB is available"):
        check_run_size(4096, 4096, 0, big)   # petabytes of taps: refused, never attempted


# --- degenerate sentence files -------------------------------------------------------------

@pytest.mark.parametrize("rows,words", [
    (["1\ta\tb\t\t"], "every sentence1"),                              # both columns empty
    (["1\ta\tb\tThe cat sat.\t"], "every sentence2"),                  # one column empty: used to grow forever
    (["1\ta\tb\t\t\x00"], "every sentence1"),                          # control characters only
])
def test_empty_sentence_columns_refused_with_reason(tmp_path, rows, words):
    from parity.inputs import InputError, make_inputs
    from parity.minilm import minilm_dir
    p = tmp_path / "pairs.tsv"
    p.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        make_inputs(os.path.join(minilm_dir(), "vocab.txt"), 2, 16, pairs_file=str(p))
    assert str(p) in str(e.value) and words in str(e.value)


def test_sparse_sentences_bounded(tmp_path):
    """One non-empty pair among thousands of empty ones: the draws are bounded, the error says why."""
    from parity.inputs import InputError, make_inputs
    from parity.minilm import minilm_dir
    p = tmp_path / "pairs.tsv"
    rows = ["1\ta\tb\t\t"] * 20000 + ["1\ta\tb\tHello.\tWorld."]
    p.write_text("h\th\th\th\th\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="too few non-empty sentences"):
        make_inputs(os.path.join(minilm_dir(), "vocab.txt"), 1, 512, pairs_file=str(p))


def test_utf16_sentences_named(tmp_path):
    from parity.inputs import read_pairs
    p = tmp_path / "pairs.tsv"
    p.write_text("h\th\th\th\th\n1\ta\tb\tx\ty\n", encoding="utf-16")
    with pytest.raises(ValueError) as e:
        read_pairs(str(p))
    assert str(p) in str(e.value) and "UTF-16" in str(e.value)


def test_outputs_get_the_usual_permissions(tmp_path):
    """Temporaries are private (mkstemp: 0600); the renamed output has open()'s mode under the umask."""
    mask = os.umask(0o027)
    try:
        write_text(str(tmp_path / "r.json"), "{}")
        assert os.stat(tmp_path / "r.json").st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)


def test_an_input_of_the_run_is_never_an_output(tmp_path):
    """A file read as an input (``note_input``, called by every reader) is refused as an output, and so is a
    folder holding one; the refusal is an OutputError (exit 2), before anything is written."""
    from bert_torch._io import only_our_outputs_replaced
    with only_our_outputs_replaced():   # as within every command (run_main)
        _inputs_never_outputs(tmp_path)


def _inputs_never_outputs(tmp_path):
    from bert_torch._io import OutputError, atomic_dir, check_not_input, note_input, read_bytes, write_bytes
    data = tmp_path / "in" / "weights.bin"
    data.parent.mkdir()
    data.write_bytes(b"the user's weights")
    read_bytes(str(data))
    with pytest.raises(OutputError, match="is an input of this run"):
        write_bytes(str(data), b"an output")
    with pytest.raises(OutputError, match="an input of this run"):
        check_not_input(str(data.parent), "--output")
    with pytest.raises(OutputError):
        with atomic_dir(str(data.parent), "--output", owner="convert"):
            pass
    assert data.read_bytes() == b"the user's weights" and leftovers(data.parent) == []
    note_input(str(tmp_path / "missing"))   # nothing to record: no error, no entry
    check_not_input(str(tmp_path / "missing"), "--output")


def test_scratch_named_by_a_relative_path_is_matched_as_an_absolute_one(tmp_path, monkeypatch):
    """A relative --spill-dir registers relative scratch folders; outputs are absolute: one way of naming both."""
    from bert_torch._io import _inside_pending, forget_on_signal, remove_on_signal
    monkeypatch.chdir(tmp_path)
    os.mkdir("scratch")
    remove_on_signal("scratch")
    try:
        assert _inside_pending(str(tmp_path / "scratch" / "a")) and not _inside_pending(str(tmp_path / "other"))
    finally:
        forget_on_signal("scratch")
    assert not _inside_pending(str(tmp_path / "scratch" / "a"))


def test_a_file_rewritten_inside_a_folder_written_aside_is_ours(tmp_path):
    """A command rewriting its progress file inside its own output folder (still aside) replaces it freely."""
    from bert_torch._io import atomic_dir, only_our_outputs_replaced, write_text
    with only_our_outputs_replaced(), atomic_dir(str(tmp_path / "out"), "--report-dir", owner="finetune") as tmp:
        for step in range(3):
            write_text(os.path.join(tmp, "progress.json"), f"{step}")
    assert (tmp_path / "out" / "progress.json").read_text() == "2"
