"""Fuzz and fault suite (issue #12): corrupted inputs and failing writes, each command in a real process.

Hypothesis corrupts a tiny official checkpoint (index, data, bert_config.json, the `checkpoint`
state file), PyTorch weights (safetensors headers that lie about shapes and offsets, truncation,
flipped bytes), vocabularies, configs, sentence files and golden files (truncate, flip bytes,
overwrite, lie about shapes and offsets, UTF-16, extreme numbers), runs the command in a
subprocess under a time limit and an address-space limit (``RLIMIT_AS``), and asserts what the
contract promises whatever the input:

* the exit code is 0, 1 or 2 (never a crash, never killed by the limits);
* no ``Traceback`` on stderr; on exit 2 every stderr line is an ``error: `` line naming a culprit,
  and there is at least one;
* on exit 2 nothing is left at the output's final name; never a temporary beside it; a report
  written (exit 0 or 1) is strict JSON valid against ``parity/schemas/report.schema.json``;
* on exit 2 the first error line names one of the input files that may be at fault.

``make test`` runs a handful of examples (derandomized); ``-m slow`` runs many more
(``FUZZ_EXAMPLES``, default 40 per target). Every run is counted in ``COUNTS``, printed at the
end of the module (``-s`` shows it).
"""
from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from parity.compare.schema import check_json_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")
TIME_LIMIT_S = 120           # a command on these tiny files takes seconds; past this it hangs
MEMORY_LIMIT = 6 << 30       # address space: torch maps ~2 GiB at import; a 37 GiB allocation must not happen
SLOW_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
COUNTS = collections.Counter()   # runs per target and outcome


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an RLIMIT_FSIZE test: writes fail with EFBIG instead


def run_command(argv: list[str], outputs: list[str], target: str, extra_limits=None,
                named: list[str] = ()) -> subprocess.CompletedProcess:
    """Runs ``python argv`` under the limits and asserts the contract's promises about its ending;
    on exit 2 the error names one of the ``named`` files (the inputs that may be at fault)."""
    def preexec():
        _limits()
        if extra_limits:
            extra_limits()
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, env=env,
                              timeout=TIME_LIMIT_S, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        COUNTS[(target, "timeout")] += 1
        raise AssertionError(f"{argv}: still running after {TIME_LIMIT_S} s")
    COUNTS[(target, proc.returncode)] += 1
    err = proc.stderr
    assert proc.returncode in (0, 1, 2), f"{argv}: exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{argv}: traceback\n{err[-3000:]}"
    if proc.returncode == 2:
        lines = [l for l in err.splitlines() if l.strip()]
        assert lines and all(l.startswith("error: ") for l in lines), f"{argv}: stderr on exit 2:\n{err[-3000:]}"
        if named:
            assert any(os.path.basename(p) in lines[0] for p in named), f"{argv}: names no input file: {lines[0]}"
    if proc.returncode == 2:   # bad input writes nothing (exit 1 is a verdict: its report is the point)
        for out in outputs:
            assert not os.path.exists(out), f"{argv}: exit {proc.returncode} left {out} behind"
    for out in outputs:   # a report that was written is strict JSON and valid against its schema
        if out.endswith("report.json") and os.path.exists(out):
            check_json_file(out, "report")
    for out in outputs:
        d = os.path.dirname(out)
        stray = [n for n in os.listdir(d) if n.endswith(".tmp")] if os.path.isdir(d) else []
        assert not stray, f"{argv}: temporaries left in {d}: {stray}"
    return proc


# ---------------------------------------------------------------------------------------------
# Corruptions

def flip(data: bytes, positions: list[int]) -> bytes:
    b = bytearray(data)
    for p in positions:
        if b:
            b[p % len(b)] ^= 0xFF
    return bytes(b)


byte_corruption = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8)),
    st.tuples(st.just("overwrite"), st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64))),
    st.tuples(st.just("empty"), st.none()),
    st.tuples(st.just("utf16"), st.none()),
)


def corrupt_bytes(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[:int(len(data) * arg)]
    if kind == "flip":
        return flip(data, arg)
    if kind == "overwrite":
        at, blob = arg
        at = at % max(len(data), 1)
        return data[:at] + blob + data[at + len(blob):]
    if kind == "empty":
        return b""
    try:
        return data.decode("utf-8").encode("utf-16")
    except UnicodeDecodeError:
        return b"\xff\xfe" + data


EXTREME = st.sampled_from([0, -1, 10**9, 2**63, 1e308, -1e308, 1.5, "12", None, [], {"a": {"b": [1]}}, True,
                           float("nan"), float("inf")])
CONFIG_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "initializer_range", "hidden_act"]


def lie_config(path: str, field: str, value) -> None:
    d = json.load(open(path))
    d[field] = value
    with open(path, "w") as f:
        f.write(json.dumps(d))   # NaN/Infinity tokens allowed here on purpose: Python's json reads them


def lie_index(prefix: str, name_pick: int, shape, offset_delta: int, size_delta: int, size=None) -> None:
    """Rewrites PREFIX.index with one entry lying about its shape, offset or size."""
    from bert_torch import tf_checkpoint as tfc
    path = prefix + ".index"
    items = tfc._read_table(path)
    k = 1 + name_pick % (len(items) - 1)
    key, value = items[k]
    e = tfc._parse_entry(value)
    new_shape = tuple(shape) if shape is not None else e.shape
    items[k] = (key, tfc._encode_entry(e.dtype, new_shape, max(e.offset + offset_delta, 0),
                                       max(e.size + size_delta, 0) if size is None else size, e.crc))
    with open(path, "wb") as f:
        f.write(tfc._build_table(items))


def lie_safetensors(path: str, pick: int, shape, offsets) -> None:
    """Rewrites a safetensors header: one tensor claims another shape and/or other offsets."""
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    entry = header[names[pick % len(names)]]
    if shape is not None:
        entry["shape"] = list(shape)
    if offsets is not None:
        entry["data_offsets"] = list(offsets)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


shapes = st.one_of(st.none(), st.lists(st.integers(-2, 100000), min_size=0, max_size=3))


# ---------------------------------------------------------------------------------------------
# Fixtures: the files to corrupt

@pytest.fixture(scope="module")
def base(random_checkpoint, tmp_path_factory):
    """A tiny official checkpoint, its conversion, and a golden file (the PyTorch side's taps in the
    golden format: the format is what is fuzzed here, not the numbers)."""
    from bert_torch.modeling import BertConfig
    from parity.inputs import make_inputs
    from parity.sides.base import GoldenSide, TorchSide
    ck = random_checkpoint(TINY, perturb=0.02)
    config = BertConfig.from_json_file(ck["bert_config"])
    inputs = make_inputs(ck["vocab"], 2, 8, 0, vocab_size=config.vocab_size, type_vocab_size=2)
    side = TorchSide.from_weights(ck["torch_weights"], config)
    golden = str(tmp_path_factory.mktemp("golden") / "tiny.golden")
    GoldenSide.write(golden, inputs, side.run(inputs), {
        "tap_names": list(side.tap_names), "head": None, "num_labels": 2, "bert_config": config.to_dict(),
        "reference": "fuzz fixture (PyTorch taps in the golden format)", "inputs": dict(inputs.meta)})
    return dict(ck, golden=golden)


def fresh(base: dict, tmp_path, n: int) -> dict:
    """A private copy of the checkpoint directory and files for example ``n``."""
    work = tmp_path / f"case{n}"
    shutil.copytree(base["dir"], work / "ckpt")
    shutil.copy(base["torch_weights"], work / "w.safetensors")
    shutil.copy(base["golden"], work / "g.golden")
    ck = str(work / "ckpt")
    return {"work": str(work), "dir": ck, "prefix": os.path.join(ck, "bert_model.ckpt"),
            "config": os.path.join(ck, "bert_config.json"), "vocab": os.path.join(ck, "vocab.txt"),
            "weights": str(work / "w.safetensors"), "golden": str(work / "g.golden"),
            "data": os.path.join(ck, "bert_model.ckpt.data-00000-of-00001"),
            "sentences": str(work / "pairs.tsv")}


def rewrite(path: str, how) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(corrupt_bytes(data, how))


# One corruption of one input of one command: (target, how), drawn by hypothesis.
checkpoint_case = st.one_of(
    st.tuples(st.just("index_bytes"), byte_corruption),
    st.tuples(st.just("data_bytes"), byte_corruption),
    st.tuples(st.just("config_bytes"), byte_corruption),
    st.tuples(st.just("config_value"), st.tuples(st.sampled_from(CONFIG_FIELDS), EXTREME)),
    st.tuples(st.just("index_lie"), st.tuples(st.integers(0, 100), shapes, st.integers(-64, 1 << 36),
                                              st.integers(-64, 1 << 36))),
    st.tuples(st.just("state_file"), st.sampled_from(["../elsewhere/bert_model.ckpt", "/etc/bert_model.ckpt",
                                                      "sub/../../x", "\\377\\376", "", '"', "a" * 5000])),
)
to_tf_case = st.one_of(
    st.tuples(st.just("weights_bytes"), byte_corruption),
    st.tuples(st.just("weights_bin_bytes"), byte_corruption),
    st.tuples(st.just("weights_lie"), st.tuples(st.integers(0, 100), shapes,
                                                st.one_of(st.none(), st.tuples(st.integers(-5, 1 << 40),
                                                                               st.integers(-5, 1 << 40))))),
    st.tuples(st.just("vocab_bytes"), byte_corruption),
    st.tuples(st.just("config_value"), st.tuples(st.sampled_from(CONFIG_FIELDS), EXTREME)),
)
cell = st.one_of(st.just(""), st.text(max_size=30), st.sampled_from(["\x00", " ", "[SEP]", "\u200b", "a" * 200000]))
sentences_case = st.tuples(st.just("sentences"), st.tuples(
    st.lists(st.lists(cell, min_size=0, max_size=6), min_size=0, max_size=5),
    st.sampled_from(["utf-8", "utf-16", "utf-8"])))
golden_case = st.one_of(
    st.tuples(st.just("golden_bytes"), byte_corruption),
    st.tuples(st.just("golden_lie"), st.tuples(st.integers(0, 1000), shapes,
                                               st.one_of(st.none(), st.tuples(st.integers(-5, 1 << 40),
                                                                              st.integers(-5, 1 << 40))))),
)


def apply_case(f: dict, case) -> None:
    target, how = case
    if target == "index_bytes":
        rewrite(f["prefix"] + ".index", how)
    elif target == "data_bytes":
        rewrite(f["data"], how)
    elif target == "config_bytes":
        rewrite(f["config"], how)
    elif target == "config_value":
        lie_config(f["config"], *how)
    elif target == "index_lie":
        lie_index(f["prefix"], *how)
    elif target == "state_file":
        os.makedirs(os.path.join(os.path.dirname(f["dir"]), "elsewhere"), exist_ok=True)
        shutil.copy(f["prefix"] + ".index", os.path.join(os.path.dirname(f["dir"]), "elsewhere", "bert_model.ckpt.index"))
        with open(os.path.join(f["dir"], "checkpoint"), "w") as fh:
            fh.write(f'model_checkpoint_path: "{how}"\n')
    elif target == "weights_bytes":
        rewrite(f["weights"], how)
    elif target == "weights_bin_bytes":   # a torch state dict (zip), loaded with weights_only=True
        from bert_torch.weights import read_weights, write_weights
        f["weights"] = f["weights"][:-len(".safetensors")] + ".bin"
        write_weights(f["weights"], read_weights(f["weights"][:-len(".bin")] + ".safetensors"))
        rewrite(f["weights"], how)
    elif target == "sentences":
        rows, encoding = how
        with open(f["sentences"], "wb") as fh:
            fh.write(("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(
                "\t".join(r) for r in rows) + "\n").encode(encoding, errors="surrogatepass"))
    elif target == "weights_lie":
        lie_safetensors(f["weights"], *how)
    elif target == "vocab_bytes":
        rewrite(f["vocab"], how)
    elif target == "golden_bytes":
        rewrite(f["golden"], how)
    elif target == "golden_lie":
        lie_safetensors(f["golden"], *how)


def convert_case(f: dict, case) -> None:
    apply_case(f, case)
    out = os.path.join(f["work"], "out", "model.bin")
    proc = run_command(["-m", "bert_torch.convert", "--tf-checkpoint", f["dir"], "--output", out], [out],
                       "convert:" + case[0], named=[f["dir"], f["config"]])
    if case[0] == "state_file" and ".." in case[1]:
        assert proc.returncode == 2 and "outside" in proc.stderr, proc.stderr   # reads stay where pointed


def to_tf_case_run(f: dict, case) -> None:
    apply_case(f, case)
    out_dir = os.path.join(f["work"], "tfout")
    prefix = os.path.join(out_dir, "bert_model.ckpt")
    outputs = [prefix + ".index", prefix + ".data-00000-of-00001", os.path.join(out_dir, "vocab.txt"),
               os.path.join(out_dir, "bert_config.json"), os.path.join(out_dir, "checkpoint")]
    run_command(["-m", "bert_torch.convert", "--to-tf", "--torch-weights", f["weights"], "--bert-config",
                 f["config"], "--vocab-file", f["vocab"], "--output", prefix], outputs, "to-tf:" + case[0],
                named=[f["weights"], f["config"], f["vocab"]])


def golden_case_run(f: dict, case) -> None:
    apply_case(f, case)
    report_dir = os.path.join(f["work"], "report")
    run_command(["-m", "parity", "compare", "--golden", f["golden"], "--torch-weights", f["weights"],
                 "--report-dir", report_dir], [os.path.join(report_dir, "report.json"),
                                               os.path.join(report_dir, "report.md")], "golden:" + case[0],
                named=[f["golden"], f["weights"]])


QUICK = settings(max_examples=int(os.environ.get("FUZZ_QUICK_EXAMPLES", "2")), derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MANY = settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_n = iter(range(10**9))


@pytest.mark.heavy
@QUICK
@given(case=checkpoint_case)
def test_fuzz_convert_quick(base, tmp_path, case):
    convert_case(fresh(base, tmp_path, next(_n)), case)


@pytest.mark.heavy
@QUICK
@given(case=st.one_of(to_tf_case, golden_case))
def test_fuzz_to_tf_and_golden_quick(base, tmp_path, case):
    f = fresh(base, tmp_path, next(_n))
    (golden_case_run if case[0].startswith("golden") else to_tf_case_run)(f, case)


@pytest.mark.slow
@MANY
@example(case=("state_file", "../elsewhere/bert_model.ckpt"))
@example(case=("config_value", ("num_hidden_layers", 1_000_000_000)))
@example(case=("config_value", ("hidden_dropout_prob", "0.1")))
@example(case=("config_value", ("hidden_act", {"a": {"b": [1]}})))
@example(case=("config_bytes", ("utf16", None)))
@example(case=("index_lie", (0, [100000, 100000], 0, 100000 * 100000 * 4)))
@given(case=checkpoint_case)
def test_fuzz_convert(base, tmp_path, case):
    convert_case(fresh(base, tmp_path, next(_n)), case)


@pytest.mark.slow
@MANY
@example(case=("vocab_bytes", ("utf16", None)))
@example(case=("weights_lie", (0, [100000, 100000], None)))
@given(case=to_tf_case)
def test_fuzz_to_tf(base, tmp_path, case):
    to_tf_case_run(fresh(base, tmp_path, next(_n)), case)


def sentences_case_run(f: dict, case) -> None:
    """compare --sentences: a file refused is exit 2 before TensorFlow starts; one accepted runs both sides."""
    apply_case(f, case)
    report_dir = os.path.join(f["work"], "report")
    run_command(["-m", "parity", "compare", "--tf-checkpoint", f["dir"], "--torch-weights", f["weights"],
                 "--sentences", f["sentences"], "--report-dir", report_dir, "--batch-size", "2", "--seq-len", "16"],
                [os.path.join(report_dir, "report.json")], "compare:sentences", named=[f["sentences"]])


@pytest.mark.slow
@settings(MANY, max_examples=max(SLOW_EXAMPLES // 4, 3))   # an accepted file runs TensorFlow: ~30 s
@example(case=("sentences", ([["1", "a", "b", "", ""]], "utf-8")))
@example(case=("sentences", ([["1", "a", "b", "The cat.", ""]], "utf-8")))
@example(case=("sentences", ([["1", "a", "b", "The cat.", "A dog."]], "utf-16")))
@example(case=("sentences", ([["1", "a", "b", "The cat sat on the mat.", "A dog ran home."]], "utf-8")))   # runs
@given(case=sentences_case)
def test_fuzz_sentences(base, tmp_path, case):
    sentences_case_run(fresh(base, tmp_path, next(_n)), case)


@pytest.mark.slow
@MANY
@given(case=golden_case)
def test_fuzz_golden(base, tmp_path, case):
    golden_case_run(fresh(base, tmp_path, next(_n)), case)


# ---------------------------------------------------------------------------------------------
# The named cases, as plain regression tests (each also a fuzz target above). In-process
# where the message is the point (no interpreter start-up), in a subprocess where the process is.

def convert_in_process(capsys, *argv) -> tuple[int, list[str]]:
    from bert_torch import convert
    code = convert.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [l for l in err.splitlines() if l.strip()]


def test_state_file_pointing_outside_is_refused(base, tmp_path, capsys):
    f = fresh(base, tmp_path, 0)
    apply_case(f, ("state_file", "../elsewhere/bert_model.ckpt"))
    out = os.path.join(f["work"], "x.safetensors")
    code, lines = convert_in_process(capsys, "--tf-checkpoint", f["dir"], "--output", out)
    assert code == 2 and len(lines) == 1 and "outside" in lines[0] and "elsewhere" in lines[0], lines
    assert not os.path.exists(out)
    # Passing that prefix explicitly is the user's choice, and works; the output records what was read.
    elsewhere = os.path.join(os.path.dirname(f["dir"]), "elsewhere")
    shutil.copy(f["data"], elsewhere)
    code, lines = convert_in_process(capsys, "--tf-checkpoint", os.path.join(elsewhere, "bert_model.ckpt"),
                                     "--bert-config", f["config"], "--output", out)
    assert code == 0, lines
    from safetensors import safe_open
    from bert_torch._io import sha256
    with safe_open(out, "np") as s:
        meta = s.metadata()
    assert meta["source_prefix"] == os.path.join(elsewhere, "bert_model.ckpt")
    assert meta["source_index_sha256"] == sha256(os.path.join(elsewhere, "bert_model.ckpt.index"))


def test_huge_index_claim_is_refused_before_allocating(base, tmp_path):
    """An entry claiming [100000, 100000] float32 (37 GiB), its size consistent with the shape: refused
    from the data file's size, in a process whose address space (6 GiB) could not hold the allocation."""
    f = fresh(base, tmp_path, 0)
    lie_index(f["prefix"], 0, (100000, 100000), 0, 0, size=100000 * 100000 * 4)
    out = os.path.join(f["work"], "x.safetensors")
    proc = run_command(["-m", "bert_torch.convert", "--tf-checkpoint", f["dir"], "--output", out], [out], "named")
    assert proc.returncode == 2 and "truncated" in proc.stderr and "40000000000" in proc.stderr, proc.stderr


def test_bad_vocab_with_to_tf_writes_nothing(base, tmp_path, capsys):
    f = fresh(base, tmp_path, 0)
    rewrite(f["vocab"], ("utf16", None))
    out_dir = os.path.join(f["work"], "tfout")
    prefix = os.path.join(out_dir, "bert_model.ckpt")
    code, lines = convert_in_process(capsys, "--to-tf", "--torch-weights", f["weights"], "--bert-config",
                                     f["config"], "--vocab-file", f["vocab"], "--output", prefix)
    assert code == 2 and len(lines) == 1 and f["vocab"] in lines[0] and "UTF-16" in lines[0], lines
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == []   # not even the checkpoint


def test_output_naming_a_directory(base, tmp_path, capsys):
    f = fresh(base, tmp_path, 0)
    out = os.path.join(f["work"], "out.bin")
    os.makedirs(out)
    code, lines = convert_in_process(capsys, "--tf-checkpoint", f["dir"], "--output", out)
    assert code == 2 and len(lines) == 1 and "out.bin: is a folder" in lines[0], lines
    assert os.listdir(out) == [] and [n for n in os.listdir(f["work"]) if n.endswith(".tmp")] == []


@pytest.mark.heavy
def test_full_disk_or_read_only_folder_is_one_line(base, tmp_path):
    """A read-only folder where permissions bind; a full disk (RLIMIT_FSIZE: writes fail with EFBIG as
    they would with ENOSPC) where they do not (root): exit 2, one line naming the output, nothing left."""
    f = fresh(base, tmp_path, 0)
    ro = os.path.join(f["work"], "ro")
    os.makedirs(ro)
    out = os.path.join(ro, "out.bin")
    os.chmod(ro, 0o555)
    limits = None
    if os.access(ro, os.W_OK):   # running as root: modes do not bind, so the disk fills instead
        os.chmod(ro, 0o755)
        limits = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # noqa: E731
    proc = run_command(["-m", "bert_torch.convert", "--tf-checkpoint", f["dir"], "--output", out], [out],
                       "write-fault", extra_limits=limits)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "out.bin" in lines[0], proc.stderr
    assert os.listdir(ro) == []


@pytest.mark.heavy
def test_sigterm_during_bin_conversion_leaves_nothing(base, tmp_path):
    """A SIGTERM arriving while torch.save is half-way through the .bin: no file at the final name."""
    f = fresh(base, tmp_path, 0)
    out = os.path.join(f["work"], "model.bin")
    code = f"""
import os, signal, sys, torch
real_save = torch.save
def save_then_die(obj, fh, *a, **k):
    fh.write(b"PK partial")
    os.kill(os.getpid(), signal.SIGTERM)
    real_save(obj, fh, *a, **k)
torch.save = save_then_die
from bert_torch import convert
sys.exit(convert.main(["--tf-checkpoint", {f["dir"]!r}, "--output", {out!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=TIME_LIMIT_S,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert not os.path.exists(out) and [n for n in os.listdir(f["work"]) if n.endswith(".tmp")] == []


def teardown_module(module):
    if COUNTS:
        total = sum(COUNTS.values())
        print(f"\nfuzz: {total} command runs: " + ", ".join(f"{t} exit {c}: {n}" for (t, c), n in sorted(
            COUNTS.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))))
