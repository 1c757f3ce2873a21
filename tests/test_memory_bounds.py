"""Every pre-flight memory estimate is an upper bound of the peak it guards, and not a loose one.

``parity.inputs.run_bytes`` (compare, diagnose, dump; in memory and spilled), ``parity.checks.bench.bench_bytes`` and
``parity.finetune.memory.finetune_bytes`` are pure functions of the sizes: the quick tests check what they
count and that the commands refuse, with the numbers, what would not fit. The heavy ones run the real commands
at several small sizes, each in a fresh process whose peak is measured (its own VmHWM; while it has children,
as a spilled run's TF worker, the memory of them all together, sampled), and hold each estimate to at least
the measured peak and at most 4 times it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from bert_torch.modeling import BertConfig
from parity import inputs
from parity.checks import bench
from parity.finetune.suite import FULL, QUICK
from parity.finetune import memory as finetune_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1 << 30


def config(H: int, L: int, N: int, I: int, V: int = 30522, P: int = 512) -> BertConfig:
    return BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=N,
                      intermediate_size=I, max_position_embeddings=P, type_vocab_size=2)


BASE, LARGE = bench.shape_config("base"), bench.shape_config("large")


# --- the estimates, as functions of the sizes ----------------------------------------------------------------

def test_run_estimates_grow_with_every_size_and_order_the_commands():
    c = config(256, 4, 8, 1024)
    for command in ("compare", "diagnose", "dump"):
        small, wider, longer = (inputs.run_bytes(c, B, T, command) for B, T in ((8, 128), (16, 128), (8, 256)))
        deeper = inputs.run_bytes(dataclasses.replace(c, num_hidden_layers=8), 8, 128, command)
        assert inputs.RUNTIME_BYTES < small < min(wider, longer, deeper)   # the runtime before any weight or tap
    sizes = (BASE, 8, 128)
    assert inputs.run_bytes(*sizes, "dump") < inputs.run_bytes(*sizes, "compare") < inputs.run_bytes(*sizes, "diagnose")
    # Spilled, memory holds a streamed group of taps instead of every run: far less at a large size.
    for command in ("compare", "diagnose"):
        assert inputs.run_bytes(LARGE, 8, 384, command, spilled=True) < inputs.run_bytes(LARGE, 8, 384, command) / 2


def test_the_spilled_estimate_counts_the_stream_group_tf_fetches():
    from parity.sides import base as sides
    assert inputs.STREAM_GROUP_BYTES == sides.STREAM_GROUP_BYTES


def test_run_estimates_cover_the_peaks_measured_at_bert_large():
    """Peaks measured on a BERT-large-shaped checkpoint (docs/comparing.md, "Memory"): spilled compare at 8 x 384 6.40 GB,
    spilled diagnose at 8 x 128 5.11 GB and at 8 x 384 5.79 GB: each estimate above, and within 4x."""
    for command, T, peak in (("compare", 384, 6.40e9), ("diagnose", 128, 5.11e9), ("diagnose", 384, 5.79e9)):
        need = inputs.run_bytes(LARGE, 8, T, command, spilled=True)
        assert peak < need < 4 * peak, (command, T, need / 1e9)


def test_a_run_too_large_for_the_memory_is_refused_with_the_numbers(monkeypatch):
    c = config(256, 4, 8, 1024)
    need = inputs.run_bytes(c, 8, 256, "diagnose")
    monkeypatch.setattr(inputs, "available_memory", lambda: need - 1)
    monkeypatch.setattr(inputs, "resident_bytes", lambda: 0)
    inputs.check_run_size(8, 256, 0, c, "compare")   # compare needs less: it fits
    with pytest.raises(inputs.InputError) as e:
        inputs.check_run_size(8, 256, 0, c, "diagnose")
    msg = str(e.value)
    assert msg.startswith("--batch-size 8 x --seq-len 256 x 4 layers: diagnose needs about ")
    assert f"{need / GiB:.1f} GiB" in msg and f"{(need - 1) / GiB:.1f} GiB is available" in msg
    # What the process holds already of the runtime the estimate counts (TF imported: a test session) is not to
    # be allocated again; what it holds beyond that share is not counted.
    monkeypatch.setattr(inputs, "resident_bytes", lambda: GiB)
    inputs.check_run_size(8, 256, 0, c, "diagnose")
    monkeypatch.setattr(inputs, "resident_bytes", lambda: 100 * GiB)
    monkeypatch.setattr(inputs, "available_memory", lambda: need - 2 * GiB)
    with pytest.raises(inputs.InputError, match=r"diagnose needs about .* \(1\.6 GiB of it held already\)"):
        inputs.check_run_size(8, 256, 0, c, "diagnose")


def test_the_bench_estimate_counts_every_contender_where_they_coexist():
    need = bench.bench_bytes(BASE, 8, 128)
    params = BASE.num_parameters()
    # Four training contenders' worth of weights and optimizer state at least: the old count (52 bytes per
    # parameter) is far below.
    assert need > bench.MEMORY_MARGIN * (bench.TRAINING_BYTES_PER_PARAMETER[True] * params) > 52 * params
    assert bench.bench_bytes(BASE, 8, 128, with_tf=False) < need < bench.bench_bytes(BASE, 8, 128, commands=True)
    assert need < bench.bench_bytes(BASE, 16, 128) and need < bench.bench_bytes(BASE, 8, 256)
    # The run the kernel killed at 24.3 GB resident: estimated well above it.
    assert bench.bench_bytes(LARGE, 2, 384) > 30 * GiB


def test_the_finetune_estimate_is_its_largest_phase(monkeypatch):
    minilm = config(384, 6, 12, 1536)
    need, what = finetune_memory.finetune_bytes(FULL, minilm)
    assert what == "the SQuAD gradient check at 16 x 384"
    assert finetune_memory.finetune_bytes(QUICK, minilm)[0] < need
    big = dataclasses.replace(QUICK, train_batch_size=256, train_seq_len=512)
    need_big, what_big = finetune_memory.finetune_bytes(big, minilm)
    assert what_big == "--train-batch-size x --train-seq-len at 256 x 512" and need_big > 100 * GiB
    seeds = dataclasses.replace(QUICK, seeds=2, seed_batch_size=64, seed_seq_len=256)
    assert finetune_memory.finetune_bytes(seeds, minilm)[1] == "--seed-batch-size x --seed-seq-len at 64 x 256"


def test_finetune_refuses_a_run_that_would_not_fit_before_any_work(tmp_path, monkeypatch, capsys):
    from parity.finetune import suite
    from parity.inputs import SAMPLE
    monkeypatch.setattr(inputs, "available_memory", lambda: 24 * GiB)
    data = tmp_path / "data"
    (data / "mrpc").mkdir(parents=True)
    for split in ("train", "dev"):   # the committed MRPC sample as both splits (--quick: SQuAD's samples)
        shutil.copyfile(SAMPLE, data / "mrpc" / f"{split}.tsv")
    out = tmp_path / "ft"
    assert suite.main(["--data-dir", str(data), "--report-dir", str(out), "--quick", "--train-batch-size", "256",
                       "--train-seq-len", "512"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --train-batch-size x --train-seq-len at 256 x 512: the fine-tuning checks "
                               "need about ") and "24.0 GiB is available" in lines[0], lines
    assert not out.exists()


# --- measured: real runs in fresh processes -----------------------------------------------------------------

# Runs ``-m MODULE ARGS`` or ``-c CODE`` and writes {"peak": bytes} to OUT: the larger of its own VmHWM and, while
# it has children (a spilled run's TF worker), the sampled memory of it and every descendant together: each one's
# anonymous memory as its proportional share (a child's copy of its parent, before it execs, counted once) and
# its resident file pages whole (the libraries both map, counted twice: a measure on the high side).
CHILD = r"""
import atexit, json, os, runpy, sys, threading, time

def fields(pid, name):
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.rstrip().endswith("kB")}
    except (OSError, IndexError, ValueError):
        return {}

def footprint(pid):
    m = fields(pid, "smaps_rollup")
    return m.get("Pss_Anon", 0) + m.get("Rss", 0) - m.get("Anonymous", 0)

def descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        found += frontier
    return found

me, sampled = os.getpid(), [0]

def sample():
    while True:
        kids = descendants(me)
        if kids:
            sampled[0] = max(sampled[0], sum(footprint(p) for p in [me, *kids]))
        time.sleep(0.05)

threading.Thread(target=sample, daemon=True).start()
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps({"peak": max(sampled[0], fields(me, "status")["VmHWM"])})))
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3]] + sys.argv[4:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    code, sys.argv = sys.argv[3], ["-c"]
    exec(compile(code, "<measured>", "exec"), {"__name__": "__main__"})
"""

BENCH_RUN = """
from parity.checks import bench
bench.SHAPES["probe"] = dict(hidden_size={H}, num_hidden_layers={L}, num_attention_heads={N}, intermediate_size={I})
bench.bench_shape("probe", {B}, {T}, 1, True, False)
"""


def measure(tmp, name: str, argv: list[str]) -> dict:
    out = os.path.join(tmp, f"{name}.peak.json")
    proc = subprocess.run([sys.executable, "-c", CHILD, out, *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode in (0, 1), f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    with open(out) as f:
        return json.load(f)


def tiny_checkpoint(d: str, c: BertConfig) -> dict:
    """A random model of ``c`` as safetensors and as an official TF checkpoint (bert_torch's writer), with a
    vocabulary of ``c.vocab_size`` word pieces."""
    import torch
    from bert_torch.convert import main as convert_main
    from bert_torch.weights import build_model, model_tensors, write_weights
    os.makedirs(d)
    torch.manual_seed(0)
    weights, config_path = os.path.join(d, "model.safetensors"), os.path.join(d, "bert_config.json")
    write_weights(weights, model_tensors(build_model(c, None)))
    c.to_json_file(config_path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(x) for x in range(ord("a"), ord("z") + 1)]
    words += [f"w{i}" for i in range(c.vocab_size - len(words))]
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    assert convert_main(["--to-tf", "--torch-weights", weights, "--bert-config", config_path,
                         "--output", os.path.join(d, "bert_model.ckpt")]) == 0
    return {"dir": d, "weights": weights}


# (name, config, batch, seq, what): compare, diagnose and dump on a checkpoint whose taps outweigh its weights
# (the attention's [B,N,T,T] at 8 x 256), compare also spilled (TF in a worker beside it); the bench's whole
# shape run (forward rounds, then three training contenders, a warm-up and three rounds) at two sizes, one
# whose 9.6 million parameters outweigh its activations.
TAPS = config(64, 2, 8, 256, V=5000, P=256)
CASES = [   # the longest first: two run at a time
    ("bench", config(256, 2, 4, 1024), 4, 128, "bench"),
    ("bench-tiny", config(64, 1, 2, 256), 2, 16, "bench"),
    ("diagnose", TAPS, 8, 256, "diagnose"),
    ("compare-spilled", TAPS, 8, 256, "compare-spilled"),
    ("compare", TAPS, 8, 256, "compare"),
    ("dump", TAPS, 8, 256, "dump"),
]


def estimate(c: BertConfig, B: int, T: int, what: str) -> int:
    if what == "bench":
        return bench.bench_bytes(c, B, T)
    if what == "compare-spilled":
        return inputs.run_bytes(c, B, T, "compare", spilled=True)
    return inputs.run_bytes(c, B, T, what)


def run_case(tmp: str, name: str, c: BertConfig, B: int, T: int, what: str) -> dict:
    if what == "bench":
        code = BENCH_RUN.format(H=c.hidden_size, L=c.num_hidden_layers, N=c.num_attention_heads,
                                I=c.intermediate_size, B=B, T=T)
        return measure(tmp, name, ["-c", code])
    ckpt = tiny_checkpoint(os.path.join(tmp, f"{name}-ckpt"), c)
    size = ["--batch-size", str(B), "--seq-len", str(T)]
    if what == "dump":
        argv = ["dump", "--tf-checkpoint", ckpt["dir"], "--output", os.path.join(tmp, f"{name}.golden"), *size]
    else:
        command = what.split("-")[0]
        argv = [command, "--tf-checkpoint", ckpt["dir"], "--torch-weights", ckpt["weights"], "--report-dir",
                os.path.join(tmp, name), *size, "--spill", "always" if what.endswith("spilled") else "never"]
    return measure(tmp, name, ["-m", "parity", *argv])


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    """Every case's measured peak, two runs at a time (each peak is its own process's)."""
    tmp = str(tmp_path_factory.mktemp("memory"))
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_case, tmp, name, c, B, T, what) for name, c, B, T, what in CASES}
        return {name: f.result()["peak"] for name, f in futures.items()}


@pytest.mark.heavy
@pytest.mark.parametrize("name, c, B, T, what", CASES, ids=[case[0] for case in CASES])
def test_each_estimate_bounds_the_measured_peak_and_is_within_4x(measured, name, c, B, T, what):
    peak, need = measured[name], estimate(c, B, T, what)
    print(f"{name}: {c.num_hidden_layers} x {c.hidden_size}, {B} x {T}: peak {peak / GiB:.2f} GiB, "
          f"estimate {need / GiB:.2f} GiB, ratio {need / peak:.2f}")
    assert peak <= need <= 4 * peak, (name, peak / GiB, need / GiB)


@pytest.mark.slow
def test_the_quick_finetune_suite_stays_under_its_estimate(tmp_path):
    """The whole ``python -m parity.finetune --quick`` (a few minutes): its peak against ``finetune_bytes``."""
    from parity.files import default_data_dir
    from parity.minilm import minilm_dir
    data = default_data_dir()
    if data is None or not os.path.isfile(os.path.join(data, "mrpc", "train.tsv")):
        pytest.skip("no MRPC data under ../shared/data")
    peak = measure(str(tmp_path), "finetune", ["-m", "parity.finetune", "--quick", "--report-dir",
                                               str(tmp_path / "ft")])["peak"]
    need, _ = finetune_memory.finetune_bytes(QUICK, BertConfig.from_json_file(os.path.join(minilm_dir(),
                                                                                          "config.json")))
    print(f"finetune --quick: peak {peak / GiB:.2f} GiB, estimate {need / GiB:.2f} GiB, ratio {need / peak:.2f}")
    assert peak <= need <= 4 * peak
