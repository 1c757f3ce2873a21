"""Someone else's code or data fails: exit 2 and one line naming it, never a traceback, exit 1 or exit 3.

Each case is a whole command in a subprocess, since the exit code and stderr are the process's: a
candidate's factory or forward that raises, calls sys.exit or raises KeyboardInterrupt; transformers, the
original port and onnxruntime refusing a user's file; an ONNX graph whose inputs do not fit the run; golden
files, MRPC and SQuAD files with the wrong structure; and export-onnx, which writes aside and leaves
nothing behind, whether it fails, is given a folder, or is ended by SIGTERM or SIGINT.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bert_torch import convert
from bert_torch.modeling import BertConfig
from bert_torch.weights import build_model, model_tensors, write_weights
from parity.files import sample
from parity.inputs import SAMPLE, make_inputs
from parity.sides.base import GoldenSide, TorchSide

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)
WORDS = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
         + [f"##{c}" for c in "aeiostn"] + ["the", "."])

# A user's module: each factory is one way for someone else's code to fail. ``Tiny`` maps one tap, enough
# for a candidate to load and run; its forward does what the case makes it do.
HOSTILE = '''
import sys, threading, time
import torch

class Tiny(torch.nn.Module):
    def __init__(self, before=None):
        super().__init__()
        self.embeddings = torch.nn.Linear(2, 2)
        self.before = before
    def forward(self, input_ids, token_type_ids, attention_mask):
        if self.before:
            self.before()
        return self.embeddings(torch.zeros(1, 2))

def built(model):
    return {"model": model, "taps": {"embeddings": "embeddings/output"}, "forward": lambda m, *a: m(*a)}

def fail():
    raise RuntimeError("the forward failed")

def plain(config):
    return built(Tiny())

def raises(config):
    raise RuntimeError("the factory failed")

def exits(config):
    sys.exit(0)

def interrupts(config):
    raise KeyboardInterrupt

def forward_raises(config):
    return built(Tiny(fail))

def slow(config):
    return built(Tiny(lambda: time.sleep(120)))

def not_a_tensor(config):
    model = Tiny()
    model.embeddings.register_forward_hook(lambda module, args, out: {"hidden": out})
    return built(model)

def not_copyable(config):
    model = Tiny()
    model.lock = threading.Lock()   # deepcopy refuses it: the float64 twin cannot be made
    return built(model)
'''


def onnx_file(path: str, batch="b", seq="t", names=("input_ids", "token_type_ids", "attention_mask"),
              dtype: str = "INT64", reshape_to=None) -> str:
    """A user's ONNX graph with one contract tap as output (``embeddings/output``); ``reshape_to``: a shape
    its Reshape cannot take at run time."""
    import onnx
    from onnx import TensorProto, helper
    ins = [helper.make_tensor_value_info(n, getattr(TensorProto, dtype), [batch, seq]) for n in names]
    nodes = [helper.make_node("Cast", [names[0]], ["cast"], to=TensorProto.FLOAT)]
    inits = []
    if reshape_to:
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [len(reshape_to)], reshape_to))
        nodes.append(helper.make_node("Reshape", ["cast", "shape"], ["embeddings/output"]))
    else:
        nodes.append(helper.make_node("Identity", ["cast"], ["embeddings/output"]))
    out = helper.make_tensor_value_info("embeddings/output", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "user", ins, [out], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def golden_variant(src: str, dst: str, arrays=None, meta=None) -> str:
    """A copy of golden file ``src`` with ``arrays`` (name -> array) and ``meta`` (golden JSON fields) replaced."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    with safe_open(src, "np") as f:
        header = dict(f.metadata())
    header["golden"] = json.dumps({**json.loads(header["golden"]), **(meta or {})})
    save_file({**load_file(src), **(arrays or {})}, dst, metadata=header)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny model (a vocabulary of 40 pieces) as bert_torch weights and as an HF directory, a golden file of
    its taps, a user's module, and a fine-tuning data folder: each case copies one and breaks it one way."""
    d = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    weights = str(d / "model.safetensors")
    write_weights(weights, model_tensors(build_model(TINY, None)))
    config = str(d / "bert_config.json")
    TINY.to_json_file(config)
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    inputs = make_inputs(str(d / "vocab.txt"), 2, 8, 0, vocab_size=TINY.vocab_size, type_vocab_size=2)
    side = TorchSide.from_weights(weights, TINY)
    golden = str(d / "tiny.golden")
    GoldenSide.write(golden, inputs, side.run(inputs), {
        "tap_names": list(side.tap_names), "head": None, "num_labels": 2, "bert_config": TINY.to_dict(),
        "reference": "the tiny model's own taps in the golden format", "inputs": dict(inputs.meta)})
    assert convert.main(["--to-tf", "--torch-weights", weights, "--bert-config", config, "--vocab-file",
                         str(d / "vocab.txt"), "--output", str(d / "ckpt" / "bert_model.ckpt")]) == 0
    assert convert.main(["--tf-checkpoint", str(d / "ckpt"), "--output", str(d / "hf"), "--output-format", "hf"]) == 0
    (d / "mods").mkdir()
    (d / "mods" / "hostile.py").write_text(HOSTILE, encoding="utf-8")
    data = d / "data"
    (data / "mrpc").mkdir(parents=True)
    (data / "squad").mkdir()
    for split in ("train", "dev"):
        shutil.copyfile(SAMPLE, data / "mrpc" / f"{split}.tsv")
    shutil.copyfile(sample("squad_finetune_sample.json"), data / "squad" / "dev-v1.1.json")
    shutil.copyfile(sample("squad_finetune_train_sample.json"), data / "squad" / "train-v1.1-subset.json")
    return {"dir": str(d), "weights": weights, "config": config, "golden": golden, "hf": str(d / "hf"),
            "mods": str(d / "mods"), "data": str(data)}


def run(f: dict, argv: list[str], **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    """``python -m parity argv`` with the user's module folder on the path; ``kw`` for Popen (a signal case)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, f["mods"]]), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "parity", *argv]
    if kw:
        return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **kw)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def left_behind(output: str) -> list[str]:
    """The output, and any temporary of it or of its folder (``.NAME.*``, ``*.tmp``), where a run left them."""
    found = [output] if os.path.lexists(output) else []
    for path in (output, os.path.dirname(output)):
        folder, name = os.path.split(path)
        if os.path.isdir(folder):
            found += [n for n in os.listdir(folder) if n.startswith(f".{name}.") or n.endswith(".tmp")]
    return found


def bad_input(f: dict, argv: list[str], words: list[str], output: str) -> None:
    """Runs a command that must end as bad input: exit 2, no traceback, one ``error:`` line holding every
    one of ``words`` (the culprit), and nothing at ``output`` nor any temporary beside it."""
    proc = run(f, argv)
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert not left_behind(output), left_behind(output)


# ---------------------------------------------------------------------------------------------
# A candidate's own code: its factory, its forward, its model.

MODULE_CASES = {
    "factory-raises": ("raises", ["--candidate module:hostile:raises", "RuntimeError: the factory failed"]),
    "factory-calls-sys-exit-0": ("exits", ["--candidate module:hostile:exits", "sys.exit(0)"]),
    "factory-raises-keyboardinterrupt": ("interrupts", ["--candidate module:hostile:interrupts",
                                                        "KeyboardInterrupt without a Ctrl-C"]),
    "forward-raises": ("forward_raises", ["--candidate module:hostile:forward_raises",
                                          "RuntimeError: the forward failed"]),
    "tapped-module-gives-no-tensor": ("not_a_tensor", ["--candidate module:hostile:not_a_tensor",
                                                       "tap embeddings/output", "dict"]),
    "model-refuses-a-copy": ("not_copyable", ["--candidate module:hostile:not_copyable", "float64",
                                              "cannot pickle"]),
}


@pytest.mark.heavy
@pytest.mark.parametrize("factory, words", MODULE_CASES.values(), ids=list(MODULE_CASES))
def test_a_module_candidates_failure_is_bad_input_naming_it(files, tmp_path, factory, words):
    report = str(tmp_path / "report")
    bad_input(files, ["compare", "--golden", files["golden"], "--candidate", f"module:hostile:{factory}",
                      "--report-dir", report], words, os.path.join(report, "report.json"))


def test_the_harness_own_error_inside_a_candidates_forward_stays_its_own(files, monkeypatch):
    """The consumer of streamed taps runs inside the candidate's forward: its failure is not the candidate's
    (a bug of the tool stays exit 3), while the candidate's own failure there is named as the candidate's."""
    from bert_torch.commands import ForeignError
    from parity.candidates.factory import make_candidate, parse_candidate
    monkeypatch.syspath_prepend(files["mods"])
    inputs = make_inputs(os.path.join(files["dir"], "vocab.txt"), 2, 8, 0, vocab_size=TINY.vocab_size)

    def consume(name, value):
        raise KeyError("the harness's own bug")
    with pytest.raises(KeyError, match="own bug"):
        make_candidate(parse_candidate("module:hostile:plain"), config=TINY).stream(inputs, consume)
    with pytest.raises(ForeignError, match=r"^--candidate module:hostile:forward_raises: RuntimeError: the forward"):
        make_candidate(parse_candidate("module:hostile:forward_raises"), config=TINY).stream(inputs, consume)


# ---------------------------------------------------------------------------------------------
# A user's files, read by someone else's library: transformers, the original port, onnxruntime.

def hf_with_hidden_act(f, tmp_path):
    hf = shutil.copytree(f["hf"], tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "hidden_act": "swishy"}))
    return f"hf:{hf}", [str(hf / "config.json"), "hidden_act", "swishy"]


def hf_with_truncated_weights(f, tmp_path):
    hf = shutil.copytree(f["hf"], tmp_path / "hf")
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[:len(data) // 2])
    return f"hf:{hf}", [str(hf)]


def ppb_with_misshapen_tensor(f, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(f["weights"])
    state["pooler.dense.weight"] = state["pooler.dense.weight"][:, :8].contiguous()
    save_file(state, str(tmp_path / "ppb.safetensors"))
    return f"ppb:{tmp_path / 'ppb.safetensors'}", ["ppb.safetensors", "pooler.dense.weight", "[16, 8]"]


def ppb_with_config_not_an_object(f, tmp_path):
    shutil.copyfile(f["weights"], tmp_path / "ppb.safetensors")
    (tmp_path / "bert_config.json").write_text("[1, 2]")
    return f"ppb:{tmp_path / 'ppb.safetensors'}", [str(tmp_path / "bert_config.json"), "not a JSON object"]


def onnx_with_fixed_batch(f, tmp_path):
    path = onnx_file(str(tmp_path / "fixed.onnx"), batch=3)   # the golden file's run is 2 x 8
    return f"onnx:{path}", [f"--candidate onnx:{path}: the graph's input_ids has a fixed batch size 3; "
                            f"--batch-size 2 cannot run: re-export with a dynamic batch axis or pass --batch-size 3"]


def onnx_with_float_inputs(f, tmp_path):
    path = onnx_file(str(tmp_path / "float.onnx"), dtype="FLOAT")
    return f"onnx:{path}", [f"onnx:{path}", "input_ids is tensor(float)"]


def onnx_failing_at_run(f, tmp_path):
    path = onnx_file(str(tmp_path / "reshape.onnx"), reshape_to=[7])
    return f"onnx:{path}", [f"--candidate onnx:{path}", "ONNXRuntimeError"]


FILE_CASES = {"hf-hidden-act-transformers-rejects": (hf_with_hidden_act, "transformers"),
              "hf-truncated-model-safetensors": (hf_with_truncated_weights, "transformers"),
              "ppb-misshapen-tensor": (ppb_with_misshapen_tensor, "pytorch_pretrained_bert"),
              "ppb-bert-config-not-an-object": (ppb_with_config_not_an_object, "pytorch_pretrained_bert"),
              "onnx-fixed-batch-axis": (onnx_with_fixed_batch, "onnxruntime"),
              "onnx-float-input-ids": (onnx_with_float_inputs, "onnxruntime"),
              "onnx-fails-at-run": (onnx_failing_at_run, "onnxruntime")}


@pytest.mark.heavy
@pytest.mark.parametrize("make, extra", FILE_CASES.values(), ids=list(FILE_CASES))
def test_a_candidate_file_its_library_refuses_is_bad_input_naming_it(files, tmp_path, make, extra):
    if importlib.util.find_spec(extra) is None:
        pytest.skip(f"{extra} is not installed")
    candidate, words = make(files, tmp_path)
    report = str(tmp_path / "report")
    bad_input(files, ["compare", "--golden", files["golden"], "--candidate", candidate, "--report-dir", report],
              words, os.path.join(report, "report.json"))


# ---------------------------------------------------------------------------------------------
# Data: golden files with the wrong arrays, MRPC and SQuAD files of the wrong shape (finetune --data-dir).

GOLDEN_CASES = {
    "float-input-ids": ({"inputs/input_ids": np.full((2, 8), 5.5, np.float32)}, None,
                        ["inputs/input_ids is float32; expected integers"]),
    "input-id-outside-the-vocabulary": ({"inputs/input_ids": np.full((2, 8), 999, np.int32)}, None,
                                        ["inputs/input_ids holds 999 at [0, 0]", "vocab_size"]),
    "tap-names-not-a-list": (None, {"tap_names": "abc"}, ["tap_names", "no contract tap"]),
}


@pytest.mark.heavy
@pytest.mark.parametrize("arrays, meta, words", GOLDEN_CASES.values(), ids=list(GOLDEN_CASES))
def test_a_golden_file_with_wrong_arrays_is_bad_input_naming_it(files, tmp_path, arrays, meta, words):
    golden = golden_variant(files["golden"], str(tmp_path / "bad.golden"), arrays, meta)
    report = str(tmp_path / "report")
    bad_input(files, ["compare", "--golden", golden, "--torch-weights", files["weights"], "--report-dir", report],
              [golden, *words], os.path.join(report, "report.json"))


def squad_edit(f: dict, tmp_path, edit) -> str:
    data = shutil.copytree(f["data"], tmp_path / "data")
    path = data / "squad" / "train-v1.1-subset.json"
    squad = json.loads(path.read_text(encoding="utf-8"))
    edit(squad["data"][0]["paragraphs"][0]["qas"][0])
    path.write_text(json.dumps(squad), encoding="utf-8")
    return str(data)


def first_question(f: dict) -> dict:
    with open(os.path.join(f["data"], "squad", "train-v1.1-subset.json"), encoding="utf-8") as fh:
        return json.load(fh)["data"][0]["paragraphs"][0]["qas"][0]


def answer_outside_context(f, tmp_path):
    qid = first_question(f)["id"]
    return squad_edit(f, tmp_path, lambda qa: qa["answers"][0].update(answer_start=100000)), [
        "train-v1.1-subset.json", f"question {qid}", "answer_start 100000", "outside its context"]


def question_missing(f, tmp_path):
    qid = first_question(f)["id"]
    return squad_edit(f, tmp_path, lambda qa: qa.pop("question")), [
        "train-v1.1-subset.json", f"question {qid}", "has no 'question'"]


def answer_start_a_string(f, tmp_path):
    qid = first_question(f)["id"]
    return squad_edit(f, tmp_path, lambda qa: qa["answers"][0].update(answer_start="12")), [
        "train-v1.1-subset.json", f"question {qid}", "answer_start is str", "expected an integer"]


def mrpc_row_of_three_columns(f, tmp_path):
    data = shutil.copytree(f["data"], tmp_path / "data")
    header, good = open(SAMPLE, encoding="utf-8-sig").read().splitlines()[:2]
    (data / "mrpc" / "dev.tsv").write_text(f"{header}\n{good}\n1\t12\tonly three columns\n", encoding="utf-8")
    return str(data), [str(data / "mrpc" / "dev.tsv"), "row 2", "3 columns"]


FINETUNE_CASES = {"squad-answer-start-outside-its-context": answer_outside_context,
                  "squad-question-missing": question_missing,
                  "squad-answer-start-a-string": answer_start_a_string,
                  "mrpc-row-of-three-columns": mrpc_row_of_three_columns}


@pytest.mark.heavy
@pytest.mark.parametrize("make", FINETUNE_CASES.values(), ids=list(FINETUNE_CASES))
def test_finetune_data_of_the_wrong_shape_is_bad_input_before_any_work(files, tmp_path, make):
    """The full sizes read the SQuAD files of --data-dir: every file is read, and refused, in seconds, before
    the checkpoint is built or TensorFlow starts; nothing is written."""
    data, words = make(files, tmp_path)
    out = str(tmp_path / "out")
    t0 = time.monotonic()
    bad_input(files, ["finetune", "--data-dir", data, "--report-dir", out], words, out)
    assert time.monotonic() - t0 < 60


# ---------------------------------------------------------------------------------------------
# export-onnx: a small vocabulary, a folder as --output, a candidate that fails, and signals.

@pytest.mark.heavy
def test_export_onnx_of_a_small_vocabulary_traces_ids_inside_it(files, tmp_path):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    out = str(tmp_path / "model.onnx")
    proc = run(files, ["export-onnx", "--candidate", f"bert_torch:{files['weights']}", "--bert-config",
                       files["config"], "--output", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(out) and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.heavy
def test_export_onnx_to_a_folder_is_bad_input_and_leaves_it_as_it_was(files, tmp_path):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    folder = tmp_path / "out"
    folder.mkdir()
    bad_input(files, ["export-onnx", "--candidate", f"bert_torch:{files['weights']}", "--bert-config",
                      files["config"], "--output", str(folder)], [str(folder), "folder"], str(folder / "x.onnx"))
    assert os.listdir(tmp_path) == ["out"] and os.listdir(folder) == []


@pytest.mark.heavy
def test_export_onnx_of_a_candidate_failing_in_its_trace_leaves_nothing(files, tmp_path):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    out = str(tmp_path / "model.onnx")
    bad_input(files, ["export-onnx", "--candidate", "module:hostile:forward_raises", "--bert-config", files["config"],
                      "--output", out], ["--candidate module:hostile:forward_raises", "cannot be exported to ONNX",
                                         "the forward failed"], out)
    assert os.listdir(tmp_path) == []


@pytest.mark.heavy
@pytest.mark.parametrize("signum, codes", [(signal.SIGTERM, (-signal.SIGTERM, 143)),
                                           (signal.SIGINT, (-signal.SIGINT, 130))], ids=["SIGTERM", "SIGINT"])
def test_export_onnx_ended_by_a_signal_while_writing_leaves_no_temporary(files, tmp_path, signum, codes):
    """The candidate's forward sleeps inside the trace, so the signal comes while the temporary file exists."""
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    out = tmp_path / "model.onnx"
    proc = run(files, ["export-onnx", "--candidate", "module:hostile:slow", "--bert-config", files["config"],
                       "--output", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, "no temporary was ever written"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in codes, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
