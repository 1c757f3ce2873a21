"""Data-parallel parity under torchrun (parity/ddp_check.py): 2 processes x 4 rows with micro-batches, gloo on
CPU, against one process on the 8 rows; and the classic fault (gradients summed across processes) caught."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


def ddp(tmp_path, *extra) -> tuple[int, dict, str]:
    out = tmp_path / "ddp.json"
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "parity.ddp_check",
                           "--output", str(out), *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, json.loads(out.read_text()) if out.exists() else {}, proc.stdout + proc.stderr


@pytest.fixture(autouse=True)
def _torchrun():
    assert TORCHRUN, "torchrun (installed with torch) not found beside the interpreter"


def test_two_processes_compute_the_single_process_step(tmp_path):
    code, out, log = ddp(tmp_path)
    assert code == 0 and out["verdict"] == "pass", log[-2000:]
    assert out["processes"] == 2 and len(out["gradients"]) == 6 * 16 + 5 + 2 + 2
    assert all(r["passed"] for r in out["gradients"]) and out["parameters"]["passed"]
    assert out["loss_ddp"] == pytest.approx(out["loss_single"], rel=1e-5)


def test_gradients_summed_across_processes_are_caught(tmp_path):
    code, out, log = ddp(tmp_path, "--planted", "sum")
    assert code != 0 and out["verdict"] == "fail", log[-2000:]
    assert not out["parameters"]["passed"]
    assert out["gradients"][0]["tol_ratio"] > 100   # twice the gradient: far past the rule, not at its edge
