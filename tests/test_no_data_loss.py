"""No command deletes or replaces what it did not write: outputs pointed at the user's folders and files, the
checkpoint just read included, are refused (exit 2, one line) and everything there is left as it was."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from parity import frontdoor


def snapshot(folder) -> dict:
    """Every file under ``folder`` -> sha256 of its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def ck(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint folder that the test may point outputs at."""
    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint["dir"], d)
    return {"dir": str(d), "prefix": str(d / "bert_model.ckpt"), "weights": str(d / "model.safetensors"),
            "config": str(d / "bert_config.json")}


def refused(capsys, argv, *keep) -> str:
    before = [snapshot(k) for k in keep]
    code = frontdoor.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert [snapshot(k) for k in keep] == before, "a file the tool did not write was changed"
    return err


def test_hf_output_into_the_checkpoint_folder_it_reads(ck, capsys):
    err = refused(capsys, ["convert", "--tf-checkpoint", ck["dir"], "--output-format", "hf", "--output", ck["dir"]],
                  ck["dir"])
    assert "did not write" in err


def test_hf_output_into_the_working_directory(ck, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    refused(capsys, ["convert", "--tf-checkpoint", ck["dir"], "--output-format", "hf", "--output", "."], work)


def test_to_tf_over_the_users_checkpoint_files(ck, capsys):
    """``--to-tf`` writes bert_config.json and vocab.txt beside its prefix: the user's own are never replaced."""
    refused(capsys, ["convert", "--to-tf", "--torch-weights", ck["weights"], "--bert-config", ck["config"],
                     "--output", ck["prefix"]], ck["dir"])


def test_weights_output_over_an_input_or_a_users_file(ck, capsys):
    refused(capsys, ["convert", "--tf-checkpoint", ck["dir"], "--output", ck["weights"]], ck["dir"])
    refused(capsys, ["convert", "--tf-checkpoint", ck["dir"], "--output", ck["prefix"] + ".index"], ck["dir"])


def test_report_folder_that_holds_the_checkpoint(ck, capsys):
    refused(capsys, ["compare", "--tf-checkpoint", ck["dir"], "--torch-weights", ck["weights"], "--report-dir",
                     ck["dir"]], ck["dir"])


def test_a_previous_output_of_the_same_command_is_replaced(ck, tmp_path, capsys):
    """What the rule allows: a rerun replaces its own output; another command's output is refused."""
    out = tmp_path / "hf"
    for _ in range(2):
        assert frontdoor.main(["convert", "--tf-checkpoint", ck["dir"], "--output-format", "hf",
                               "--output", str(out)]) == 0
    weights = tmp_path / "w.safetensors"
    for _ in range(2):
        assert frontdoor.main(["convert", "--tf-checkpoint", ck["dir"], "--output", str(weights)]) == 0
    capsys.readouterr()
    err = refused(capsys, ["release", "--report-dir", str(out), "--checks", "nothing-matches"], out)
    assert "bert-parity convert" in err
