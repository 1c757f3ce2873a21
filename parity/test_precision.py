"""Precision tiers of the candidate (parity/numerics/precision.py): fp32, tf32, bf16, fp16 against the float32 official
graph, on real MiniLM weights; the tier's ceiling; the three precision traps diagnose and compare name."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from parity.numerics import precision as precision
from parity.compare.core import compare_sides
from parity.numerics.metrics import get_profile
from parity.numerics.precision import PrecisionError, Tier, round_to_tf32
from parity.sides.base import SideBase, TorchSide

TIERS = [("fp32", "autocast"), ("tf32", "autocast"), ("bf16", "autocast"), ("bf16", "cast"),
         ("fp16", "autocast"), ("fp16", "cast")]


# ------------------------------------------------------------------ TF32 emulation, exactly

@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False).filter(lambda v: abs(v) < 3e38))
def test_round_to_tf32_is_nearest_even_on_ten_mantissa_bits(x):
    got = round_to_tf32(torch.tensor([x], dtype=torch.float32)).item()
    m, e = np.frexp(np.float64(x))                       # x = m * 2**e, 0.5 <= |m| < 1: 11 significant bits
    want = np.ldexp(np.round(m * 2.0 ** 11) / 2.0 ** 11, e)   # numpy rounds half to even
    if abs(x) >= np.finfo(np.float32).tiny:              # normal numbers (subnormals keep their own grid)
        assert got == want, (x, got, want)
        assert torch.tensor([got]).view(torch.int32).item() & 0x1FFF == 0


def test_round_to_tf32_keeps_nan_and_inf():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    y = round_to_tf32(x)
    assert torch.isnan(y[0]) and y[1] == float("inf") and y[2] == -float("inf") and y[3] == 1.0


def test_tf32_emulation_rounds_the_operands_of_every_matmul_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((4, 64), (32, 64), (32,)))
    with precision.arithmetic(Tier("tf32"), "cpu"):
        emulated = [torch.nn.functional.linear(x, w, b), torch.matmul(x, w.T), x @ w.T, torch.tanh(x)]
    plain = [torch.nn.functional.linear(round_to_tf32(x), round_to_tf32(w), b),
             torch.matmul(round_to_tf32(x), round_to_tf32(w).T), round_to_tf32(x) @ round_to_tf32(w).T,
             torch.tanh(x)]
    for a, p in zip(emulated, plain):
        assert torch.equal(a, p)
    assert not torch.equal(emulated[0], torch.nn.functional.linear(x, w, b))   # the emulation did something


# ------------------------------------------------------------------ the tiers on real weights

@pytest.fixture(scope="module")
def minilm_ref(minilm_reference):
    """The official graph's taps on real MiniLM weights, 2 x 32 real inputs (one TF run, shared)."""
    return minilm_reference(2, 32)


class Recorded(SideBase):
    """A reference side replaying recorded taps (a TF run, or a planted one)."""
    name = "recorded"

    def __init__(self, taps: dict, names, description="official graph (recorded)"):
        self.taps, self.tap_names, self.description = taps, list(names), description

    def run(self, inputs, fetch=None, inject=None):
        return self.taps


def compare(ref: dict, side, mref) -> dict:
    return compare_sides(Recorded(ref, mref["names"]), side, mref["inputs"], get_profile("fp32-cpu"))


@pytest.mark.parametrize("tier,mode", TIERS)
def test_every_tier_passes_on_real_weights_within_its_ceiling(minilm_ref, tier, mode):
    side = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"], tier=Tier(tier, mode))
    report = compare(minilm_ref["ref"], side, minilm_ref)
    assert report["verdict"] == "pass", report["first_divergence"]
    assert report["precision"]["tier"] == tier and "hints" not in report
    used = max(t["tier_rounding"] / t["tier_ceiling"] for t in report["taps"] if t.get("tier_ceiling"))
    assert used < 0.5, used   # the ceiling is far from clean rounding (measured <= 0.08 at 8 x 128)
    if tier != "fp32":   # a reduced tier really computed in its precision: far more rounding than fp32
        assert max(t["tier_rounding"] for t in report["taps"]) > 100 * max(t["rounding"] for t in report["taps"])


@pytest.mark.parametrize("tier,mode", [t if t in (("fp32", "autocast"), ("bf16", "cast")) else
                                       pytest.param(*t, marks=pytest.mark.slow) for t in TIERS])
def test_a_planted_fault_is_caught_in_every_tier(minilm_ref, tier, mode):
    """A query kernel left untransposed (square in MiniLM, so it loads): caught at its tap in every tier."""
    side = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"], tier=Tier(tier, mode))
    q = side.source.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        q.copy_(q.T.clone())
    side = TorchSide(side.source, tier=Tier(tier, mode))   # re-cast from the faulty weights
    report = compare(minilm_ref["ref"], side, minilm_ref)
    assert report["verdict"] == "fail" and report["first_divergence"] == "layer_0/attention/query", report["first_divergence"]


# ------------------------------------------------------------------ the precision traps

def test_bf16_candidate_under_fp32_fails_and_says_reduced_precision(minilm_ref):
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    bf16 = TorchSide(copy.deepcopy(clean.model).to(torch.bfloat16))    # fp32 asked (the default tier)
    report = compare(minilm_ref["ref"], bf16, minilm_ref)
    assert report["verdict"] == "fail"
    causes = [h["cause"] for h in report["hints"]]
    assert causes[0] == "reduced_precision" and report["hints"][0]["numbers"]["closest"] == "bf16", report["hints"]


def test_tf32_reference_is_recognised(minilm_ref):
    """A reference recorded with TF32 matmuls (planted: the same weights under the exact TF32 emulation)."""
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    tf32_ref = TorchSide(clean.model, tier=Tier("tf32")).run(minilm_ref["inputs"])
    report = compare(tf32_ref, clean, minilm_ref)
    assert report["verdict"] == "fail" and report["first_divergence"].startswith("layer_0/attention/")
    assert [h["cause"] for h in report["hints"]] == ["tf32_reference"], report.get("hints")
    # Not a catch-all: the real float32 graph gives no such hint for the same candidate.
    assert "hints" not in compare(minilm_ref["ref"], clean, minilm_ref)


def test_fp16_overflow_names_the_tap_and_the_magnitude(minilm_ref):
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    model = copy.deepcopy(clean.model)
    with torch.no_grad():
        model.encoder.layer[2].intermediate.dense.weight.mul_(3000.0)   # FFN sums past 65504 in layer 2
    twin = TorchSide(model).run(minilm_ref["inputs"])
    report = compare(twin, TorchSide(model, tier=Tier("fp16", "cast")), minilm_ref)
    assert report["verdict"] == "fail"
    h = report["hints"][0]
    assert h["cause"] == "fp16_overflow" and h["numbers"]["tap"].startswith("layer_2/"), h
    assert h["numbers"]["float64_max"] > precision.FP16_MAX


# ------------------------------------------------------------------ bad input

def test_unknown_tier_and_mode_are_one_line():
    with pytest.raises(PrecisionError, match="--precision fp8"):
        Tier("fp8")
    with pytest.raises(PrecisionError, match="--precision-mode"):
        Tier("bf16", "half")


def test_a_build_without_fp16_kernels_is_refused_before_anything_runs(monkeypatch):
    def no_half(*a, **k):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'\nmore')
    monkeypatch.setattr(torch.nn.functional, "linear", no_half)
    with pytest.raises(PrecisionError) as e:
        precision.check_supported(Tier("fp16", "cast"), "cpu")
    assert "\n" not in str(e.value) and "fp16" in str(e.value) and "Half" in str(e.value)


TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_refuses_bad_tiers_and_devices(compare, random_checkpoint):
    ck = random_checkpoint(TINY, perturb=0.02)
    for extra, word in ((["--precision", "fp8"], "--precision fp8"), (["--precision-mode", "half"], "--precision-mode"),
                        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device")):
        run = compare(ck["dir"], ck["torch_weights"], "--batch-size", "2", "--seq-len", "8", *extra)
        assert run.code == 2 and run.report is None
        assert word in one_error_line(run.err)


def test_cli_runs_a_tier_end_to_end(compare, random_checkpoint):
    ck = random_checkpoint(TINY, perturb=0.02)
    run = compare(ck["dir"], ck["torch_weights"], "--batch-size", "2", "--seq-len", "16", "--precision", "bf16")
    assert run.code == 0, run.out + run.err
    assert run.report["precision"]["tier"] == "bf16" and "bf16" in run.report["sides"]["candidate"]



# ------------------------------------------------------------------ other machines, other tiers of the reference

def test_a_tf32_reference_that_says_so_is_accounted_for(minilm_ref):
    """The same TF32-recorded taps: undeclared, a failure with the tf32_reference hint (above); declared in the
    reference's precision (as a golden file from a GPU records it), they pass, their rounding estimated on the spot."""
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    ref = Recorded(TorchSide(clean.model, tier=Tier("tf32")).run(minilm_ref["inputs"]), minilm_ref["names"])
    ref.precision = {"tier": "tf32", "device": "gpu"}
    report = compare_sides(ref, clean, minilm_ref["inputs"], get_profile("fp32-cpu"))
    assert report["verdict"] == "pass", report["first_divergence"]
    assert report["reference_precision"]["tier"] == "tf32" and "hints" not in report
    assert all(t["reference_rounding"] >= 0 for t in report["taps"] if t["name"].startswith("layer_"))


def test_a_golden_from_another_machine_is_named_side_by_side(minilm_ref):
    from parity.compare.core import render_markdown
    from parity.environment import environment
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    other = {"cpu": "Some Other CPU", "arch": "x86_64", "torch_cpu_capability": "AVX2", "isa": ["avx2"], "gpu": None}
    ref = Recorded(minilm_ref["ref"], minilm_ref["names"])
    ref.meta = {"environment": {"machine": other, "torch": "2.0"}, "precision": {"tier": "fp32"}}
    report = compare_sides(ref, clean, minilm_ref["inputs"], get_profile("fp32-cpu"))
    assert report["verdict"] == "pass"
    assert any("Some Other CPU" in n and "replayed here" in n for n in report["notes"]), report["notes"]
    report["environment"] = {**environment("cpu", {}), "reference_environment": ref.meta["environment"]}
    md = render_markdown(report)
    assert "| CPU | Some Other CPU |" in md and "| torch CPU kernels | AVX2 |" in md


def test_a_calibration_from_another_machine_is_labelled_and_never_stricter_than_here(tmp_path, minilm_ref):
    import json as _json
    from parity.numerics.metrics import calibrated_profile
    taps = {n: {"floor": 1e-12} for n in minilm_ref["names"]}   # a floor far below this machine's rounding
    path = tmp_path / "elsewhere.json"
    path.write_text(_json.dumps({"taps": taps, "environment": {"machine": {"cpu": "Far Away CPU"}}}))
    profile = calibrated_profile(str(path))
    assert profile.to_dict()["calibrated_on"]["cpu"] == "Far Away CPU"
    clean = TorchSide.from_weights(minilm_ref["weights"], minilm_ref["config"])
    report = compare_sides(Recorded(minilm_ref["ref"], minilm_ref["names"]), clean, minilm_ref["inputs"], profile)
    assert any("Far Away CPU" in n for n in report["notes"])
    for t in report["taps"]:   # at least k x this machine's own float32 rounding, whatever the file says
        assert t["atol"] >= profile.rounding_k * (t["rounding"] or 0)
