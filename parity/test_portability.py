"""The short form of ``make portability`` (parity/checks/portability.py): under every CPU emulation at once
(PyTorch's portable kernels, oneDNN and MKL capped at AVX2, TensorFlow without oneDNN, one thread), in a
fresh process, clean MiniLM passes and every planted fault of the mutation suite is caught."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from parity.checks import portability as portability


@pytest.mark.heavy
def test_short_portability_run_has_no_false_alarm_and_catches_every_fault(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "parity.checks.portability", "--short", "--report-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "portability.json").read_text())
    (result,) = data["results"]
    assert result["env"]["ATEN_CPU_CAPABILITY"] == "default" and result["torch_cpu_capability"] == "DEFAULT"
    rows = {r["fault"]: r for r in result["rows"]}
    assert rows["clean"]["verdict"] == "pass"
    assert set(rows) - {"clean"} == set(portability.FAULTS)
    want = {"transposed_kernel": "layer_0/attention/query", "swapped_gamma_beta": "embeddings/output",
            "position_offset": "embeddings/position_embeddings", "swapped_qk": "layer_1/attention/query",
            "gelu_variant": "layer_0/intermediate"}
    assert {f: rows[f]["first_divergence"] for f in want} == want


def test_the_judge_counts_false_alarms_and_missed_faults():
    ok = {"setting": "s", "shape": [1, 2], "rows": [{"fault": "clean", "verdict": "pass"},
                                                   {"fault": "f", "verdict": "fail"}]}
    bad = {"setting": "t", "shape": [1, 2], "rows": [{"fault": "clean", "verdict": "fail"},
                                                    {"fault": "f", "verdict": "pass"}]}
    assert portability.judge([ok])["verdict"] == "pass"
    v = portability.judge([ok, bad])
    assert v["verdict"] == "fail" and v["false_alarms"] == [("t", [1, 2])] and v["missed_faults"] == [("t", [1, 2], "f")]
