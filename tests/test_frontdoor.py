"""The front door: `bert-parity` subcommands, --version/--help, flags, the one error mapping, no-TensorFlow exit 2,
and the compare summary. No TensorFlow is imported here (checkpoints are written by bert_torch.convert --to-tf)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bert_torch import BertConfig
from bert_torch.commands import EXIT_CODES_HELP, TF_MISSING, error_lines
from bert_torch.weights import build_model, model_tensors, write_weights
from parity import frontdoor
from parity.cli import print_summary
from parity.metrics import compare_tap, get_profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)

# Python code run first in a child process: TensorFlow, tf_keras and the official bert package are absent, as in a
# `pip install bert-parity` without the `tf` extra (importing one raises ModuleNotFoundError, like a missing package).
NO_TF = """
import importlib.machinery, sys
class _Absent:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
    def exec_module(self, module):
        pass
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "bert"):
            return importlib.machinery.ModuleSpec(name, _Absent(), origin=None)
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""


def run_cli(*argv: str, no_tf: bool = False, cwd: str = REPO) -> subprocess.CompletedProcess:
    code = (NO_TF if no_tf else "import sys\n") + "from parity.frontdoor import main\nsys.exit(main(sys.argv[1:]))\n"
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random 2-layer model, its safetensors file, and an official-format TF checkpoint of it with a vocab."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model(CONFIG, None)
    weights = str(d / "model.safetensors")
    write_weights(weights, model_tensors(model))
    CONFIG.to_json_file(str(d / "bert_config.json"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += [f"##{c}" for c in "aeiostn"] + ["the", "."]
    assert len(words) == CONFIG.vocab_size
    (d / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    prefix = str(d / "bert_model.ckpt")
    assert frontdoor.main(["convert", "--to-tf", "--torch-weights", weights, "--bert-config",
                           str(d / "bert_config.json"), "--output", prefix]) == 0
    return {"dir": str(d), "prefix": prefix, "weights": weights, "config": str(d / "bert_config.json"),
            "tensors": model_tensors(model)}


def test_version_comes_from_the_package_metadata():
    run = run_cli("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"bert-parity {metadata.version('bert-parity')}"


def test_help_lists_every_subcommand_and_the_exit_codes():
    run = run_cli("--help")
    assert run.returncode == 0
    for name in ("convert", "compare", "diagnose", "dump", "tokens", "finetune", "release", "bench", "calibrate"):
        assert f"\n    {name}" in run.stdout, name
    assert set(frontdoor.COMMANDS) == {"convert", "compare", "diagnose", "dump", "tokens", "finetune", "release",
                                       "bench", "calibrate"}
    assert EXIT_CODES_HELP in " ".join(run.stdout.split())
    sub = run_cli("compare", "--help")   # a subcommand's help: its defaults and the exit codes
    assert sub.returncode == 0 and "(default: 128)" in sub.stdout and "2 bad input" in sub.stdout


def test_unknown_subcommand_is_a_usage_error():
    run = run_cli("frobnicate")
    assert run.returncode == 2 and "invalid choice: 'frobnicate'" in run.stderr


def test_legacy_convert_flags_of_the_original_port(checkpoint, tmp_path, capsys):
    out = tmp_path / "pytorch_model.bin"
    code = frontdoor.main(["convert", "--tf_checkpoint_path", checkpoint["prefix"], "--bert_config_file",
                           checkpoint["config"], "--pytorch_dump_path", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "mapped" in capsys.readouterr().out
    back = torch.load(str(out), weights_only=True)
    assert back.keys() == checkpoint["tensors"].keys()
    assert all(np.array_equal(back[k].numpy(), v) for k, v in checkpoint["tensors"].items())


@pytest.mark.parametrize("form", ["trailing-slash", "existing-dir"])
def test_convert_output_that_is_a_directory_is_one_line_exit_2(checkpoint, tmp_path, capsys, form):
    target = str(tmp_path / "some" / "dir") + "/" if form == "trailing-slash" else str(tmp_path)
    code = frontdoor.main(["convert", "--tf-checkpoint", checkpoint["dir"], "--output", target])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith(f"error: --output {target}: is a directory"), err
    assert not os.path.exists(os.path.join(target, "bert.safetensors"))


def test_dump_accepts_output_and_out(tmp_path):
    run = run_cli("dump", "--tf-checkpoint", str(tmp_path / "none"), "--output", str(tmp_path))
    assert run.returncode == 2 and run.stderr.strip() == f"error: --output {tmp_path}: is a directory; give a file name"


@pytest.mark.parametrize("command", ["compare", "dump", "tokens"])
def test_without_tensorflow_exit_2_says_how_to_get_it(checkpoint, tmp_path, command):
    args = {"compare": ["--tf-checkpoint", checkpoint["dir"], "--torch-weights", checkpoint["weights"],
                        "--report-dir", str(tmp_path / "r"), "--batch-size", "2", "--seq-len", "8"],
            "dump": ["--tf-checkpoint", checkpoint["dir"], "--out", str(tmp_path / "g.safetensors"),
                     "--batch-size", "2", "--seq-len", "8"],
            "tokens": ["--sample", "--no-hf", "--limit", "3"]}[command]
    run = run_cli(command, *args, no_tf=True)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[0] == "error: " + TF_MISSING.format(name="tensorflow")
    assert "`tf` extra" in lines[0] and "--golden" in lines[0]
    assert not os.listdir(tmp_path) or not (tmp_path / "r" / "report.json").exists()


def test_error_mapping_is_one_list():
    from bert_torch.tf_checkpoint import CheckpointError
    from bert_torch.weights import WeightsError
    assert error_lines(WeightsError(["a: missing", "b: shape"])) == ["a: missing", "b: shape"]
    assert error_lines(CheckpointError("x.index: truncated\nmore")) == ["x.index: truncated"]
    assert error_lines(FileNotFoundError(2, "No such file", "w.safetensors"))[0].endswith("'w.safetensors'")
    assert error_lines(ModuleNotFoundError("No module named 'tf_keras'", name="tf_keras"))[0].startswith(
        "TensorFlow is not installed (no module 'tf_keras')")
    assert error_lines(ModuleNotFoundError("No module named 'pandas'", name="pandas")) is None   # a bug: traceback
    assert error_lines(KeyError("tap")) is None and error_lines(RuntimeError("boom")) is None


def _report(errors: np.ndarray) -> dict:
    """A compare report of len(errors) taps, tap i off by errors[i] (0: identical), through the real metrics."""
    profile = get_profile("fp32-cpu")
    ref = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)   # one reference: same tolerance
    taps = []
    for i, e in enumerate(errors):
        taps.append(compare_tap(f"layer_{i}/output", ref, ref + np.float32(e), profile))
    first = next((t["name"] for t in taps if not t["passed"]), None)
    return {"verdict": "fail" if first else "pass", "first_divergence": first, "profile": profile.to_dict(),
            "sides": {"reference": "ref", "candidate": "cand"}, "taps": taps}


@settings(max_examples=15, deadline=None)
@given(n_fail=st.integers(0, 57), n_pass=st.integers(1, 20))
def test_summary_shows_first_divergence_worst_five_and_where_the_table_is(n_fail, n_pass):
    errors = np.array([0.0] * n_pass + [0.5 + 0.01 * i for i in range(n_fail)])
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        print_summary(_report(errors), "/tmp/out/report.json")
    out = buf.getvalue()
    assert "first divergence: None" not in out
    first = f"layer_{n_pass}/output" if n_fail else "none"
    assert f"first divergence: {first}\n" in out
    tap_lines = [line for line in out.splitlines() if line.startswith("  layer_")]
    assert len(tap_lines) == min(5, n_pass + n_fail)
    if n_fail:   # the worst (largest planted error) first, and every shown tap is a failure
        assert tap_lines[0].split()[0] == f"layer_{n_pass + n_fail - 1}/output"
        assert all("FAIL" in line for line in tap_lines[:min(5, n_fail)])
    assert ("more failing taps" in out) == (n_fail > 5)
    assert out.rstrip().endswith("full table: /tmp/out/report.md (and /tmp/out/report.json)")


def test_release_requires_its_data_when_asked(tmp_path):
    """--require-data (CI): a check that cannot run for want of data fails the gate instead of being skipped."""
    from parity import release

    def needs_data(ctx):
        raise release.NotRun("fine-tuning needs the MRPC data set")

    def fine(ctx):
        return {"name": "other", "kind": "other", "verdict": "pass", "summary": "ok"}

    checks = [release.Check("other", fine, "x"), release.Check("finetune", needs_data, "x")]
    for require in (False, True):
        ctx = release.Context(report_dir=str(tmp_path), work_dir=str(tmp_path), data_dir=None,
                              profile=get_profile("fp32-cpu"), waivers=[], today=None, pytest_args=[],
                              require_data=require)
        report = release.run_release(ctx, checks, {}, None, "test")
        if require:
            assert report["verdict"] == "fail" and "finetune" not in report["checks_not_run"]
            assert any("required (--require-data) but not run" in r for r in report["reasons"])
        else:
            assert report["verdict"] == "pass" and "finetune" in report["checks_not_run"]
