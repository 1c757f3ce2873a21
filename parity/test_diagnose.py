"""parity.diagnose against planted faults: each is found, put in the right block, and named.

The mutation suite runs the real official graph (all-MiniLM-L6-v2 weights) against PyTorch
sides with one fault each: weight faults in the tensors, code faults through test doubles
(a model with a changed LayerNorm epsilon, mask constant or GELU). ``MUTATIONS`` is the table
of the closing note: ``pytest parity/test_diagnose.py -k mutation -s`` prints it.
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from bert_torch.convert import tf_to_torch
from bert_torch.modeling import BertConfig, LayerNorm
from bert_torch.tf_checkpoint import read_checkpoint
from bert_torch.weights import model_from_tensors
from parity import frontdoor
from parity.diagnose.blocks import blocks, schedule
from parity.diagnose.algorithm import diagnose
from parity.diagnose.render import write_diagnosis
from parity.diagnose.repro import write_repro
from parity.numerics.hints import CAUSES
from parity.inputs import make_inputs
from parity.numerics.metrics import get_profile
from parity.compare.schema import check_json_file
from parity.sides.base import TFSide, TorchSide

PROFILE = get_profile("fp32-cpu")
# One LayerNorm with epsilon 1e-5 is smaller than fp32-cpu's allowance (which must also cover long
# inputs); on these short inputs the fixed-tolerance profile sees it.
STRICT = get_profile("fp32-cpu-strict")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 2 x 32 gain nothing from PyTorch threads; on a busy 2-core CI machine they only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real(minilm):
    """The official graph over real MiniLM weights, shared by every fault (faults live on the PyTorch side)."""
    config = BertConfig.from_json_file(minilm["bert_config"])
    tf_weights, _ = tf_to_torch(read_checkpoint(minilm["prefix"]), config)
    side = TFSide(minilm["prefix"], config)
    inputs = make_inputs(minilm["vocab"], 2, 32, seed=0, vocab_size=config.vocab_size)
    assert inputs.meta["padding_positions"] > 0
    yield {"config": config, "tf_weights": tf_weights, "tf": side, "inputs": inputs, **minilm}
    side.close()


def run(real, tensors=None, config=None, patch=None, inputs=None, profile=PROFILE):
    """Diagnose a PyTorch side built from ``tensors`` (default: the checkpoint's) and ``config``,
    after ``patch(model)``; a side whose tensors do not load is diagnosed from the weights alone."""
    tensors = dict(real["tf_weights"] if tensors is None else tensors)
    candidate, problem = None, None
    try:
        model = model_from_tensors(tensors, config or real["config"])
        if patch:
            patch(model)
        candidate = TorchSide(model)
    except ValueError as e:
        problem = str(e).splitlines()[0]
    return diagnose(real["tf"], candidate, inputs or real["inputs"], profile, config=real["config"],
                    tf_weights=real["tf_weights"], torch_weights=tensors, candidate_problem=problem)


def mutated(fn):
    def make(real):
        t = {k: np.array(v, copy=True) for k, v in real["tf_weights"].items()}
        fn(t)
        return dict(tensors=t)
    return make


def swap(a, b):
    def fn(t):
        t[a], t[b] = t[b], t[a]
    return fn


def set_eps(path, eps, profile=PROFILE):
    def patch(model):
        for name, m in model.named_modules():
            if isinstance(m, LayerNorm) and (path is None or name == path):
                m.eps = eps
    return lambda real: dict(patch=patch, profile=profile)


def config_with(**kw):
    return lambda real: dict(config=BertConfig.from_dict({**real["config"].to_dict(), **kw}))


def type_table_16(t):
    table = t["embeddings.token_type_embeddings.weight"]
    extra = np.random.default_rng(0).normal(0, 0.02, (14, table.shape[1])).astype(np.float32)
    t["embeddings.token_type_embeddings.weight"] = np.concatenate([table, extra])


def fresh_pooler(t):
    g = torch.Generator().manual_seed(0)
    w = torch.empty(t["pooler.dense.weight"].shape)
    torch.nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04, generator=g)
    t["pooler.dense.weight"] = w.numpy()
    t["pooler.dense.bias"] = np.zeros_like(t["pooler.dense.bias"])


def mask_value(v):
    def patch(model):
        model.mask_adder_value = v   # an instance attribute: only this model
    return lambda real: dict(patch=patch)


L = "encoder.layer"
# fault: (how to plant it, culprit, block, cause)
MUTATIONS = {
    "query/key kernels swapped (layer 2)": (
        mutated(swap(f"{L}.2.attention.self.query.weight", f"{L}.2.attention.self.key.weight")),
        "weights", "layer_2/attention", "swapped_qk"),
    "attention output kernel not transposed (layer 1)": (
        mutated(lambda t: t.__setitem__(f"{L}.1.attention.output.dense.weight",
                                        t[f"{L}.1.attention.output.dense.weight"].T.copy())),
        "weights", "layer_1/attention", "transposed_kernel"),
    "LayerNorm gamma/beta swapped (layer 4 output)": (
        mutated(swap(f"{L}.4.output.LayerNorm.weight", f"{L}.4.output.LayerNorm.bias")),
        "weights", "layer_4/ffn", "swapped_gamma_beta"),
    "position ids offset by 2 (RoBERTa style)": (
        mutated(lambda t: t.__setitem__("embeddings.position_embeddings.weight",
                                        np.roll(t["embeddings.position_embeddings.weight"], -2, axis=0))),
        "weights", "embeddings", "position_offset"),
    "token-type table of 16 rows for a checkpoint of 2": (
        mutated(type_table_16), "weights", "embeddings", "type_vocab_size"),
    "pooler weights missing": (
        mutated(lambda t: [t.pop("pooler.dense.weight"), t.pop("pooler.dense.bias")]),
        "weights", "pooler", "missing_weights"),
    "pooler left at initial values by a lenient loader": (
        mutated(fresh_pooler), "weights", "pooler", "missing_weights"),
    "erf GELU against the tanh graph": (config_with(hidden_act="gelu_erf"), "layer_0/ffn", "layer_0/ffn",
                                        "gelu_variant"),
    "LayerNorm epsilon 1e-5 everywhere": (set_eps(None, 1e-5), "embeddings", "embeddings", "layernorm_epsilon"),
    "LayerNorm epsilon 1e-5 in layer 3's output only": (set_eps("encoder.layer.3.output.LayerNorm", 1e-5, STRICT),
                                                        "layer_3/ffn", "layer_3/ffn", "layernorm_epsilon"),
    "mask constant -1e9": (mask_value(-1e9), "layer_0/attention", "layer_0/attention", "mask_constant"),
}


@pytest.mark.parametrize("fault", list(MUTATIONS))
def test_mutation_is_detected_localised_and_named(fault, real):
    plant, culprit, block, cause = MUTATIONS[fault]
    d = run(real, **plant(real))
    print(f"\n| {fault} | {d['culprit']} | {d['culprit_block']} | "
          f"{', '.join(h['cause'] for h in d['hints'])} |")
    assert d["verdict"] == "fail"
    assert (d["culprit"], d["culprit_block"]) == (culprit, block)
    assert d["hints"][0]["cause"] == cause, d["hints"]
    assert d["hints"][0]["block"] == block and d["hints"][0]["evidence"]
    assert len({h["cause"] for h in d["hints"]}) == len(d["hints"])   # one hint per cause, other blocks in also_in
    assert all(h["cause"] in CAUSES for h in d["hints"])
    if culprit != "weights":   # code faults: the weights are bit-equal, the error is local to the block
        assert not d["weights"]["differences"]
        statuses = {b["name"]: b["status"] for b in d["blocks"]}
        upstream = [b["name"] for b in d["blocks"]][: [b["name"] for b in d["blocks"]].index(block)]
        assert statuses[block].startswith("local error") and all(statuses[b] == "ok" for b in upstream), statuses


def test_clean_side_passes_with_every_stage(real):
    d = run(real)
    assert (d["verdict"], d["culprit"], d["hints"]) == ("pass", None, [])
    assert d["weights"]["bit_equal"] == d["weights"]["checked"] == 103
    assert [b["name"] for b in d["blocks"]] == [b.name for b in blocks(6)]
    taps = {t["name"]: t for t in d["taps"]}
    assert len(taps) == 5 + 11 * 6 + 1
    for t in taps.values():
        # Both sides round the same formulas: TF's distance to float64 is of the size of PyTorch's.
        assert t["ladder"]["reading"] == "rounding", t
        assert t["error_over_floor"] is not None and t["error_over_floor"] < 30, t
    # Real versus padded positions and attention per head are reported separately.
    scores = taps["layer_0/attention/scores"]
    assert scores["real"]["count"] + scores["padded"]["count"] == np.prod(scores["shape"])
    assert len(scores["per_head_max_abs"]) == 12
    assert taps["pooler/output"]["padded"] is None


def test_local_error_separates_culprit_from_inherited(real):
    """A fault in layer 3 makes every later tap fail end to end, but only layer 3 fails locally, both ways."""
    d = run(real, **set_eps("encoder.layer.3.output.LayerNorm", 1e-3)(real))
    assert d["hints"][0]["cause"] == "layernorm_epsilon" and d["hints"][0]["numbers"]["epsilon"] == 1e-3
    statuses = {b["name"]: b for b in d["blocks"]}
    assert statuses["layer_3/ffn"]["status"] == "local error"
    assert not statuses["layer_3/ffn"]["local_tensorflow"]["passed"]   # TF on PyTorch's inputs sees it too
    later = [b for b in d["blocks"] if b["name"] in ("layer_4/attention", "layer_5/ffn")]
    assert all(b["status"] == "inherited error" and b["local_pytorch"]["passed"] for b in later), later
    taps = {t["name"]: t for t in d["taps"]}
    assert taps["layer_3/output"]["ladder"]["reading"] == "formulas differ"


def test_unknown_fault_is_localised_and_read_by_the_ladder(real):
    """A fault of no known signature (layer 2's intermediate dense off by 0.1%): the block is still
    found, and the precision ladder says the formulas differ rather than round differently."""
    def patch(model):
        model.encoder.layer[2].intermediate.dense.register_forward_hook(lambda m, i, out: out * 1.001)
    d = run(real, patch=patch)
    assert (d["culprit"], [h["cause"] for h in d["hints"]]) == ("layer_2/ffn", ["formula_difference"])
    assert "layer_2/intermediate" in d["hints"][0]["evidence"]
    lad = d["hints"][0]["numbers"]
    assert lad["tf32_vs_pt64"] > 30 * lad["pt32_vs_pt64"]


def test_mask_constant_shows_at_padded_positions_only(real):
    d = run(real, **mask_value(-1e9)(real))
    scores = next(t for t in d["taps"] if t["name"] == "layer_0/attention/scores")
    assert scores["real"]["max_abs"] < 1e-4 and scores["padded"]["max_abs"] > 1e8
    h = d["hints"][0]
    assert h["numbers"]["constant"] == pytest.approx(-1e9, rel=1e-3)


def test_schedule_never_injects_what_it_fetches():
    for head in (None, "classifier", "squad"):
        bs = blocks(3, head)
        runs = schedule(bs)
        assert sorted(b.name for r in runs for b in r) == sorted(b.name for b in bs)
        for r in runs:
            injected = {b.input for b in r if b.input}
            assert not injected & {t for b in r for t in b.taps}
        assert len(runs) == 2


@pytest.mark.heavy
def test_repro_script_reproduces_with_bert_torch_alone(real, tmp_path):
    plant = MUTATIONS["query/key kernels swapped (layer 2)"][0](real)
    d = run(real, **plant)
    write_repro(d, str(tmp_path), real["config"], PROFILE, None)
    write_diagnosis(d, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "repro")) == ["bert_config.json", "repro.py", "tensors.safetensors",
                                                     "weights.safetensors"]
    script = (tmp_path / "repro" / "repro.py").read_text()
    assert len(script.splitlines()) < 45 and "import tensorflow" not in script and "reference_tf" not in script
    proc = subprocess.run([sys.executable, str(tmp_path / "repro" / "repro.py")], capture_output=True, text=True,
                          cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "layer_2/attention/query" in proc.stdout and "MISMATCH" in proc.stdout
    # With the right weights in place, the same script passes: it measures the block, not noise.
    from safetensors.numpy import load_file, save_file
    w = load_file(str(tmp_path / "repro" / "weights.safetensors"))
    save_file({k: real["tf_weights"][k] for k in w}, str(tmp_path / "repro" / "weights.safetensors"))
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(tmp_path / "repro" / "repro.py"), run_name="__main__")
    assert done.value.code == 0
    saved = check_json_file(str(tmp_path / "diagnosis.json"), "diagnosis")
    assert saved["culprit"] == "weights" and saved["repro"] and "_arrays" not in saved


@pytest.fixture(scope="module")
def tiny_squad(random_checkpoint):
    """A small official checkpoint with the SQuAD head, its graph built once for many inputs."""
    cfg = dict(vocab_size=150, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=61,
               max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", initializer_range=0.1)
    ck = random_checkpoint(cfg, head="squad", perturb=0.02)
    config = BertConfig.from_dict(cfg)
    tf_weights, _ = tf_to_torch(read_checkpoint(ck["prefix"]), config)
    side = TFSide(ck["prefix"], config, head="squad")
    yield {"config": config, "tf_weights": tf_weights, "tf": side, "vocab": ck["vocab"],
           "candidate": TorchSide(model_from_tensors(tf_weights, config), head="squad")}
    side.close()


@pytest.mark.heavy
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 5), seq=st.integers(2, 64), seed=st.integers(0, 2 ** 16))
def test_no_false_alarms_over_inputs(tiny_squad, batch, seq, seed):
    t = tiny_squad
    inputs = make_inputs(t["vocab"], batch, seq, seed=seed, vocab_size=t["config"].vocab_size)
    d = diagnose(t["tf"], t["candidate"], inputs, PROFILE, config=t["config"], tf_weights=t["tf_weights"],
                 head="squad")
    assert [b["name"] for b in d["blocks"]][-1] == "squad"
    assert (d["verdict"], d["culprit"], d["hints"]) == ("pass", None, []), [
        (b["name"], b["status"]) for b in d["blocks"] if b["status"] != "ok"]


# ---------------------------------------------------------------------------------------------
# The command line.

def diagnose_cli(ck, report_dir, *extra):
    return frontdoor.main(["diagnose", "--tf-checkpoint", ck["dir"], "--torch-weights", ck["torch_weights"],
                     "--report-dir", str(report_dir), "--batch-size", "2", "--seq-len", "16", *extra])


TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")


@pytest.mark.heavy
def test_cli_clean_and_missing_head_weights(random_checkpoint, tmp_path, capsys):
    ck = random_checkpoint(TINY, head="classifier", num_labels=3, perturb=0.02)
    assert diagnose_cli(ck, tmp_path / "ok") == 0
    d = check_json_file(str(tmp_path / "ok" / "diagnosis.json"), "diagnosis")
    assert (d["verdict"], d["culprit"], d["hints"]) == ("pass", None, [])
    assert d["blocks"][-1]["name"] == "classifier" and (tmp_path / "ok" / "diagnosis.md").exists()
    # The head dropped: the file loads as a bare BertModel, and diagnose names the block and the cause.
    from safetensors.numpy import load_file, save_file
    t = load_file(ck["torch_weights"])
    save_file({k: v for k, v in t.items() if not k.startswith("classifier.")}, str(tmp_path / "nohead.safetensors"))
    code = diagnose_cli(dict(ck, torch_weights=str(tmp_path / "nohead.safetensors")), tmp_path / "bad")
    d = check_json_file(str(tmp_path / "bad" / "diagnosis.json"), "diagnosis")
    assert code == 1 and (d["culprit"], d["culprit_block"]) == ("weights", "classifier")
    assert {h["cause"] for h in d["hints"]} == {"missing_weights"}
    classifier = next(t for t in d["taps"] if t["name"] == "classifier/logits")
    assert not classifier["passed"] and classifier["reason"] == "missing on the pytorch side"
    assert [b["name"] for b in d["blocks"] if b["status"] != "ok"] == ["classifier"]
    out = capsys.readouterr().out
    assert "missing_weights" in out


def test_cli_vocab_mismatch_is_bad_input_with_a_hint(random_checkpoint, subset_vocab, tmp_path, capsys):
    ck = random_checkpoint(TINY, perturb=0.02)
    code = diagnose_cli(ck, tmp_path / "r", "--vocab-file", subset_vocab(150))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "vocab_mismatch" in lines[0] and "150 tokens" in lines[0], err
    assert not (tmp_path / "r").exists()   # bad input: nothing written at a final name


def test_cli_bad_input_exits_2_without_a_diagnosis(random_checkpoint, tmp_path, capsys):
    ck = random_checkpoint(TINY, perturb=0.02)
    (tmp_path / "broken.safetensors").write_bytes(b"not a weights file")
    code = diagnose_cli(dict(ck, torch_weights=str(tmp_path / "broken.safetensors")), tmp_path / "r")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "broken.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "diagnosis.json").exists()


@pytest.mark.heavy
def test_calibrated_profile_on_real_weights(minilm, compare):
    run = compare(minilm["dir"], minilm["torch_weights"], "--profile", "calibrated-minilm-l6",
                  "--batch-size", "2", "--seq-len", "32")
    from parity.environment import machine, same_machine
    from parity.numerics.metrics import PROFILES
    profile = PROFILES["calibrated-minilm-l6"]
    taps = run.report["taps"]
    # Every tap's tolerance: k x the file's floor, or k x this machine's own float32 rounding, whichever is larger.
    for t in taps:
        floor = t["floor"]
        assert t["atol"] == pytest.approx(max(profile.tolerance(t["name"])[0], 4 * (t["rounding"] or 0))), t
        assert t["error_over_floor"] == (0.0 if t["max_abs"] == 0 else t["max_abs"] / floor)
    if same_machine(profile.calibrated_on, machine()):
        # On the machine it was measured on, clean real weights sit within k x their floors.
        assert run.code == 0, run.out
        assert all(t["error_over_floor"] <= 4 for t in taps if (t["rounding"] or 0) <= t["floor"])
    else:   # elsewhere the report says so; the floors are that machine's, the rounding term this one's
        assert any("measured on" in n for n in run.report["notes"]), run.report.get("notes")


# ---------------------------------------------------------------------------------------------
# Slow: many configurations, the calibration command, and the cost of a diagnosis on BERT-base.

@pytest.mark.slow
def test_calibration_command(random_checkpoint, tmp_path):
    from parity.diagnose import calibrate as diagnose_calibrate
    ck = random_checkpoint(TINY, perturb=0.02)
    out = tmp_path / "tiny.json"
    assert diagnose_calibrate.main(["--tf-checkpoint", ck["dir"], "--torch-weights", ck["torch_weights"],
                                    "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["taps"]) == 5 + 11 * 2 + 1 and len(data["input_sets"]) == 6
    assert data["taps"]["embeddings/word_embeddings"]["floor"] == 0.0          # a lookup rounds nothing
    assert data["taps"]["layer_1/output"]["pt_fp64"] > 0                       # arithmetic does

@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(heads=st.integers(1, 4), head_size=st.integers(2, 12), layers=st.integers(1, 3),
       intermediate=st.integers(8, 64), types=st.sampled_from([1, 2, 16]), act=st.sampled_from(["gelu", "gelu_erf", "relu"]),
       head=st.sampled_from([None, "classifier", "squad"]), seq=st.integers(4, 40), seed=st.integers(0, 1000))
# Found by this test: a LayerNorm over 2 features rounds far more than its magnitudes suggest
# (both sides alike); the fp32-cpu rounding term must absorb it.
@example(heads=1, head_size=2, layers=1, intermediate=8, types=1, act="gelu", head=None, seq=4, seed=1)
def test_no_false_alarms_over_configurations(random_checkpoint, tmp_path_factory, heads, head_size, layers,
                                             intermediate, types, act, head, seq, seed):
    cfg = dict(vocab_size=120, hidden_size=heads * head_size, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=intermediate, max_position_embeddings=64, type_vocab_size=types, hidden_act=act,
               initializer_range=0.1)
    ck = random_checkpoint(cfg, head=head, seed=seed, perturb=0.02)
    out = tmp_path_factory.mktemp("diag")
    code = frontdoor.main(["diagnose", "--tf-checkpoint", ck["dir"], "--torch-weights", ck["torch_weights"],
                     "--report-dir", str(out), "--batch-size", "3", "--seq-len", str(seq), "--seed", str(seed)])
    d = check_json_file(str(out / "diagnosis.json"), "diagnosis")
    assert code == 0 and (d["verdict"], d["culprit"], d["hints"]) == ("pass", None, []), d["blocks"]
