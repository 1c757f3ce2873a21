"""Streaming comparison (issue #13): runs spilled to disk tap by tap give the report of the in-memory
comparison, number for number, on several configurations, heads, a precision tier and a planted fault;
TensorFlow block by block gives its end-to-end taps bit for bit; and the spilled run's memory stays near one
layer's taps where the in-memory one holds every run (measured in child processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_torch.modeling import BertConfig
from parity.checkpoints import CONFIGS, SEQ
from parity.compare.core import compare_sides
from parity.inputs import make_inputs, tap_elements
from parity.numerics.metrics import get_profile
from parity.numerics.precision import Tier
from parity.sides.base import TFSide, TorchSide
from parity.sides.tapstore import LazyTaps, TapStore


def sides(ck: dict, batch: int, seq: int, head=None, tier: Tier = Tier()):
    config = BertConfig.from_json_file(ck["bert_config"])
    inputs = make_inputs(ck["vocab"], batch, seq, 0, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size)
    return (TFSide(ck["prefix"], config, head=head), TorchSide.from_weights(ck["torch_weights"], config, tier=tier),
            inputs)


def same(a: dict, b: dict) -> bool:
    b = {k: v for k, v in b.items() if k != "memory"}
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.mark.heavy
@pytest.mark.parametrize("name,head,tier", [("tiny-1layer", None, "fp32"), ("odd-heads-2layer", "classifier", "fp32"),
                                            ("3layer-headsize-3", "squad", "bf16")])
def test_spilled_comparison_is_the_in_memory_one(random_checkpoint, tmp_path, name, head, tier):
    ck = random_checkpoint(CONFIGS[name], head=head, perturb=0.02)
    reference, candidate, inputs = sides(ck, 3, SEQ[name], head, Tier(tier))
    try:
        held = compare_sides(reference, candidate, inputs, get_profile("fp32-cpu"))
        spilled = compare_sides(reference, candidate, inputs, get_profile("fp32-cpu"), spill=True,
                                spill_dir=str(tmp_path))
    finally:
        reference.close()
    assert held["verdict"] == "pass" and len(held["taps"]) > 5 + 11 * CONFIGS[name]["num_hidden_layers"]
    assert same(held, spilled)
    assert spilled["memory"]["spilled_to_disk_bytes"] > 0 and os.listdir(tmp_path) == []   # cleaned up


def test_a_planted_fault_reads_the_same_spilled(random_checkpoint, tmp_path):
    """The non-vacuous half: a failing comparison (LayerNorm gamma of layer 1 nudged) fails alike."""
    ck = random_checkpoint(CONFIGS["odd-heads-2layer"], perturb=0.02)
    reference, candidate, inputs = sides(ck, 2, 24)
    with_fault = candidate.source.encoder.layer[1].output.LayerNorm.weight
    with_fault.data[3] += 1e-3
    try:
        held = compare_sides(reference, candidate, inputs, get_profile("fp32-cpu"))
        spilled = compare_sides(reference, candidate, inputs, get_profile("fp32-cpu"), spill=True,
                                spill_dir=str(tmp_path))
    finally:
        reference.close()
    assert held["verdict"] == "fail" and held["first_divergence"] == "layer_1/output"
    assert same(held, spilled)


@pytest.mark.heavy
def test_tensorflow_block_by_block_is_its_end_to_end_run(minilm):
    """Each layer (or run of layers, up to ``stream_group_bytes`` of taps) fed the graph's own output of the
    layer before: every tap bit-identical to one run, one layer per TF run, two or three, and all six."""
    reference, _, inputs = sides(minilm, 2, 32)
    config = BertConfig.from_json_file(minilm["bert_config"])
    per_layer = tap_elements(config, 2, 32) * 4 // config.num_hidden_layers
    try:
        whole = reference.run(inputs)
        for group_bytes in (0, int(2.5 * per_layer), 10 * per_layer):
            reference.stream_group_bytes = group_bytes
            streamed = {}
            reference.stream(inputs, streamed.__setitem__)
            assert list(streamed) == list(whole) == reference.tap_names
            assert all(np.array_equal(whole[n], streamed[n]) for n in whole), group_bytes
    finally:
        reference.close()


def test_tap_store_round_trip_and_errors(tmp_path):
    with TapStore(str(tmp_path), "x") as store:
        a = np.arange(12, dtype=np.float64).reshape(3, 4)
        store.put("layer_0/output", a)
        store.put("nan", np.array([np.nan, np.inf], np.float32))
        assert list(store) == ["layer_0/output", "nan"] and store.nbytes == a.nbytes + 8
        assert np.array_equal(store["layer_0/output"], a) and store["layer_0/output"].dtype == np.float64
        assert np.isnan(store["nan"][0]) and np.isinf(store["nan"][1]) and "missing" not in store
        with pytest.raises(ValueError, match="stored twice"):
            store.put("nan", a)
        # Fed taps read lazily: asking whether a tap is fed loads nothing; reading it loads it then.
        loads = []
        fed = LazyTaps(["nan", "layer_0/output", "nan"], lambda n: loads.append(n) or store[n])
        assert list(fed) == ["nan", "layer_0/output"] and "nan" in fed and "embeddings/output" not in fed
        assert loads == []
        assert np.array_equal(fed["layer_0/output"], a) and loads == ["layer_0/output"]
        with pytest.raises(KeyError):
            fed["embeddings/output"]
    assert os.listdir(tmp_path) == []


def test_the_tf_worker_is_fed_from_the_spilled_file_itself(tmp_path):
    """A fed tap that already lies in a spilled run as float32 reaches the TF worker by its file, not as a
    copy the parent writes (BERT-large diagnose at 8 x 384: about 0.6 GB less written); any other fed value
    (in memory, or stored in another dtype) is written to the run's folder, as float32."""
    from parity.sides.tf_worker import IsolatedTFSide
    with TapStore(str(tmp_path), "cand") as store:
        store.put("layer_0/output", np.ones((2, 3), np.float32))
        store.put("layer_1/output", np.ones((2, 3), np.float64))
        fed = LazyTaps(["layer_0/output", "layer_1/output"], store.__getitem__, file=store.file)
        assert fed.file("layer_0/output") == store.file("layer_0/output") and fed.file("pooler/output") is None
        spare = [str(tmp_path / f"spare{k}.npy") for k in range(3)]
        assert IsolatedTFSide._feed_file(fed, "layer_0/output", spare[0]) == store.file("layer_0/output")
        assert IsolatedTFSide._feed_file(fed, "layer_1/output", spare[1]) == spare[1]
        assert IsolatedTFSide._feed_file({"layer_0/output": np.zeros(3)}, "layer_0/output", spare[2]) == spare[2]
        assert not os.path.exists(spare[0])
        for k in (1, 2):
            assert np.load(spare[k]).dtype == np.float32
        assert np.array_equal(np.load(spare[1]), np.ones((2, 3)))


CHILD = """
import json, sys
from bert_torch.modeling import BertConfig
from parity.compare.core import compare_sides
from parity.inputs import make_inputs
from parity.numerics.metrics import get_profile
from parity.sides.base import TFSide, TorchSide
ck, spill = json.loads(sys.argv[1]), sys.argv[2] == "spill"
config = BertConfig.from_json_file(ck["bert_config"])
inputs = make_inputs(ck["vocab"], 8, 256, 0, vocab_size=config.vocab_size, type_vocab_size=config.type_vocab_size)
ref, cand = TFSide(ck["prefix"], config), TorchSide.from_weights(ck["torch_weights"], config)
ref.stream_group_bytes = 0   # one layer per TF run: this small model's whole run is under the default's group
def peak_kib():
    # VmHWM, this process's own peak: its ru_maxrss would start at the RSS of the parent that forked it (the
    # maximum is carried across exec), here a pytest worker far larger than this child's growth.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
ref.run(inputs); cand.run(inputs)   # warm: both frameworks' own buffers, before the baseline is read
base = peak_kib()
r = compare_sides(ref, cand, inputs, get_profile("fp32-cpu"), spill=spill, spill_dir=sys.argv[3])
print(json.dumps({"verdict": r["verdict"], "peak_kib": peak_kib(), "base_kib": base}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_spilled_memory_stays_near_one_layer(random_checkpoint, tmp_path):
    """4 layers of 8 heads at 8 x 256: each run's taps are ~0.3 GB; held in memory a comparison keeps the
    reference, the candidate and its float64 twin (~1.2 GB) at once, spilled it keeps a layer or two."""
    config = dict(CONFIGS["3layer-headsize-3"], num_hidden_layers=4, num_attention_heads=8, hidden_size=64,
                  max_position_embeddings=256)
    ck = random_checkpoint(config, perturb=0.02)
    one_run = tap_elements(BertConfig.from_dict(config), 8, 256) * 4
    grew = {}
    for mode in ("spill", "never"):
        env = {k: v for k, v in os.environ.items() if k != "BERT_PARITY_TF_CACHE"}   # TF computed, not replayed
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(ck), mode, str(tmp_path)],
                             capture_output=True, text=True, timeout=900, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["verdict"] == "pass"
        grew[mode] = (r["peak_kib"] - r["base_kib"]) * 1024
    assert grew["never"] > 2 * one_run, (grew, one_run)      # the in-memory comparison holds several runs
    assert grew["spill"] < 0.75 * one_run, (grew, one_run)   # the spilled one, less than one


@pytest.mark.heavy
def test_compare_command_spills_on_request_and_checks_the_folder(compare, random_checkpoint, tmp_path):
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    spilled = compare(ck["dir"], ck["torch_weights"], "--batch-size", "2", "--seq-len", "16", "--spill", "always",
                      "--spill-dir", str(tmp_path))
    held = compare(ck["dir"], ck["torch_weights"], "--batch-size", "2", "--seq-len", "16", "--spill", "never")
    assert spilled.code == held.code == 0 and spilled.report["memory"]["spilled_to_disk_bytes"] > 0
    assert "memory" not in held.report and spilled.report["taps"] == held.report["taps"]
    # The spilled run's reference came from a TF worker process: the same graph, described alike.
    assert spilled.report["sides"] == held.report["sides"]
    assert spilled.report["reference_precision"] == held.report["reference_precision"]
    bad = compare(ck["dir"], ck["torch_weights"], "--seq-len", "16", "--spill", "always",
                  "--spill-dir", str(tmp_path / "nowhere"))
    assert bad.code == 2 and bad.err.strip().splitlines() == [f"error: --spill-dir {tmp_path / 'nowhere'}: "
                                                               "not a writable folder"]


@pytest.mark.heavy
@pytest.mark.parametrize("fault", [None, "layer_1/output LayerNorm gamma"])
def test_spilled_diagnosis_is_the_in_memory_one(random_checkpoint, tmp_path, fault):
    """diagnose keeps its runs in a RunStore: spilled to disk, each run streamed (every block fed the other
    side's input as the stream reaches it), the diagnosis (culprit, hints, every tap and block row) is the
    in-memory one, with TF in process and with TF in a worker process serving all of the reference's runs;
    its repro is written from the spilled taps before they go."""
    from parity.compare.core import RunStore
    from parity.diagnose.algorithm import diagnose
    from parity.diagnose.repro import write_repro
    from parity.sides.tf_worker import IsolatedTFSide
    from bert_torch.convert import tf_to_torch
    from bert_torch.tf_checkpoint import read_checkpoint
    ck = random_checkpoint(CONFIGS["odd-heads-2layer"], perturb=0.02)
    reference, candidate, inputs = sides(ck, 2, 24)
    if fault:
        candidate.source.encoder.layer[1].output.LayerNorm.weight.data[3] += 1e-3
    config = BertConfig.from_json_file(ck["bert_config"])
    tf_weights, _ = tf_to_torch(read_checkpoint(ck["prefix"]), config)
    worker = IsolatedTFSide(ck["prefix"], config, work_dir=str(tmp_path), keep_alive=True)
    out = {}
    try:
        for mode, spill, side in (("memory", False, reference), ("spilled", True, reference),
                                  ("worker", True, worker)):
            with RunStore(inputs, spill=spill, spill_dir=str(tmp_path)) as store:
                d = diagnose(side, candidate, inputs, get_profile("fp32-cpu"), config=config,
                             tf_weights=tf_weights, store=store)
                repro = write_repro(d, str(tmp_path / f"repro-{mode}"), config, get_profile("fp32-cpu"), None)
                out[mode] = (json.dumps({k: v for k, v in d.items() if k not in ("seconds", "repro")}, sort_keys=True, default=str),
                             repro is not None)
        assert worker._runs == 3 and worker._proc is None   # end to end and two fed runs, then released
    finally:
        reference.close()
        worker.close()
    assert out["memory"] == out["spilled"] == out["worker"]
    d = json.loads(out["worker"][0])
    assert (d["culprit"], d["culprit_block"]) == (("weights", "layer_1/ffn") if fault else (None, None))
    assert out["worker"][1] == bool(fault)   # a repro for the culprit block, written from the spilled taps
    assert not [n for n in os.listdir(tmp_path) if n.startswith("bert-parity-")]   # the spilled runs are gone


CHILD_COMPARE = r"""
import json, sys
from parity import frontdoor
code = frontdoor.main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "tensorflow_imported": "tensorflow" in sys.modules}))
"""


@pytest.mark.heavy
def test_a_spilled_comparison_or_diagnosis_runs_tensorflow_in_a_worker_never_in_process(random_checkpoint, tmp_path):
    """Spilled, the comparing (or diagnosing) process never imports TensorFlow (its memory is the worker's,
    gone when the worker exits); held in memory, it does. Each in a fresh process."""
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    out = {}
    for command, mode in (("compare", "always"), ("compare", "never"), ("diagnose", "always")):
        argv = [command, "--tf-checkpoint", ck["dir"], "--torch-weights", ck["torch_weights"], "--batch-size", "2",
                "--seq-len", "16", "--spill", mode, "--spill-dir", str(tmp_path),
                "--report-dir", str(tmp_path / f"{command}-{mode}")]
        proc = subprocess.run([sys.executable, "-c", CHILD_COMPARE, json.dumps(argv)], capture_output=True, text=True)
        out[command, mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {("compare", "always"): {"code": 0, "tensorflow_imported": False},
                   ("compare", "never"): {"code": 0, "tensorflow_imported": True},
                   ("diagnose", "always"): {"code": 0, "tensorflow_imported": False}}
    assert [n for n in os.listdir(tmp_path) if n.startswith("bert-parity-")] == []   # workers' folders gone


@pytest.mark.heavy
def test_the_tf_worker_reports_bad_input_in_one_line(random_checkpoint, tmp_path):
    """A checkpoint that does not fit the config is the worker's one-line message, raised as bad input."""
    from parity.sides.tf_worker import IsolatedTFSide
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    config = BertConfig.from_json_file(ck["bert_config"])
    wrong = BertConfig.from_dict({**config.to_dict(), "intermediate_size": config.intermediate_size + 1})
    inputs = make_inputs(ck["vocab"], 2, 8, 0, vocab_size=config.vocab_size)
    with pytest.raises(ValueError) as e:
        IsolatedTFSide(ck["prefix"], wrong, work_dir=str(tmp_path)).stream(inputs, lambda n, v: None)
    assert "\n" not in str(e.value) and "intermediate" in str(e.value), str(e.value)
    assert os.listdir(tmp_path) == []   # the worker's folder is removed


@pytest.mark.heavy
def test_the_tf_worker_serves_runs_until_released_and_names_a_bad_feed(random_checkpoint, tmp_path):
    """One worker serves several runs (end to end, and fed a tap: the fed tap comes back as fed and moves what
    follows), a feed of an unknown tap is its one-line error while the worker carries on, and ``release`` ends
    it and removes its folder; its runs are the in-process TFSide's bit for bit."""
    from parity.sides.tf_worker import IsolatedTFSide
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    reference, _, inputs = sides(ck, 2, 8)
    config = BertConfig.from_json_file(ck["bert_config"])
    worker = IsolatedTFSide(ck["prefix"], config, work_dir=str(tmp_path), keep_alive=True)
    try:
        whole = reference.run(inputs)
        fed = {"layer_0/attention/output": whole["layer_0/attention/output"] * 1.5}
        want = reference.run(inputs, inject=fed)
        assert worker.run(inputs).keys() == whole.keys()
        got = worker.run(inputs, inject=fed)
        assert all(np.array_equal(got[n], want[n]) for n in want)
        assert np.array_equal(got["layer_0/attention/output"], fed["layer_0/attention/output"])
        assert not np.array_equal(got["layer_0/output"], whole["layer_0/output"])
        process = worker._proc
        with pytest.raises(ValueError, match="no tap named layer_7/output"):
            worker.run(inputs, inject={"layer_7/output": whole["layer_0/output"]})
        assert worker._proc is process and process.poll() is None   # the same worker, still serving
        assert all(np.array_equal(v, whole[k]) for k, v in worker.run(inputs).items())
    finally:
        reference.close()
        worker.release()
    assert process.poll() is not None and os.listdir(tmp_path) == []


@pytest.mark.heavy
def test_a_worker_killed_mid_run_is_one_line_naming_the_signal(random_checkpoint, tmp_path):
    """The out-of-memory killer ends a process with SIGKILL: the run ends with one line saying so and what to
    do (exit 2 through the commands' one mapping), never a traceback; the next run starts a fresh worker, and
    nothing is left in the work folder."""
    import signal
    from bert_torch.commands import error_lines
    from parity.sides.tf_worker import IsolatedTFSide, WorkerKilled
    ck = random_checkpoint(CONFIGS["tiny-1layer"], perturb=0.02)
    _, _, inputs = sides(ck, 2, 8)
    worker = IsolatedTFSide(ck["prefix"], BertConfig.from_json_file(ck["bert_config"]), work_dir=str(tmp_path),
                            keep_alive=True)
    try:
        whole = worker.run(inputs)
        os.kill(worker._proc.pid, signal.SIGKILL)
        worker._proc.wait()
        with pytest.raises(WorkerKilled, match=r"^the TF worker was killed by SIGKILL \(out of memory\?") as e:
            worker.run(inputs)
        assert error_lines(e.value) == [str(e.value)] and "\n" not in str(e.value)   # exit 2, this one line
        assert all(np.array_equal(v, whole[k]) for k, v in worker.run(inputs).items())   # a fresh worker
    finally:
        worker.release()
    assert os.listdir(tmp_path) == []


def test_a_comparison_ended_by_sigterm_leaves_no_spilled_taps_behind(tmp_path):
    """Spilled taps run to gigabytes in the temporary folder: a process ended by SIGTERM (a CI job cancelled, a
    container stopped) removes them as it dies, and still dies of the signal."""
    import signal
    code = ("import sys, time, numpy as np\n"
            "from parity.sides.tapstore import TapStore\n"
            f"store = TapStore(root={str(tmp_path)!r})\n"
            "store.put('layer_0/output', np.ones((4, 8, 16), np.float32))\n"
            "print(store.dir, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    folder = proc.stdout.readline().strip()
    assert os.path.isdir(folder) and os.listdir(folder) == ["00000.npy"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert not os.path.exists(folder) and os.listdir(tmp_path) == []
