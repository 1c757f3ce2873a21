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


def test_an_edited_or_added_file_in_a_previous_output_keeps_the_folder(ck, tmp_path, capsys):
    """The marker lists each file with its size and time: a file the user edited, added or copied in (an input
    of the next run, say) makes the folder theirs again, and it is not replaced."""
    out = tmp_path / "hf"
    argv = ["convert", "--tf-checkpoint", ck["dir"], "--output-format", "hf", "--output", str(out)]
    assert frontdoor.main(argv) == 0
    with open(out / "config.json", "a") as f:
        f.write("\n")
    refused(capsys, argv, out)
    (out / "config.json").write_bytes((out / "config.json").read_bytes()[:-1])
    os.utime(out / "config.json")
    shutil.copy(ck["config"], out / "bert_config.json")   # a file of the user's in it
    refused(capsys, ["convert", "--tf-checkpoint", ck["prefix"], "--bert-config", str(out / "bert_config.json"),
                     "--output-format", "hf", "--output", str(out)], out)


def test_a_link_to_an_output_folder_stays_a_link(ck, tmp_path, capsys):
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    assert frontdoor.main(["convert", "--tf-checkpoint", ck["dir"], "--output-format", "hf",
                           "--output", str(link)]) == 0
    assert link.is_symlink() and (target / "config.json").exists()


def test_the_tools_own_records_are_never_an_output_nor_overwritten(ck, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in (".bert-parity-files", ".bert-parity-output"):
        err = refused(capsys, ["convert", "--tf-checkpoint", ck["dir"], "--output", str(folder / name)], folder)
        assert "record of what it wrote" in err
    notes = folder / ".bert-parity-files"
    notes.write_text("my own notes, not a ledger")
    assert frontdoor.main(["convert", "--tf-checkpoint", ck["dir"], "--output", str(folder / "w.safetensors")]) == 0
    assert notes.read_text() == "my own notes, not a ledger"


def test_a_long_legal_output_name_is_written(ck, tmp_path):
    name = "a" * 243 + ".safetensors"   # 255 bytes: the longest name the file system takes
    assert frontdoor.main(["convert", "--tf-checkpoint", ck["dir"], "--output", str(tmp_path / name)]) == 0
    assert (tmp_path / name).stat().st_size > 0
