"""Golden files: `python -m reference_tf dump` records the official graph; `parity compare --golden` replays it
without TensorFlow and must give the live comparison's verdict and numbers exactly."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st


from parity import frontdoor
from parity.compare.schema import check_json_file
from parity.sides.base import GoldenError, GoldenSide
from parity.checkpoints import CONFIGS
from parity.compare.golden import main as dump_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run python code in a process where TensorFlow (and the official bert package, and reference_tf) cannot be
# imported, as on a machine without them: importing any of them raises ImportError.
NO_TF = """
import importlib.machinery, sys
class _Absent:
    def create_module(self, spec):
        raise ImportError(f"No module named {spec.name!r} (TensorFlow is not installed in this process)")
    def exec_module(self, module):
        pass
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "bert", "reference_tf"):
            return importlib.machinery.ModuleSpec(name, _Absent(), origin=None)
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""


def run_without_tf(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TF + code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.fixture(scope="module")
def golden(random_checkpoint, tmp_path_factory):
    """A 2-layer official random checkpoint with a classifier head, dumped to a golden file."""
    cfg = dict(CONFIGS["tiny-1layer"], num_hidden_layers=2, hidden_act="gelu")
    ck = random_checkpoint(cfg, head="classifier", num_labels=3, perturb=0.02)
    path = str(tmp_path_factory.mktemp("golden") / "tiny.golden.safetensors")
    assert dump_main(["--tf-checkpoint", ck["dir"], "--out", path, "--batch-size", "3", "--seq-len", "20",
                      "--seed", "5"]) == 0
    return {"path": path, **ck}


def test_blocker_really_blocks_tensorflow():
    run = run_without_tf("import tensorflow")
    assert run.returncode == 1 and "TensorFlow is not installed in this process" in run.stderr


@pytest.mark.heavy
def test_golden_round_trip_without_tensorflow_matches_the_live_comparison(golden, compare, tmp_path):
    live = compare(golden["dir"], golden["torch_weights"], "--batch-size", "3", "--seq-len", "20", "--seed", "5")
    assert live.code == 0 and live.report["verdict"] == "pass"
    out = tmp_path / "replayed"
    run = run_without_tf(
        "from parity.frontdoor import main\n"
        f"code = main(['compare', '--golden', {golden['path']!r}, '--torch-weights', {golden['torch_weights']!r},"
        f" '--report-dir', {str(out)!r}])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'bert', 'reference_tf')]\n"
        "sys.exit(code)\n")
    assert run.returncode == 0, run.stderr[-3000:]
    replayed = check_json_file(str(out / "report.json"), "report")
    assert replayed["verdict"] == live.report["verdict"] == "pass"
    assert replayed["first_divergence"] == live.report["first_divergence"]
    assert replayed["inputs"] == live.report["inputs"]
    assert replayed["taps"] == live.report["taps"]   # every number, bit for bit
    names = [t["name"] for t in replayed["taps"]]
    assert names[-1] == "classifier/logits" and len(names) == 5 + 11 * 2 + 1 + 1
    assert max(t["max_abs"] for t in replayed["taps"]) > 0   # real rounding differences, not a self-comparison
    env = replayed["environment"]
    assert len(env["sha256"]["golden"]) == 64
    assert env["reference_environment"]["bert_tensorflow"] == "1.0.4"
    assert "golden file" in replayed["sides"]["reference"]


def test_golden_file_contents(golden):
    g = GoldenSide(golden["path"])
    assert g.inputs.shape == (3, 20) and g.inputs.meta["seed"] == 5 and g.head == "classifier" and g.num_labels == 3
    assert g.config.num_hidden_layers == 2 and g.tap_names[0] == "embeddings/word_embeddings"
    assert len(g.meta["environment"]["sha256"]["tf_checkpoint.data"]) == 64
    taps = g.run(g.inputs)
    assert taps["layer_1/attention/probs"].shape == (3, 4, 20, 20)
    np.testing.assert_allclose(taps["layer_1/attention/probs"].sum(-1), 1.0, rtol=1e-5)   # softmax rows
    with pytest.raises(GoldenError, match="cannot be re-run with injected taps"):
        g.run(g.inputs, inject={"layer_0/attention/probs": taps["layer_0/attention/probs"]})
    other = type(g.inputs)(g.inputs.input_ids[:, ::-1].copy(), g.inputs.token_type_ids, g.inputs.input_mask)
    with pytest.raises(GoldenError, match="recorded for other inputs"):
        g.run(other)


def one_line_error(capsys, argv) -> tuple[int, str]:
    code = frontdoor.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_golden_that_does_not_fit_the_weights_is_bad_input(golden, random_checkpoint, capsys, tmp_path):
    other = random_checkpoint(dict(CONFIGS["odd-heads-2layer"], hidden_act="gelu"), perturb=0.02)
    code, err = one_line_error(capsys, ["compare", "--golden", golden["path"], "--torch-weights",
                                        other["torch_weights"], "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "\n" not in err and err.startswith("error: ") and "does not fit the bert_config" in err
    assert "hidden_size" in err or "vocab_size" in err
    code, err = one_line_error(capsys, ["compare", "--golden", golden["path"], "--torch-weights",
                                        golden["torch_weights"], "--bert-config", other["bert_config"],
                                        "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "\n" not in err and "does not match the config" in err and "hidden_size 45 (golden: 32)" in err
    code, err = one_line_error(capsys, ["compare", "--golden", golden["path"], "--tf-checkpoint", golden["dir"],
                                        "--torch-weights", golden["torch_weights"], "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "not both" in err
    code, err = one_line_error(capsys, ["compare", "--golden", golden["path"], "--seq-len", "64", "--torch-weights",
                                        golden["torch_weights"], "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "recorded with 20" in err
    code, err = one_line_error(capsys, ["compare", "--torch-weights", golden["torch_weights"],
                                        "--report-dir", str(tmp_path / "r")])
    assert code == 2 and "--tf-checkpoint is required" in err
    garbage = tmp_path / "garbage.safetensors"   # the file itself at fault: said so, not blamed on the config
    garbage.write_bytes(b"\x08" + b"\x00" * 7 + b"not json")
    code, err = one_line_error(capsys, ["compare", "--golden", golden["path"], "--torch-weights", str(garbage),
                                        "--report-dir", str(tmp_path / "r")])
    assert code == 2 and str(garbage) in err and "does not fit" not in err, err
    assert not (tmp_path / "r" / "report.json").exists()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999))
def test_truncated_golden_file_is_one_line_exit_2(golden, capsys, tmp_path, cut):
    data = open(golden["path"], "rb").read()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: int(len(data) * cut)])
    code, err = one_line_error(capsys, ["compare", "--golden", str(bad), "--torch-weights", golden["torch_weights"],
                                        "--report-dir", str(tmp_path / "r")])
    assert code == 2 and err.startswith(f"error: {bad}") and "\n" not in err, err


def test_other_safetensors_and_tampered_metadata_are_one_line_exit_2(golden, capsys, tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    cases = {"weights file, not golden": (golden["torch_weights"], "not a bert-parity golden file")}
    with safe_open(golden["path"], framework="np") as f:
        meta = f.metadata()
    tensors = load_file(golden["path"])
    for name, change, expect in [
            ("future version", lambda m, t: m.update(format_version="9"), "golden format version '9'"),
            ("tap missing", lambda m, t: t.pop("taps/layer_1/output"), "missing from the file"),
            ("tap misshapen", lambda m, t: t.update({"taps/pooler/output": t["taps/pooler/output"][:2]}),
             "tap pooler/output is float32[2, 32], expected float32[3, 32]"),
            ("bad json", lambda m, t: m.update(golden="{"), "metadata is incomplete or malformed")]:
        m, t = dict(meta), dict(tensors)
        change(m, t)
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        save_file(t, str(path), metadata=m)
        cases[name] = (str(path), expect)
    for name, (path, expect) in cases.items():
        code, err = one_line_error(capsys, ["compare", "--golden", path, "--torch-weights", golden["torch_weights"],
                                            "--report-dir", str(tmp_path / "r")])
        assert code == 2 and "\n" not in err and expect in err, (name, err)


def test_dump_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert dump_main(["--tf-checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not (tmp_path / "g").exists()


@pytest.mark.heavy
def test_contract_dump_command_still_works(tmp_path):
    """`python -m reference_tf dump` (CONTRACT.md) hands over to `python -m parity dump`: same arguments, exit codes."""
    run = subprocess.run([sys.executable, "-m", "reference_tf", "dump", "--tf-checkpoint", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "g")], capture_output=True, text=True, cwd=REPO, timeout=300)
    err = run.stderr.strip()
    assert run.returncode == 2 and err.startswith("error: ") and "\n" not in err and "nothing" in err, err
    assert not (tmp_path / "g").exists()
