"""``make portability``: the verdicts must not depend on the CPU they run on.

Runs the layerwise check on real all-MiniLM-L6-v2 weights, and a mutation suite (faults planted in the
PyTorch side), under emulated hardware: each *setting* is a set of environment variables that makes
PyTorch, oneDNN, MKL or TensorFlow take other kernels (another ISA, another reduction order), as another
machine would. Each (setting, shape) runs in a fresh process, because those variables are read once, at
library load. Every clean run must pass (no false alarm) and every fault must be caught, on every
setting and shape; the table says by how much (the worst tap's fraction of its tolerance).

    python -m parity.checks.portability [--report-dir reports/portability] [--short]

``--short`` (CI, ``parity/test_portability.py``): one combined setting, one small shape.
Exit codes: 0 no false alarm and every fault caught; 1 otherwise; 2 bad input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from bert_torch._io import write_json, write_text
from bert_torch.commands import run_main

from parity.checks.options import SETTINGS, PortabilityOptions   # SETTINGS: each emulated CPU's environment

# CI's short form: every emulation at once, in one process.
COMBINED = {**{k: v for env in SETTINGS.values() for k, v in env.items()}, "ATEN_CPU_CAPABILITY": "default"}
SHAPES = [(8, 128), (4, 256), (2, 512)]
SHORT_SHAPES = [(2, 32)]


def _transposed_query(model) -> None:
    w = model.encoder.layer[0].attention.self.query.weight
    w.copy_(w.T.clone())


def _swapped_gamma_beta(model) -> None:
    ln = model.embeddings.LayerNorm
    g = ln.weight.clone()
    ln.weight.copy_(ln.bias)
    ln.bias.copy_(g)


def _position_offset(model) -> None:   # RoBERTa-style: position i reads row i + 2
    import torch
    table = model.embeddings.position_embeddings.weight
    table.copy_(torch.roll(table.clone(), -2, dims=0))


def _swapped_qk(model) -> None:
    att = model.encoder.layer[1].attention.self
    q = att.query.weight.clone()
    att.query.weight.copy_(att.key.weight)
    att.key.weight.copy_(q)


# The mutation suite: name -> (what it does to the PyTorch model, or a config change)
FAULTS: dict[str, tuple[Optional[Callable], dict]] = {
    "transposed_kernel": (_transposed_query, {}),
    "swapped_gamma_beta": (_swapped_gamma_beta, {}),
    "position_offset": (_position_offset, {}),
    "swapped_qk": (_swapped_qk, {}),
    "gelu_variant": (None, {"hidden_act": "gelu_erf"}),
}


# Faults of a size: the smallest that fails is the tier's detection threshold for that kind of fault.
def _layernorm_epsilon(model, eps: float) -> None:
    from bert_torch.modeling import LayerNorm
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m.eps = eps


def _query_scaled(model, delta: float) -> None:
    model.encoder.layer[0].attention.self.query.weight.mul_(1.0 + delta)


SIZED_FAULTS = {"layernorm_epsilon": (_layernorm_epsilon, [1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
                "query_kernel_scaled_by_1+d": (_query_scaled, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])}
TIERS = [("fp32", "autocast"), ("tf32", "autocast"), ("bf16", "autocast"), ("bf16", "cast"),
         ("fp16", "autocast"), ("fp16", "cast")]


def worker(ckpt: str, batch: int, seq: int, out: str, tiers=(("fp32", "autocast"),), sized: bool = False) -> None:
    """One (setting, shape): the reference once, then per tier the clean candidate and every fault
    (``sized``: also each sized fault at growing sizes, until one is caught)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch
    from bert_torch.modeling import BertConfig
    from parity.compare.core import compare_sides
    from parity.inputs import make_inputs
    from parity.numerics.metrics import get_profile
    from parity.numerics.precision import Tier
    from parity.sides.base import TFSide, TorchSide

    config = BertConfig.from_json_file(os.path.join(ckpt, "bert_config.json"))
    inputs = make_inputs(os.path.join(ckpt, "vocab.txt"), batch, seq, 0, vocab_size=config.vocab_size)
    tf = TFSide(os.path.join(ckpt, "bert_model.ckpt"), config)
    ref = tf.run(inputs)
    tf.close()

    class Recorded:   # the reference's taps, computed once for the clean run and every fault
        name, description, tap_names = tf.name, tf.description, tf.tap_names

        def run(self, inputs, fetch=None, inject=None):
            return ref

    weights = os.path.join(ckpt, "pytorch_model.safetensors")

    def run_one(tier, cfg=None, mutate=None) -> dict:
        side = TorchSide.from_weights(weights, BertConfig.from_dict({**config.to_dict(), **(cfg or {})}))
        if mutate:
            with torch.no_grad():
                mutate(side.model)
        t0 = time.perf_counter()
        r = compare_sides(Recorded(), side.with_tier(Tier(*tier)), inputs, get_profile("fp32-cpu"))
        worst = max((t["tol_ratio"] for t in r["taps"] if t["tol_ratio"] is not None), default=None)
        return {"verdict": r["verdict"], "first_divergence": r["first_divergence"], "worst_tol_ratio": worst,
                "seconds": round(time.perf_counter() - t0, 1)}

    rows = []
    for tier in tiers:
        for fault, (mutate, cfg) in [("clean", (None, {}))] + list(FAULTS.items()):
            rows.append({"tier": "/".join(tier), "fault": fault, **run_one(tier, cfg, mutate)})
        for fault, (mutate, sizes) in SIZED_FAULTS.items() if sized else ():
            tried = []
            for size in sizes:
                tried.append({"size": size, **run_one(tier, mutate=lambda m, s=size: mutate(m, s))})
                if tried[-1]["verdict"] == "fail":
                    break
            caught = next((t for t in tried if t["verdict"] == "fail"), None)
            rows.append({"tier": "/".join(tier), "fault": fault, "sized": True, "tried": tried,
                         "threshold": caught["size"] if caught else None,
                         "first_divergence": caught["first_divergence"] if caught else None})
    write_json(out, {"rows": rows, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}, "worker output")


def run_matrix(settings: dict[str, dict[str, str]], shapes, ckpt: str, timeout: float = 1800,
               tiers=(("fp32", "autocast"),), sized: bool = False) -> list[dict]:
    results = []
    for name, env in settings.items():
        for batch, seq in shapes:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = tmp.name
            cmd = [sys.executable, "-m", "parity.checks.portability", "--worker", ckpt, str(batch), str(seq), out,
                   ",".join("/".join(t) for t in tiers), "sized" if sized else "plain"]
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"setting": name, "shape": [batch, seq], "env": env, "error": tail})
                continue
            with open(out, encoding="utf-8") as f:
                data = json.load(f)
            os.remove(out)
            results.append({"setting": name, "shape": [batch, seq], "env": env, **data})
            print(render_rows([results[-1]]) if not sized else render_tiers(results[-1]), flush=True)
    return results


def judge(results: list[dict]) -> dict:
    false_alarms = [(r["setting"], r["shape"]) for r in results
                    for row in r.get("rows", []) if row["fault"] == "clean" and row["verdict"] != "pass"]
    missed = [(r["setting"], r["shape"], row["fault"]) for r in results
              for row in r.get("rows", []) if row["fault"] != "clean" and not row.get("sized")
              and row["verdict"] != "fail"]
    errors = [(r["setting"], r["shape"], r["error"]) for r in results if "error" in r]
    return {"false_alarms": false_alarms, "missed_faults": missed, "errors": errors,
            "verdict": "pass" if not (false_alarms or missed or errors) else "fail"}


def render_rows(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['shape'][0]} x {r['shape'][1]} | error: {r['error']} | | |")
            continue
        clean = next(x for x in r["rows"] if x["fault"] == "clean")
        faults = [x for x in r["rows"] if x["fault"] != "clean"]
        caught = ", ".join(f"{x['fault']} at `{x['first_divergence']}`" if x["verdict"] == "fail"
                           else f"**{x['fault']} MISSED**" for x in faults)
        lines.append(f"| {r['setting']} ({r.get('torch_cpu_capability')}) | {r['shape'][0]} x {r['shape'][1]} | "
                     f"{clean['verdict']} | {clean['worst_tol_ratio']:.3g} | "
                     f"{sum(x['verdict'] == 'fail' for x in faults)}/{len(faults)}: {caught} |")
    return "\n".join(lines)


def render_tiers(result: dict) -> str:
    """Tier x fault: caught at which tap, or missed (below the tier's resolution); sized faults: the
    smallest size caught (the detection threshold) and where."""
    if "error" in result:
        return f"error: {result['error']}"
    faults = [f for f in FAULTS] + list(SIZED_FAULTS)
    lines = [f"MiniLM-L6, {result['shape'][0]} x {result['shape'][1]}, setting {result['setting']}", "",
             "| tier | clean (worst fraction) | " + " | ".join(faults) + " |", "| --- " * (len(faults) + 2) + "|"]
    by_tier: dict = {}
    for row in result["rows"]:
        by_tier.setdefault(row["tier"], {})[row["fault"]] = row
    for tier, rows in by_tier.items():
        c = rows["clean"]
        cells = [f"{c['verdict']} ({c['worst_tol_ratio']:.3g})"]
        for f in faults:
            r = rows.get(f, {})
            if r.get("sized"):
                cells.append(f"threshold {r['threshold']:g} at `{r['first_divergence']}`" if r["threshold"] is not None
                             else f"not caught up to {r['tried'][-1]['size']:g} (below resolution)")
            else:
                cells.append(f"caught at `{r['first_divergence']}`" if r.get("verdict") == "fail"
                             else "**missed: below this tier's resolution**")
        lines.append(f"| {tier} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: list[dict], verdict: dict) -> str:
    head = ["# Portability: MiniLM-L6 layerwise and the mutation suite under emulated CPUs", "",
            f"**{verdict['verdict'].upper()}**: {len(verdict['false_alarms'])} false alarms, "
            f"{len(verdict['missed_faults'])} missed faults, {len(verdict['errors'])} errors.", "",
            "| setting (torch CPU capability) | batch x seq | clean verdict | clean worst fraction of tolerance | "
            "faults caught (first divergence) |", "| --- | --- | --- | ---: | --- |"]
    envs = ["", "Settings:"] + [f"- `{n}`: {' '.join(f'{k}={v}' for k, v in e.items()) or '(as the machine is)'}"
                                for n, e in {**SETTINGS, 'combined': COMBINED}.items()]
    return "\n".join(head) + "\n" + render_rows(results) + "\n" + "\n".join(envs) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m parity.checks.portability`` (``bert-parity portability``); ``--worker CKPT B T OUT [TIERS
    [sized]]`` is one (setting, shape) of the matrix, in the process ``run_matrix`` starts for it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        tiers = [tuple(t.split("/")) for t in argv[5].split(",")] if len(argv) > 5 else [("fp32", "autocast")]
        worker(argv[1], int(argv[2]), int(argv[3]), argv[4], tiers, sized=len(argv) > 6 and argv[6] == "sized")
        return 0
    return run_main(lambda: run_portability(PortabilityOptions.parse(argv)))


def run_portability(opts: PortabilityOptions) -> int:
    """The matrix of settings x shapes (or, ``--tiers``, of precision tiers x faults), its verdict and files."""
    settings = {"combined": COMBINED} if opts.short else dict(SETTINGS)
    if opts.setting_names:
        settings = {s: SETTINGS[s] for s in opts.setting_names}
    shapes = opts.shape_list or (SHORT_SHAPES if opts.short else SHAPES)
    from parity.minilm import build_checkpoint
    os.makedirs(opts.report_dir, exist_ok=True)
    ckpt = os.path.join(opts.report_dir, "minilm")
    build_checkpoint(ckpt)
    if opts.tiers:
        results = run_matrix({"native": {}}, opts.shape_list or [(8, 128)], ckpt, tiers=TIERS, sized=True)
        write_json(os.path.join(opts.report_dir, "tiers.json"), results, "--report-dir", indent=2)
        write_text(os.path.join(opts.report_dir, "tiers.md"), "\n\n".join(map(render_tiers, results)) + "\n",
                   "--report-dir")
        return 0 if all("error" not in r for r in results) else 1
    results = run_matrix(settings, shapes, ckpt)
    verdict = judge(results)
    write_json(os.path.join(opts.report_dir, "portability.json"), {"verdict": verdict, "results": results},
               "--report-dir", indent=2)
    write_text(os.path.join(opts.report_dir, "portability.md"), render(results, verdict), "--report-dir")
    print(f"{verdict['verdict']}: {len(verdict['false_alarms'])} false alarms, {len(verdict['missed_faults'])} "
          f"missed faults, {len(verdict['errors'])} errors; {opts.report_dir}/portability.md")
    return 0 if verdict["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
