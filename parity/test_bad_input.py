"""Bad input never yields a traceback or a report that looks fine: exit 2, one line naming the culprit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bert_torch import convert
from bert_torch.tf_checkpoint import read_checkpoint, write_checkpoint

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")


@pytest.fixture
def ckpt(random_checkpoint, tmp_path):
    """A private copy of a small official checkpoint directory (tests break it)."""
    src = random_checkpoint(TINY, perturb=0.02)
    dst = tmp_path / "ckpt"
    shutil.copytree(src["dir"], dst)
    return {k: v.replace(src["dir"], str(dst)) for k, v in src.items()}


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def check_compare_fails(compare, ckpt, *extra, weights=None, expect=()):
    run = compare(ckpt["dir"], weights or ckpt["torch_weights"], "--batch-size", "2", "--seq-len", "16", *extra)
    assert run.code == 2, run.out + run.err
    assert run.report is None, "an input error must not leave a report behind"
    line = one_error_line(run.err)
    for word in expect:
        assert word in line, line
    return line


def test_missing_checkpoint(compare, ckpt, tmp_path):
    missing = str(tmp_path / "nowhere")
    run = compare(missing, ckpt["torch_weights"])
    assert run.code == 2 and missing in one_error_line(run.err)
    assert convert.main(["--tf-checkpoint", missing, "--output", str(tmp_path / "x.safetensors")]) == 2


def test_truncated_data_file_names_file_and_variable(ckpt, tmp_path):
    data = ckpt["prefix"] + ".data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) - 100)
    # A real process: proves there is no traceback anywhere on the way out.
    proc = subprocess.run([sys.executable, "-m", "bert_torch.convert", "--tf-checkpoint", ckpt["dir"],
                           "--output", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "data-00000-of-00001" in line and "truncated" in line and "bert/" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_truncated_data_file_in_compare(compare, ckpt):
    data = ckpt["prefix"] + ".data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)
    check_compare_fails(compare, ckpt, expect=("truncated",))


def test_config_that_disagrees_with_the_checkpoint(compare, ckpt, tmp_path):
    cfg = dict(TINY, hidden_size=36, num_attention_heads=4, intermediate_size=37)
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(cfg))
    check_compare_fails(compare, ckpt, "--bert-config", str(path), "--vocab-file", ckpt["vocab"],
                        expect=("config says hidden_size 36", "have 32", "bert/embeddings/word_embeddings [120, 32]"))


def test_fewer_layers_in_checkpoint_than_config(ckpt, tmp_path, capsys):
    cfg = dict(TINY, num_hidden_layers=3)
    path = tmp_path / "deeper.json"
    path.write_text(json.dumps(cfg))
    assert convert.main(["--tf-checkpoint", ckpt["prefix"], "--bert-config", str(path),
                         "--output", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "config says num_hidden_layers 3, the weights have 2" in line


def test_unknown_variable_is_named(compare, ckpt):
    tensors = read_checkpoint(ckpt["prefix"])
    tensors["bert/encoder/layer_0/attention/self/rotary/kernel"] = tensors["bert/pooler/dense/kernel"]
    write_checkpoint(ckpt["prefix"], tensors)
    check_compare_fails(compare, ckpt, expect=("bert/encoder/layer_0/attention/self/rotary/kernel", "unmapped"))


def test_vocab_that_does_not_match_the_config(compare, ckpt):
    with open(ckpt["vocab"], "a", encoding="utf-8") as f:
        f.write("extratoken\n")
    check_compare_fails(compare, ckpt, expect=("vocab", "121", "120"))


def test_torch_weights_missing_a_tensor(compare, ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(ckpt["torch_weights"])
    del tensors["encoder.layer.1.output.dense.bias"]
    bad = tmp_path / "missing.safetensors"
    save_file(tensors, str(bad))
    check_compare_fails(compare, ckpt, weights=str(bad), expect=("missing encoder.layer.1.output.dense.bias",))


def test_garbage_weights_file(compare, ckpt, tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00not a safetensors file")
    check_compare_fails(compare, ckpt, weights=str(bad), expect=("garbage.safetensors", "unreadable"))


def test_sequence_longer_than_position_table(compare, ckpt):
    run = compare(ckpt["dir"], ckpt["torch_weights"], "--seq-len", "65")
    assert run.code == 2 and "max_position_embeddings 64" in one_error_line(run.err)


def test_unknown_profile(compare, ckpt):
    check_compare_fails(compare, ckpt, "--profile", "fp8-everywhere", expect=("fp8-everywhere", "fp32-cpu"))


def test_config_that_is_not_json(compare, ckpt):
    with open(ckpt["bert_config"], "w") as f:
        f.write("{vocab_size: 3")
    check_compare_fails(compare, ckpt, expect=("bert_config.json", "JSON"))


def test_a_failed_run_leaves_the_previous_report_whole_and_nothing_else(compare, ckpt, tmp_path):
    """A report folder is replaced as a whole or not at all: a run refused as bad input leaves the previous
    report as it was (its own record says what it compared), and no temporary beside it."""
    run = compare(ckpt["dir"], ckpt["torch_weights"], "--batch-size", "2", "--seq-len", "16")
    assert run.code == 0
    report_dir = run.report_dir
    before = {p.name: p.read_bytes() for p in report_dir.iterdir() if p.is_file()}
    from parity import frontdoor
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a weights file")   # refused after the flags are read, while the run prepares
    code = frontdoor.main(["compare", "--tf-checkpoint", ckpt["dir"], "--torch-weights", str(broken),
                     "--report-dir", str(report_dir)])
    assert code == 2
    assert {p.name: p.read_bytes() for p in report_dir.iterdir() if p.is_file()} == before
    assert not [p for p in report_dir.parent.iterdir() if p.name.startswith(".")], "a temporary was left"
