"""``make bench`` (parity/checks/bench.py): its command line refuses bad input before timing anything, its
arithmetic (interleaved medians, the ratios beside issue #13's targets) is what it says, its picture is
written whole or not at all, and the whole command runs end to end. No timing is asserted: timings are
not tests."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from parity import inputs
from parity.checks import bench
from parity.checks.options import BenchOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, flag", [
    (["--shapes", "small"], "--shapes small"),
    (["--shapes", ""], "--shapes ''"),
    (["--shapes", " , "], "--shapes"),
    (["--batch-size", "0"], "--batch-size: 0"),
    (["--batch-size", "257"], "--batch-size: 257"),
    (["--seq-len", "513"], "--seq-len: 513"),
    (["--repeats", "0"], "--repeats: 0"),
    (["--repeats", "101"], "--repeats: 101"),
    (["--shapes", "large", "--batch-size", "256", "--seq-len", "512"], "--shapes large"),
])
def test_a_bad_flag_is_one_line_naming_it_before_anything_is_made(tmp_path, capsys, argv, flag):
    out = tmp_path / "bench"
    assert bench.main([*argv, "--report-dir", str(out), "--no-commands"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
    assert not out.exists()   # refused before the report folder was even made


def test_the_report_folder_is_checked_before_timing(tmp_path, capsys):
    a_file = tmp_path / "bench.json"
    a_file.write_text("{}")
    assert bench.main(["--report-dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: argument --report-dir: {a_file}: exists and is not a folder")
    below_a_file = a_file / "sub"
    assert bench.main(["--report-dir", str(below_a_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: argument --report-dir: {below_a_file}: ") and "is not a folder" in err, err


def test_memory_is_bounded_from_the_shape_before_building_it(tmp_path, monkeypatch):
    """The estimate grows with the model and with batch x length: BERT-base fits where BERT-large does not,
    and the same shape is refused once the batch is large enough."""
    opts = BenchOptions(shapes="base", batch_size=8, seq_len=128, repeats=3, no_tf=True, no_commands=True,
                        report_dir=str(tmp_path / "out"))
    need = bench.bench_bytes(bench.shape_config("base"), 8, 128, with_tf=False)
    assert 8 << 30 < need < 12 << 30   # BERT-base's 110M parameters in three models and two optimizers, activations
    monkeypatch.setattr(inputs, "available_memory", lambda: need + 1)
    monkeypatch.setattr(inputs, "resident_bytes", lambda: 0)   # a fresh process: all of it still to allocate
    assert bench.checked_shapes(opts) == ["base"]
    with pytest.raises(bench.BadInput, match=r"^--shapes large at --batch-size 8 x --seq-len 128"):
        bench.checked_shapes(opts.replace(shapes="minilm,large"))
    with pytest.raises(bench.BadInput, match=r"^--shapes base at --batch-size 9"):
        bench.checked_shapes(opts.replace(batch_size=9))


def test_bert_large_at_2_x_384_is_refused_on_24_gib_before_anything_is_timed(tmp_path, monkeypatch, capsys):
    """The run the kernel killed at 24.3 GB resident (signal 9, no report): three training contenders with their
    optimizers, TF's pool and the forward rounds' leftovers need far more; refused, exit 2, one line naming the
    estimate, nothing built or timed."""
    monkeypatch.setattr(inputs, "available_memory", lambda: 24 << 30)
    monkeypatch.setattr(inputs, "resident_bytes", lambda: 0)
    monkeypatch.setattr(bench, "bench_shape", lambda *a: pytest.fail("a shape was built"))
    monkeypatch.setattr(bench, "interleaved_rounds", lambda *a: pytest.fail("something was timed"))
    out = tmp_path / "bench"
    assert bench.main(["--shapes", "large", "--batch-size", "2", "--seq-len", "384", "--report-dir", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    need = bench.bench_bytes(bench.shape_config("large"), 2, 384, commands=True)
    assert need > 30 << 30
    assert len(lines) == 1 and lines[0].startswith(
        "error: --shapes large at --batch-size 2 x --seq-len 384: the bench (the training contenders together, and "
        f"the commands it runs) needs about {need / 2**30:.1f} GiB, 24.0 GiB is available; "), lines
    assert not out.exists()


def test_interleaved_times_each_contender_once_per_round_in_turn(monkeypatch):
    """One warm-up call each, then rounds of A, B, C in turn; the median of each one's rounds (a fake clock
    that each contender advances by its own scripted durations)."""
    clock, calls = [0.0], []
    durations = {"A": [9.0, 1.0, 5.0, 3.0], "B": [7.0, 2.0, 2.0, 8.0], "C": [0.0, 4.0, 6.0, 1.0]}

    def contender(name):
        def run():
            calls.append(name)
            clock[0] += durations[name].pop(0)
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    rounds = bench.interleaved_rounds({k: contender(k) for k in "ABC"}, repeats=3)
    assert calls == list("ABC") * 4   # the warm-up round, then three timed rounds
    assert rounds == {"A": [1.0, 5.0, 3.0], "B": [2.0, 2.0, 8.0], "C": [4.0, 6.0, 1.0]}   # the warm-up (9, 7, 0) not
    assert bench.medians(rounds) == {"A": 3.0, "B": 2.0, "C": 4.0}


def test_ratios_are_the_same_run_quotients_of_the_targets():
    fwd = {"bert_torch fast path": 0.6, "bert_torch tapped path": 0.9, "HF eager": 1.0, "HF sdpa": 0.8,
           "GEMM floor": 0.55, "GEMM floor (oneDNN)": 0.5, "official TF graph": 1.2}
    train = {"bert_torch + BertAdam": 3.0, "HF sdpa + AdamW": 4.0, "official TF + AdamWeightDecay": 3.75}
    cost = {"compare": {"seconds": 9.0}, "diagnose": {"seconds": 18.0}}
    r = bench.ratios(fwd, train, cost)
    expected = {"forward: fast path / fastest HF": 0.6 / 0.8, "forward: fast path / GEMM floor": 0.6 / 0.5,
                "forward: tapped path / fast path": 0.9 / 0.6, "training step: bert_torch / HF + AdamW": 0.75,
                "forward: fast path / official TF": 0.5, "training step: bert_torch / official TF": 0.8,
                "compare (whole command) / one TF + one PyTorch forward": 5.0,
                "diagnose (whole command) / one TF + one PyTorch forward": 10.0, "diagnose / compare": 2.0}
    assert r.keys() == expected.keys()
    assert all(math.isclose(r[k], v) for k, v in expected.items()), r
    assert set(bench.TARGETS) <= set(r)   # every target has its ratio when TF is timed
    without_tf = bench.ratios({k: v for k, v in fwd.items() if k != "official TF graph"}, train, {})
    assert "training step: bert_torch / official TF" not in without_tf


def test_each_ratio_is_also_taken_round_by_round():
    """The spread printed beside each target: the ratio of the two contenders timed in the same round, round
    by round (forward rounds for forward ratios, training rounds for training ones); a load spike in round 2
    moves that round's times, and its ratio only as far as it hits the two contenders unequally."""
    fwd = {"bert_torch fast path": [0.6, 1.2, 0.7], "bert_torch tapped path": [0.9, 0.9, 0.9],
           "HF eager": [1.0, 1.0, 1.0], "HF sdpa": [0.8, 1.5, 0.7], "GEMM floor": [0.5, 1.0, 0.5]}
    train = {"bert_torch + BertAdam": [3.0, 2.0, 4.0], "HF sdpa + AdamW": [4.0, 4.0, 4.0]}
    r = bench.round_ratios(fwd, train)
    expected = {"forward: fast path / fastest HF": [0.6 / 0.8, 1.2 / 1.0, 1.0],
                "forward: fast path / GEMM floor": [1.2, 1.2, 1.4],
                "forward: tapped path / fast path": [1.5, 0.75, 0.9 / 0.7],
                "training step: bert_torch / HF + AdamW": [0.75, 0.5, 1.0]}
    assert r.keys() == expected.keys()
    assert all(len(r[k]) == len(v) and all(map(math.isclose, r[k], v)) for k, v in expected.items()), r
    line = bench.verdict("forward: fast path / fastest HF", 0.84, r["forward: fast path / fastest HF"])
    assert line == "  (target <= 0.85: met; rounds 0.75-1.20, 1 of 3 within)"
    assert bench.verdict("forward: fast path / GEMM floor", 1.2, [1.2, 1.3]).endswith(
        "met; rounds 1.20-1.30, 1 of 2 within)")
    assert bench.verdict("forward: tapped path / fast path", 1.5, [1.5]) == ""   # no target, no verdict
    assert "NOT met" in bench.verdict("training step: bert_torch / HF + AdamW", 1.01, [])


def _result(shape: str) -> dict:
    return {"shape": shape, "batch_size": 2, "seq_len": 8, "forward_seconds": {"a": 0.1, "b": 0.2},
            "training_step_seconds": {"a": 0.3, "b": 0.5}}


def test_the_plot_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "bench.png"
    bench.plot([_result("minilm"), _result("base")], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.unlink()
    from matplotlib.figure import Figure

    def half_then_fail(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        bench.plot([_result("minilm")], str(path))
    assert os.listdir(tmp_path) == []   # neither the half picture nor its temporary


@pytest.mark.heavy
def test_the_whole_command_runs_and_writes_its_ratios(tmp_path):
    """A tiny real run (MiniLM, 2 x 8, one round, TF included): exit 0, every contender timed, every ratio of
    the targets finite and positive, bench.json and bench.png written."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "parity.checks.bench", "--shapes", "minilm", "--batch-size", "2",
                           "--seq-len", "8", "--repeats", "1", "--no-commands", "--report-dir", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    (r,) = data["results"]
    assert {"bert_torch fast path", "bert_torch tapped path", "HF eager", "HF sdpa", "GEMM floor",
            "official TF graph"} <= set(r["forward_seconds"])
    assert set(r["training_step_seconds"]) == {"bert_torch + BertAdam", "HF sdpa + AdamW",
                                               "official TF + AdamWeightDecay"}
    assert all(0 < r["ratios"][k] < math.inf for k in bench.TARGETS), r["ratios"]
    assert all(len(r["ratio_rounds"][k]) >= 1 for k in bench.TARGETS)   # --repeats 1: one forward round, 3 training
    assert "rounds" in proc.stdout and "within)" in proc.stdout
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
