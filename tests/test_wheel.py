"""Packaging that installs what it ships: the wheel, installed into a fresh venv without TensorFlow, runs from
outside the repository: `bert-parity --help`, the calibrated profile, and a golden replay (slow: it records
the golden file with TensorFlow first)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from parity.frontdoor import COMMANDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loaded by a .pth file in the fresh venv: TensorFlow, tf_keras and the official bert package cannot be imported
# there (the project venv's site-packages, which the fresh venv sees for torch and numpy, holds them).
from no_tensorflow import NO_TF  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the tree, installed (no dependencies) into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("bert_torch", "reference_tf", "parity"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md", "mkdocs.yml"):
        shutil.copy(os.path.join(REPO, name), src)
    shutil.copytree(os.path.join(REPO, "docs"), src / "docs")   # beside the packages, as in the repository
    # No build isolation: the project venv's setuptools builds it, nothing is downloaded.
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                 str(src)])
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = glob.glob(str(tmp / "dist" / "bert_parity-*.whl"))[0]
    venv = tmp / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = str(venv / "bin" / "python")
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # torch, numpy, safetensors from the project venv (a plain path line: its .pth files, among them the
    # editable install of this repository, are not processed), and TensorFlow blocked.
    with open(os.path.join(site, "project_site.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    with open(os.path.join(site, "_no_tf.py"), "w") as f:
        f.write(NO_TF)
    with open(os.path.join(site, "_no_tf.pth"), "w") as f:
        f.write("import _no_tf\n")
    inst = run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    assert inst.returncode == 0, inst.stderr[-3000:]
    outside = tmp / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"wheel": wheel, "python": py, "bin": str(venv / "bin"), "site": site, "cwd": str(outside), "env": env}


def in_venv(installed, *cmd) -> subprocess.CompletedProcess:
    return run(list(cmd), cwd=installed["cwd"], env=installed["env"])


@pytest.mark.heavy
def test_wheel_ships_data_and_no_tests(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for must in ("parity/calibration/minilm-l6.json", "parity/waivers.toml", "parity/data/mrpc_sample.tsv",
                 "parity/frontdoor.py", "bert_torch/commands.py", "reference_tf/_official.py"):
        assert must in names, must
    assert not [n for n in names if os.path.basename(n).startswith("test_") or n.endswith("conftest.py")]
    assert not [n for n in names if n.startswith("docs/") or n.endswith("mkdocs.yml")]   # the docs site is not shipped
    # Every package of the source tree (parity.diagnose, parity.finetune, parity.release, ...) is in it.
    packages = [os.path.relpath(d, REPO) for top in ("bert_torch", "reference_tf", "parity")
                for d, _, files in os.walk(os.path.join(REPO, top)) if "__init__.py" in files]
    assert len(packages) > 3
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, pkg
    meta = zipfile.ZipFile(installed["wheel"]).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Requires-Python: >=3.11" in meta and "License-Expression: Apache-2.0" in meta


@pytest.mark.heavy
def test_installed_command_runs_from_outside_the_repo(installed):
    where = in_venv(installed, installed["python"], "-c", "import parity, tensorflow")
    assert where.returncode == 1 and "No module named 'tensorflow'" in where.stderr   # the blocker works
    where = in_venv(installed, installed["python"], "-c", "import parity; print(parity.__file__)")
    assert where.stdout.startswith(installed["site"]), where.stdout + where.stderr
    helped = in_venv(installed, os.path.join(installed["bin"], "bert-parity"), "--help")
    assert helped.returncode == 0, helped.stderr
    assert all(f"\n    {name}" in helped.stdout for name in COMMANDS)


def test_calibrated_profile_works_installed(installed):
    code = ("from parity.numerics.metrics import get_profile\n"
            "p = get_profile('calibrated-minilm-l6')\n"
            "print(p.name)\n")
    got = in_venv(installed, installed["python"], "-c", code)
    assert got.returncode == 0 and got.stdout.strip() == "calibrated-minilm-l6", got.stderr[-2000:]


@pytest.mark.slow
def test_golden_replay_from_the_installed_wheel(installed, tiny_checkpoint, tmp_path):
    """A golden file recorded here with TensorFlow, replayed by the installed `bert-parity compare --golden`."""
    from parity.compare.golden import main as dump_main
    golden = str(tmp_path / "tiny.golden.safetensors")
    assert dump_main(["--tf-checkpoint", tiny_checkpoint["dir"], "--output", golden, "--batch-size", "2",
                      "--seq-len", "12"]) == 0
    out = tmp_path / "replayed"
    replay = in_venv(installed, os.path.join(installed["bin"], "bert-parity"), "compare", "--golden", golden,
                     "--torch-weights", tiny_checkpoint["weights"], "--report-dir", str(out))
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
    assert "first divergence: none" in replay.stdout and f"full table: {out / 'report.md'}" in replay.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "pass" and report["first_divergence"] is None
    assert len(report["taps"]) == 5 + 11 * tiny_checkpoint["num_layers"] + 1
    assert max(t["max_abs"] for t in report["taps"]) > 0   # TF's numbers against PyTorch's, not a self-comparison
    assert report["environment"]["tensorflow_runtime"] is None   # TensorFlow was not loaded by the replay
