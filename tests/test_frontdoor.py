"""The front door: `bert-parity` subcommands, --version/--help, flags, the one error mapping, no-TensorFlow exit 2,
and the compare summary. No TensorFlow is imported here (the checkpoint is written by bert_torch.convert --to-tf: tests/conftest.py)."""
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

from bert_torch.commands import EXIT_CODES_HELP, TF_MISSING, error_lines
from parity import frontdoor
from parity.compare.command import print_summary
from parity.numerics.metrics import compare_tap, get_profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Python code run first in a child process: TensorFlow, tf_keras and the official bert package are absent, as in a
# `pip install bert-parity` without the `tf` extra (importing one raises ModuleNotFoundError, like a missing package).
from no_tensorflow import NO_TF  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)


def run_cli(*argv: str, no_tf: bool = False, cwd: str = REPO) -> subprocess.CompletedProcess:
    code = (NO_TF if no_tf else "import sys\n") + "from parity.frontdoor import main\nsys.exit(main())\n"
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def exits(capsys, *argv: str) -> tuple[int, str, str]:
    """The front door in-process: exit code (the front door's own usage errors and --help exit with SystemExit;
    a command's are returned by its run_main), stdout, stderr."""
    try:
        code = frontdoor.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version_comes_from_the_package_metadata(capsys):
    code, out, _ = exits(capsys, "--version")
    assert code == 0 and out.strip() == f"bert-parity {metadata.version('bert-parity')}"


def test_help_lists_every_subcommand_and_the_exit_codes(capsys):
    code, out, _ = exits(capsys, "--help")
    assert code == 0
    every = {"convert", "compare", "diagnose", "evaluate", "dump", "tokens", "finetune", "release", "bench",
             "calibrate", "portability", "gpu-check", "export-onnx"}
    for name in every:
        assert f"\n    {name}" in out, name
    assert set(frontdoor.COMMANDS) == every
    assert EXIT_CODES_HELP in " ".join(out.split())
    code, out, _ = exits(capsys, "compare", "--help")   # a subcommand's help: its defaults and the exit codes
    assert code == 0 and "(default: 128)" in out and "2 bad input" in out and "(default: None)" not in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    code, _, err = exits(capsys, "frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in err


def test_legacy_convert_flags_of_the_original_port(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "pytorch_model.bin"
    code = frontdoor.main(["convert", "--tf_checkpoint_path", tiny_checkpoint["prefix"], "--bert_config_file",
                           tiny_checkpoint["config"], "--pytorch_dump_path", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "mapped" in capsys.readouterr().out
    back = torch.load(str(out), weights_only=True)
    assert back.keys() == tiny_checkpoint["tensors"].keys()
    assert all(np.array_equal(back[k].numpy(), v) for k, v in tiny_checkpoint["tensors"].items())


@pytest.mark.parametrize("form", ["trailing-slash", "existing-dir"])
def test_convert_output_that_is_a_directory_is_one_line_exit_2(tiny_checkpoint, tmp_path, capsys, form):
    target = str(tmp_path / "some" / "dir") + "/" if form == "trailing-slash" else str(tmp_path)
    code = frontdoor.main(["convert", "--tf-checkpoint", tiny_checkpoint["dir"], "--output", target])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "argument --output" in err and ": is a folder" in err, err
    assert not os.path.exists(os.path.join(target, "bert.safetensors"))


def test_dump_output_that_is_a_directory_is_one_line_exit_2(tmp_path, capsys):
    for flag in ("--output", "--out"):   # --out: the contract's spelling, kept as an alias
        assert frontdoor.main(["dump", "--tf-checkpoint", str(tmp_path), flag, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: argument --output/--out: {tmp_path}: is a folder"), err


@pytest.mark.heavy
@pytest.mark.parametrize("command", ["compare", pytest.param("dump", marks=pytest.mark.slow),
                                     pytest.param("tokens", marks=pytest.mark.slow)])
def test_without_tensorflow_exit_2_says_how_to_get_it(tiny_checkpoint, tmp_path, command):
    args = {"compare": ["--tf-checkpoint", tiny_checkpoint["dir"], "--torch-weights", tiny_checkpoint["weights"],
                        "--report-dir", str(tmp_path / "r"), "--batch-size", "2", "--seq-len", "8"],
            "dump": ["--tf-checkpoint", tiny_checkpoint["dir"], "--out", str(tmp_path / "g.safetensors"),
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
    from parity.release import context as release_context, gate as release_gate

    def needs_data(ctx):
        raise release_context.NotRun("fine-tuning needs the MRPC data set")

    def fine(ctx):
        return {"name": "other", "kind": "other", "verdict": "pass", "summary": "ok"}

    checks = [release_context.Check("other", fine, "x"), release_context.Check("finetune", needs_data, "x")]
    for require in (False, True):
        ctx = release_context.Context(report_dir=str(tmp_path), work_dir=str(tmp_path), data_dir=None,
                              profile=get_profile("fp32-cpu"), waivers=[], today=None, pytest_args=[],
                              require_data=require)
        report = release_gate.run_release(ctx, checks, {}, None, "test")
        if require:
            assert report["verdict"] == "fail" and "finetune" not in report["checks_not_run"]
            assert any("required (--require-data) but not run" in r for r in report["reasons"])
        else:
            assert report["verdict"] == "pass" and "finetune" in report["checks_not_run"]


@pytest.mark.heavy
def test_native_tf_log_lines_are_dropped_and_everything_else_kept():
    """The stderr filter on planted lines: TF's own (dropped) among ours, a child process's and a traceback's."""
    code = ("import os, subprocess, sys\n"
            "from parity.frontdoor import drop_native_tf_logs\n"
            "drop_native_tf_logs()\n"
            "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
            "os.write(2, b'I0000 00:00:1796135975.943563   10287 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "print('error: ours', file=sys.stderr)\n"
            "subprocess.run([sys.executable, '-c', \"import os; os.write(2, b'E0000 00:00:1796136006.663214   10305 "
            "cuda_platform.cc:52] failed call to cuInit\\\\nchild line\\\\n')\"])\n"
            "os.write(2, b'F0000 00:00:1.5   1 fatal.cc:1] a fatal error is kept\\n')\n"
            "raise SystemExit('last words')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 1
    assert run.stderr.splitlines() == ["error: ours", "child line", "F0000 00:00:1.5   1 fatal.cc:1] a fatal error is kept",
                                       "last words"], run.stderr


@pytest.mark.slow
def test_tensorflow_logs_only_with_verbose(tiny_checkpoint, tmp_path):
    args = ["compare", "--tf-checkpoint", tiny_checkpoint["dir"], "--torch-weights", tiny_checkpoint["weights"],
            "--report-dir", str(tmp_path), "--batch-size", "2", "--seq-len", "12"]
    quiet = run_cli(*args)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-3000:]
    loud = run_cli("--verbose", *args)
    assert loud.returncode == 0 and [line for line in loud.stderr.splitlines()
                                     if frontdoor.TF_LOG_LINE.match(line.encode())], loud.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(frontdoor.COMMANDS))
def test_a_usage_error_is_one_line_on_every_command(capsys, name):
    """argparse's own errors (an unknown flag, a value of the wrong type) are bad input like any other:
    exit 2 and one ``error:`` line naming what is at fault, not argparse's usage block above it."""
    code, _, err = exits(capsys, name, "--no-such-flag", "1")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help)" in lines[0], err


@pytest.mark.parametrize("argv, named", [
    (["compare", "--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
    (["diagnose", "--spill", "sometimes"], "argument --spill: invalid choice: 'sometimes'"),
    (["bench", "--repeats", "1e9"], "argument --repeats: '1e9' is not an integer"),
    (["release", "--growth-factor", "nan"], "argument --growth-factor: nan is not a finite number"),
    (["tokens", "--limit", "-5"], "argument --limit: -5 is out of range"),
    (["convert", "--tf-checkpoint"], "argument --tf-checkpoint"),
])
def test_a_bad_flag_value_is_named_in_its_one_line(capsys, argv, named):
    code, _, err = exits(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {named}"), err


@pytest.mark.parametrize("module", ["bert_torch.run_classifier", "bert_torch.run_squad", "bert_torch.extract_features",
                                    "parity.checks.ddp", "parity.checks.mrpc_ddp"])
def test_the_runners_usage_errors_are_one_line_too(capsys, module):
    import importlib
    try:   # a runner's main returns its code (or exits with it, as the original scripts' mains do)
        code = importlib.import_module(module).main(["--no-such-flag", "1"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


def test_help_loads_neither_torch_nor_tensorflow():
    """`bert-parity --help` and `--version` answer without importing torch or TensorFlow (a fast front door)."""
    import subprocess
    import sys
    probe = ("import sys\nfrom parity import frontdoor\nfor argv in (['--help'], ['--version']):\n"
             "    try:\n        frontdoor.main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'tensorflow', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
