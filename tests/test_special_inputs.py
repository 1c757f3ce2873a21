"""Inputs that are not regular files are refused by every reader, at once, in one line naming the file.

A FIFO (opening it for reading blocks until a writer comes), a pipe (``--sentences <(cat f.tsv)``: its bytes
can be read once only), ``/dev/zero`` (reads without end), ``/dev/null`` (reads as empty), a folder and a
symbolic link loop, each put where a command or a library function reads an input: as a flag's file, as a file
found beside a checkpoint (``vocab.txt``, ``bert_config.json``, the index, the data shard, the ``checkpoint``
state file), inside an HF folder, as task data. Commands exit 2 with one ``error:`` line naming the file and
what it is; library functions raise ``InputFileError`` (or their module's ValueError carrying its line). And the
sha256 a report records of an input is that of the bytes the run read, not of a second read.

A FIFO test cannot hang: commands run in a subprocess with a time limit, and in-process a watchdog opens the
FIFO for writing if a reader is still waiting on it after ``HANG_S`` (the test then fails, naming the reader).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bert_torch import _io
from bert_torch._io import InputFileError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_S = 10          # a reader still waiting on a FIFO after this long is rescued, and its test fails
COMMAND_S = 120      # one interpreter running every command case (start-up, imports, then about 40 refusals)
TSV = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
       "1\t1\t2\tthe cat sat on the mat.\tthe dog ran.\n"
       "0\t3\t4\ta tree is tall.\tnone of it is.\n")


# ---------------------------------------------------------------------------------------------
# The things put where an input is read

def _fifo(path: str) -> None:
    os.mkfifo(path)


def _link_to(device: str):
    def make(path: str) -> None:
        os.symlink(device, path)
    return make


def _link_loop(path: str) -> None:
    name = os.path.basename(path)
    os.symlink(name + ".loop", path)   # path -> path.loop -> path
    os.symlink(name, path + ".loop")


# kind -> (how to make it at a path, the words one of which the error line says, the path itself when a
# command is given it directly: /dev/zero as --sentences, as in the report that found these)
KINDS = {
    "fifo": (_fifo, ("FIFO or pipe",), None),
    "dev_zero": (_link_to("/dev/zero"), ("a device",), "/dev/zero"),
    "dev_null": (_link_to("/dev/null"), ("a device",), "/dev/null"),
    "folder": (os.mkdir, ("directory", "folder"), None),
    "link_loop": (_link_loop, ("symbolic links", "no such file"), None),
}
SPECIAL = ("fifo", "dev_zero", "dev_null")   # what a reader of an optional file may not skip either


def place(kind: str, path: str) -> str:
    """Puts a ``kind`` at ``path`` (replacing the file there); returns ``path``."""
    if os.path.lexists(path):
        os.remove(path)
    KINDS[kind][0](path)
    return path


def copy_checkpoint(ck: dict, where) -> str:
    return str(shutil.copytree(ck["dir"], where))


@contextlib.contextmanager
def rescue_if_blocked(path: str):
    """Yields a list that names ``path`` if something opened that FIFO for reading and was still waiting on it
    after ``HANG_S``: a writer then opens and closes it, so the reader gets end-of-file and the test goes on."""
    rescued, done = [], threading.Event()

    def rescue():
        if done.wait(HANG_S):
            return
        while not done.is_set():
            with contextlib.suppress(OSError):   # ENXIO until a reader has it open
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                rescued.append(path)
            done.wait(0.05)

    is_fifo = os.path.lexists(path) and stat.S_ISFIFO(os.lstat(path).st_mode)
    thread = threading.Thread(target=rescue, daemon=True)
    if is_fifo:
        thread.start()
    try:
        yield rescued
    finally:
        done.set()
        if is_fifo:
            thread.join()


def check_line(line: str, path: str, kind: str) -> None:
    assert "\n" not in line.strip() and "Traceback" not in line, line
    assert path in line, f"the line does not name {path}: {line}"
    assert any(w in line for w in KINDS[kind][1]), f"the line does not say what {path} is ({kind}): {line}"


# ---------------------------------------------------------------------------------------------
# Library readers, called directly: name -> (where the thing goes and the call that reads it, error, kinds)

READERS = {}


def reader(error: type = InputFileError, kinds=tuple(KINDS)):
    def register(fn):
        READERS[fn.__name__] = (fn, error, kinds)
        return fn
    return register


@reader()
def read_bytes(tmp, ck):
    path = str(tmp / "input.txt")
    return path, lambda: _io.read_bytes(path, "input")


@reader()
def read_text(tmp, ck):
    path = str(tmp / "input.txt")
    return path, lambda: _io.read_text(path, "input")


@reader()
def read_json(tmp, ck):
    path = str(tmp / "input.json")
    return path, lambda: _io.read_json(path, "input")


@reader()
def sha256(tmp, ck):
    path = str(tmp / "input.bin")
    return path, lambda: _io.sha256(path)


@reader()
def bert_config(tmp, ck):
    from bert_torch.modeling import BertConfig
    path = str(tmp / "bert_config.json")
    return path, lambda: BertConfig.from_json_file(path)


@reader()
def vocab(tmp, ck):
    from bert_torch.tokenization import FullTokenizer
    path = str(tmp / "vocab.txt")
    return path, lambda: FullTokenizer(path)


@reader()
def safetensors_weights(tmp, ck):
    from bert_torch.weights import read_weights
    path = str(tmp / "w.safetensors")
    return path, lambda: read_weights(path)


@reader()
def streamed_safetensors_weights(tmp, ck):
    from bert_torch.weights import open_weights
    path = str(tmp / "w.safetensors")
    return path, lambda: open_weights(path)


@reader()
def bin_weights(tmp, ck):
    from bert_torch.weights import read_weights
    path = str(tmp / "w.bin")
    return path, lambda: read_weights(path)


@reader()
def checkpoint_index(tmp, ck):
    from bert_torch.tf_checkpoint import read_checkpoint
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "bert_model.ckpt.index"), lambda: read_checkpoint(d)


@reader()
def checkpoint_index_listed(tmp, ck):
    from bert_torch.tf_checkpoint import list_variables
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "bert_model.ckpt.index"), lambda: list_variables(os.path.join(d, "bert_model.ckpt"))


@reader()
def checkpoint_data(tmp, ck):
    from bert_torch.tf_checkpoint import read_checkpoint
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "bert_model.ckpt.data-00000-of-00001"), lambda: read_checkpoint(d)


@reader()
def checkpoint_data_streamed(tmp, ck):
    from bert_torch.tf_checkpoint import open_checkpoint
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "bert_model.ckpt.data-00000-of-00001"), lambda: open_checkpoint(d)


# A state file that is missing, a folder or unreadable is ignored (the checkpoint is found by its index);
# a FIFO or a device there is refused rather than opened.
@reader(kinds=SPECIAL)
def checkpoint_state_file(tmp, ck):
    from bert_torch.tf_checkpoint import checkpoint_prefix
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "checkpoint"), lambda: checkpoint_prefix(d)


@reader()
def vocab_copied_into_hf_folder(tmp, ck):
    from bert_torch.convert import convert_tf_to_torch
    d = copy_checkpoint(ck, tmp / "ck")
    return os.path.join(d, "vocab.txt"), lambda: convert_tf_to_torch(d, str(tmp / "hf"), output_format="hf")


@reader()
def hf_folder_weights(tmp, ck):
    from bert_torch.convert import convert_tf_to_torch
    from bert_torch.hf_dir import read_hf_dir
    convert_tf_to_torch(ck["dir"], str(tmp / "hf"), output_format="hf")
    return str(tmp / "hf" / "model.safetensors"), lambda: read_hf_dir(str(tmp / "hf"))


@reader(error=ValueError)
def glue_data(tmp, ck):
    from bert_torch.glue import MrpcProcessor
    return str(tmp / "dev.tsv"), lambda: MrpcProcessor().get_dev_examples(str(tmp))


@reader(error=ValueError)
def squad_data(tmp, ck):
    from bert_torch.squad import read_squad_examples
    path = str(tmp / "dev-v1.1.json")
    return path, lambda: read_squad_examples(path, False)


@reader()
def extract_features_input(tmp, ck):
    from bert_torch.extract_features import read_lines
    path = str(tmp / "input.txt")
    return path, lambda: read_lines(path)


@reader()
def token_parity_data(tmp, ck):
    from parity.tokens import mrpc_texts
    path = str(tmp / "train.tsv")
    return path, lambda: mrpc_texts(path, "mrpc/train.tsv")


@reader()
def golden_file(tmp, ck):
    from parity.sides.base import GoldenSide
    path = str(tmp / "g.golden")
    return path, lambda: GoldenSide(path)


@reader(error=ValueError)
def hf_candidate_config(tmp, ck):
    from parity.candidates.hf import read_hf_config
    (tmp / "hf").mkdir()
    return str(tmp / "hf" / "config.json"), lambda: read_hf_config(str(tmp / "hf"), "--candidate hf:x")


@reader(kinds=SPECIAL)   # folders and broken links in an HF folder are transformers' to judge, if it opens them
def hf_candidate_files(tmp, ck):
    from parity.candidates.hf import check_hf_files
    (tmp / "hf").mkdir()
    return str(tmp / "hf" / "model.safetensors"), lambda: check_hf_files(str(tmp / "hf"))


@reader()
def ppb_candidate_state(tmp, ck):
    from parity.candidates.ppb import read_state
    path = str(tmp / "pytorch_model.bin")
    return path, lambda: read_state(path, "--candidate ppb:x")


@reader(kinds=("fifo", "dev_zero", "dev_null", "link_loop"))   # a folder is onnxruntime's to refuse
def onnx_candidate(tmp, ck):
    pytest.importorskip("onnxruntime")
    from bert_torch.modeling import BertConfig
    from parity.candidates.spec import CandidateSpec
    from parity.candidates.onnx import OnnxSide
    path = str(tmp / "m.onnx")
    return path, lambda: OnnxSide(CandidateSpec("onnx", path), BertConfig.from_json_file(ck["config"]))


@reader(error=ValueError, kinds=SPECIAL + ("folder",))   # an absent ledger is no ledger
def release_waivers(tmp, ck):
    from parity.release.waivers import load_waivers
    path = str(tmp / "waivers.toml")
    return path, lambda: load_waivers(path)


@reader(error=ValueError, kinds=SPECIAL + ("folder",))   # an absent baseline is no baseline
def release_baseline(tmp, ck):
    from parity.release.ratchet import load_baseline
    path = str(tmp / "baseline.json")
    return path, lambda: load_baseline(path)


@pytest.mark.parametrize("name,kind", [(n, k) for n, (_, _, kinds) in READERS.items() for k in kinds])
def test_reader_refuses_what_is_not_a_regular_file(tmp_path, tiny_checkpoint, name, kind):
    make, error, _ = READERS[name]
    target, read = make(tmp_path, tiny_checkpoint)
    place(kind, target)
    start = time.monotonic()
    with rescue_if_blocked(target) as rescued:
        try:
            read()
        except error as e:
            caught = e
        else:
            caught = None
    assert not rescued, f"{name} opened the FIFO {target} and waited on it"
    assert caught is not None, f"{name} read {target} ({kind}) without a word"
    check_line(str(caught), target, kind)
    assert time.monotonic() - start < HANG_S


def test_reference_tf_checks_what_tensorflow_opens(tmp_path, tiny_checkpoint):
    """TensorFlow opens the config and the checkpoint's files itself: each is checked before it does."""
    pytest.importorskip("tensorflow")
    from reference_tf import ReferenceError
    from reference_tf._official import check_checkpoint_files, load_config
    d = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    config, prefix = os.path.join(d, "bert_config.json"), os.path.join(d, "bert_model.ckpt")
    for target, read in ((config, lambda: load_config(config)),
                         (prefix + ".index", lambda: check_checkpoint_files(prefix)),
                         (prefix + ".data-00000-of-00001", lambda: check_checkpoint_files(d))):
        place("fifo", target)
        with rescue_if_blocked(target) as rescued, pytest.raises(ReferenceError) as e:
            read()
        assert not rescued
        check_line(str(e.value), target, "fifo")
        os.remove(target)
        shutil.copy(os.path.join(tiny_checkpoint["dir"], os.path.basename(target)), target)


# ---------------------------------------------------------------------------------------------
# Whole commands, in subprocesses

def _run(argv: list[str], **kw) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, env=env, **kw)
    return proc, time.monotonic() - start


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.heavy
@pytest.mark.parametrize("how", ["fifo", "pipe"])
def test_compare_refuses_a_fifo_or_a_pipe_as_sentences(tmp_path, tiny_checkpoint, how):
    """The report that found these: ``--sentences`` a FIFO hung for ever; ``<(cat f.tsv)`` was read twice."""
    fds = ()
    if how == "fifo":
        sentences = place("fifo", str(tmp_path / "pairs.tsv"))
    else:   # what a shell's process substitution gives the command: /dev/fd/N, the read end of a pipe
        r, w = os.pipe()
        os.write(w, TSV.encode())
        os.close(w)
        fds, sentences = (r,), f"/dev/fd/{r}"
    report = tmp_path / "report"
    try:
        proc, _ = _run(["-m", "parity", "compare", "--tf-checkpoint", tiny_checkpoint["dir"], "--torch-weights",
                        tiny_checkpoint["weights"], "--sentences", sentences, "--report-dir", str(report),
                        "--batch-size", "2", "--seq-len", "16"], timeout=COMMAND_S, pass_fds=fds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"compare --sentences {sentences} ({how}) still running after {COMMAND_S} s")
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    check_line(error_line(proc.stderr), sentences, "fifo")
    assert not report.exists()


# Runs each case's command in one interpreter (each start-up costs seconds), stderr captured per case; prints a
# line when a case starts, so that a case that hangs is named when the time limit ends the run.
DRIVER = r"""
import contextlib, io, json, sys, time
from bert_torch import convert
from parity import frontdoor
mains = {"compare": frontdoor.main, "convert": convert.main}
for case in json.loads(sys.stdin.read()):
    print(json.dumps({"started": case["id"]}), flush=True)
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = mains[case["main"]](case["argv"])
        except SystemExit as e:
            code = e.code
    print(json.dumps({"id": case["id"], "code": code, "err": err.getvalue(),
                      "seconds": time.monotonic() - start}), flush=True)
"""

# A file the command finds beside the checkpoint -> the command that reads it.
BESIDE = {"vocab.txt": "compare", "bert_config.json": "compare", "bert_model.ckpt.index": "convert",
          "bert_model.ckpt.data-00000-of-00001": "convert", "checkpoint": "convert"}


def command_cases(tmp, ck) -> list[dict]:
    cases = []
    small = ["--batch-size", "2", "--seq-len", "16"]

    def add(role: str, kind: str, argv: list[str], target: str, output: str) -> None:
        cases.append({"id": f"{role} as {kind}", "main": argv[0] if argv[0] == "compare" else "convert",
                      "argv": argv, "target": target, "kind": kind, "output": output})

    for kind, (_, _, literal) in KINDS.items():
        work = tmp / kind
        work.mkdir()
        special = literal or place(kind, str(work / "special"))
        out = lambda role: str(tmp / "out" / f"{role}-{kind}")   # noqa: E731
        add("--sentences", kind, ["compare", "--tf-checkpoint", ck["dir"], "--torch-weights", ck["weights"],
                                  "--sentences", special, "--report-dir", out("sentences"), *small],
            special, out("sentences"))
        add("--torch-weights", kind, ["compare", "--tf-checkpoint", ck["dir"], "--torch-weights", special,
                                      "--report-dir", out("weights"), *small], special, out("weights"))
        add("--candidate bert_torch:", kind, ["compare", "--tf-checkpoint", ck["dir"], "--candidate",
                                              f"bert_torch:{special}", "--report-dir", out("candidate"), *small],
            special, out("candidate"))
        add("--golden", kind, ["compare", "--golden", special, "--torch-weights", ck["weights"],
                               "--report-dir", out("golden")], special, out("golden"))
        for name, command in BESIDE.items():
            if name == "checkpoint" and kind not in SPECIAL:
                continue   # an unreadable state file is ignored; only a FIFO or a device there is refused
            d = copy_checkpoint(ck, work / f"ck-{name}")
            target = place(kind, os.path.join(d, name))
            output = out(name) + (".safetensors" if command == "convert" else "")
            argv = (["compare", "--tf-checkpoint", d, "--torch-weights", ck["weights"], "--report-dir", output, *small]
                    if command == "compare" else ["--tf-checkpoint", d, "--output", output])
            add(f"{name} beside the checkpoint", kind, argv, target, output)
    return cases


@pytest.mark.heavy
def test_every_command_input_refuses_what_is_not_a_regular_file(tmp_path, tiny_checkpoint):
    cases = command_cases(tmp_path, tiny_checkpoint)
    try:
        proc, _ = _run(["-c", DRIVER], input=json.dumps(cases), timeout=COMMAND_S)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        started = [json.loads(line)["started"] for line in out.splitlines() if '"started"' in line]
        pytest.fail(f"still running after {COMMAND_S} s, in case {started[-1] if started else '(none started)'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines()) if "id" in r}
    assert len(results) == len(cases), proc.stderr[-3000:]
    failures = []
    for case in cases:
        got = results[case["id"]]
        try:
            assert got["code"] == 2, f"exit {got['code']}: {got['err'][-2000:]}"
            check_line(error_line(got["err"]), case["target"], case["kind"])
            assert got["seconds"] < HANG_S, f"took {got['seconds']:.1f} s"
            assert not os.path.lexists(case["output"]), f"left {case['output']} behind"
        except AssertionError as e:
            failures.append(f"{case['id']}: {e}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Provenance: the hash recorded is of the bytes used

def _same_size_other_bytes(path, data: bytes) -> None:
    """Rewrites ``path`` with other bytes of the same size and puts its modification time back: to a later
    hash the file looks unchanged since it was read, so only a hash of the bytes read can give the old digest."""
    before = os.stat(path)
    with open(path, "wb") as f:
        f.write(bytes(b ^ 0x5A for b in data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.binary(max_size=4096), more=st.binary(min_size=1, max_size=64))
def test_sha256_is_of_the_bytes_read(tmp_path, first, more):
    path = str(tmp_path / "input.bin")
    with open(path, "wb") as f:
        f.write(first)
    assert _io.read_bytes(path, "input") == first
    _same_size_other_bytes(path, first)
    assert _io.sha256(path) == hashlib.sha256(first).hexdigest()
    with open(path, "ab") as f:   # changed since it was read (its size): hashed as it is now
        f.write(more)
    with open(path, "rb") as f:
        assert _io.sha256(path) == hashlib.sha256(f.read()).hexdigest()


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
sentence = st.lists(words, min_size=1, max_size=6).map(" ".join)


@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(sentence, sentence), min_size=1, max_size=6))
def test_report_hash_of_sentences_is_of_the_bytes_used(tmp_path, tiny_checkpoint, pairs):
    """compare's path to ``report.json``'s ``environment.sha256``: ``prepare`` reads the sentences and builds the
    inputs from them, ``environment`` hashes the files afterwards; the hash is of what ``prepare`` read."""
    from parity.environment import environment
    from parity.compare.options import CompareOptions
    from parity.compare.prepare import prepare
    data = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            + "".join(f"1\t{i}\t{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(pairs))).encode()
    sentences = tmp_path / "pairs.tsv"
    sentences.write_bytes(data)
    opts = CompareOptions.parse(["--tf-checkpoint", tiny_checkpoint["dir"], "--torch-weights",
                                 tiny_checkpoint["weights"], "--sentences", str(sentences), "--report-dir",
                                 str(tmp_path / "report"), "--batch-size", "2", "--seq-len", "16"])
    prepared = prepare(opts)
    _same_size_other_bytes(sentences, data)
    used = hashlib.sha256(data).hexdigest()
    assert environment("cpu", prepared.files)["sha256"]["sentences"] == used
    assert prepared.inputs.meta["sentences_sha256"] == used
