"""The release report's checks, each ``(ctx) -> section``: the pytest gate, every tap of real and
random-init checkpoints (with the waivers applied), tokens, diagnose and the fine-tuning suite."""
from __future__ import annotations
import fnmatch
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Optional
import numpy as np
from bert_torch.modeling import BertConfig
from parity.files import REPO_ROOT, SAMPLE_DIR
from parity.inputs import SAMPLE, Inputs, make_inputs
from parity.compare.core import compare_sides
from parity.numerics.metrics import Profile, compare_tap
from parity.release.context import Check, Context, NotRun
from parity.release.ratchet import tap_error


def apply_waivers(ctx: Context, check: str, row: dict, ref, cand, rounding) -> dict:
    """The first waiver matching (check, tap) loosens the tap's tolerance, never below the profile's;
    the row keeps what it was without the waiver, so that the gate knows whether the waiver is still
    needed. An expired waiver grants nothing."""
    n = row["name"]
    for w in ctx.waivers:
        if fnmatch.fnmatchcase(check, w.check) and fnmatch.fnmatchcase(n, w.taps):
            w.matched.append((check, n, row["passed"]))
            if w.expired(ctx.today):
                return row
            atol, rtol = ctx.profile.tolerance(n, ref, rounding)
            waived = compare_tap(n, ref, cand, Profile(f"waiver {w.id}", w.reason, max(w.atol, atol), max(w.rtol, rtol)))
            waived["waiver"] = w.id
            waived["without_waiver"] = {k: row[k] for k in ("passed", "tol_ratio", "reason", "atol", "rtol")}
            return waived
    return row


def compare_layerwise(ctx: Context, name: str, reference, candidate, inputs: Inputs) -> dict:
    """A layerwise section: ``parity.compare.core.compare_sides`` under the profile, with the waivers that
    match applied (``apply_waivers``); the worst tap's element-wise errors are kept for the plots."""
    worst: dict = {"error": -1.0}

    def adjust(row: dict, ref, cand, rounding) -> dict:
        row = apply_waivers(ctx, name, row, ref, cand, rounding)
        err = tap_error(row)
        if err is not None and err > worst["error"] and ref is not None and cand is not None \
                and np.shape(ref) == np.shape(cand):
            worst.update(error=err, tap=row["name"],
                         diff=np.abs(cand.astype(np.float64) - ref.astype(np.float64)).ravel())
        return row

    report = compare_sides(reference, candidate, inputs, ctx.profile, adjust=adjust)
    if "tap" in worst:
        ctx.worst[name] = (worst["tap"], worst["diff"])
    taps = report["taps"]
    failed = [t for t in taps if not t["passed"]]
    waived = [t["name"] for t in taps if t.get("waiver") and not t["without_waiver"]["passed"]]
    top = max(taps, key=lambda t: tap_error(t) or -1) if taps else None
    summary = (f"{len(taps) - len(failed)}/{len(taps)} taps within tolerance"
               + (f" ({len(waived)} only under a waiver)" if waived else "")
               + (f"; first divergence {failed[0]['name']}: {failed[0]['reason']}" if failed
                  else f"; closest to its tolerance: {top['name']} ({tap_error(top):.3g} of it)" if top else ""))
    section = {"name": name, "kind": "layerwise", "summary": summary, **report}
    section["verdict"] = "fail" if failed or not taps else "pass"
    return section


def run_checkpoint(ctx: Context, name: str, ckpt_dir: str, batch: int, seq: int, seed: int = 0,
                   sentences: Optional[str] = None, source: Optional[str] = None, candidate_spec=None) -> dict:
    """TF checkpoint directory (official layout plus pytorch_model.safetensors) -> layerwise section.
    ``candidate_spec`` (``--candidate``): that model instead of bert_torch on the converted weights."""
    from parity.candidates.factory import make_candidate
    from parity.sides.base import TAP_HEADS, TFSide, TorchSide
    prefix = os.path.join(ckpt_dir, "bert_model.ckpt")
    config = BertConfig.from_json_file(os.path.join(ckpt_dir, "bert_config.json"))
    weights = os.path.join(ckpt_dir, "pytorch_model.safetensors")
    inputs = make_inputs(os.path.join(ckpt_dir, "vocab.txt"), batch, seq, seed, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size, pairs_file=sentences)
    if candidate_spec is not None and candidate_spec.kind != "bert_torch":
        candidate = make_candidate(candidate_spec, config=config, tier=ctx.tier)
    else:
        weights = candidate_spec.path if candidate_spec is not None else weights
        candidate = TorchSide.from_weights(weights, config, tier=ctx.tier)
    reference = TFSide(prefix, config, head=candidate.head if candidate.head in TAP_HEADS else None)
    try:
        section = compare_layerwise(ctx, name, reference, candidate, inputs)
    finally:
        reference.close()
        candidate.close()
    data = prefix + ".data-00000-of-00001"
    for label, path in (("tf_checkpoint.data", data), ("torch_weights", weights), ("source", source),
                        ("sentences", sentences or SAMPLE)):
        if path:
            ctx.files[f"{name}:{label}"] = path
    ctx.seeds[f"{name}:inputs"] = seed
    from parity.inputs import sha256
    section["checkpoint_sha256"] = sha256(source or data)
    section["config"] = config.to_dict()
    return section


def minilm_check(ctx: Context) -> dict:
    """Real all-MiniLM-L6-v2 weights, batch 8 x 128 of real MRPC pairs.

    The pairs are the committed MRPC sample, not --data-dir's: the ratchet compares like with
    like, so the inputs must be the same on every machine, with or without the data set.
    """
    from parity.minilm import build_checkpoint, minilm_dir
    out = os.path.join(ctx.work_dir, "minilm")
    build_checkpoint(out)
    return run_checkpoint(ctx, "layerwise/minilm-l6-v2", out, 8, 128, 0, None,
                          source=os.path.join(minilm_dir(), "model.safetensors"), candidate_spec=ctx.candidate)


def _subset_vocab(path: str, n: int) -> None:
    """A real WordPiece vocab cut to ``n`` entries (the gate's subset_vocab fixture, same rule)."""
    import collections
    from bert_torch.tokenization import FullTokenizer
    from parity.inputs import read_pairs
    from parity.minilm import minilm_dir
    tok = FullTokenizer(os.path.join(minilm_dir(), "vocab.txt"), do_lower_case=True)
    counts = collections.Counter(t for a, b in read_pairs(SAMPLE) for t in tok.tokenize(a) + tok.tokenize(b))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [t for t, _ in counts.most_common() if t not in specials]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    words = (specials + [c for c in chars if c not in pieces] + pieces)[:n]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")


def random_check(config_name: str, batch: int = 4, seed: int = 0) -> Check:
    """A random-init checkpoint of the gate (parity/checkpoints.py CONFIGS), written by the official code."""
    def run(ctx: Context) -> dict:
        import contextlib
        from bert_torch.commands import run_main
        from bert_torch.convert import run_convert
        from bert_torch.options import ConvertOptions
        from reference_tf import write_random_checkpoint
        from parity.checkpoints import CONFIGS, SEQ
        cfg = dict(CONFIGS[config_name], hidden_act="gelu")
        out = os.path.join(ctx.work_dir, f"random-{config_name}")
        os.makedirs(out, exist_ok=True)
        vocab = os.path.join(ctx.work_dir, f"vocab{cfg['vocab_size']}.txt")
        _subset_vocab(vocab, cfg["vocab_size"])
        write_random_checkpoint(out, cfg, seed=seed, vocab_file=vocab, perturb=0.02)
        weights = os.path.join(out, "pytorch_model.safetensors")
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            # the convert command as a user runs it: its error's line on stderr and its exit code
            code = run_main(lambda: run_convert(ConvertOptions.parse(["--tf-checkpoint", out, "--output", weights])))
        if code != 0:
            return {"name": f"layerwise/random-{config_name}", "kind": "layerwise", "verdict": "fail",
                    "summary": f"bert_torch.convert exited {code} on the official random checkpoint",
                    "inputs": {}, "taps": []}
        ctx.seeds[f"layerwise/random-{config_name}:checkpoint"] = seed
        return run_checkpoint(ctx, f"layerwise/random-{config_name}", out, batch, SEQ[config_name], seed)
    return Check(f"layerwise/random-{config_name}", run,
                 f"official random-init checkpoint '{config_name}' (perturbed), every tap")


def gate_suite_check(ctx: Context) -> dict:
    """The whole pytest gate, slow checks included, in a subprocess; its junit XML is kept."""
    xml = os.path.join(ctx.report_dir, "gate-suite.junit.xml")
    if os.path.exists(xml):   # never parse a previous run's results
        os.remove(xml)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ctx.pytest_args]
    t0 = time.time()
    log = os.path.join(ctx.report_dir, "gate-suite.log")
    with open(log, "w", encoding="utf-8") as f:   # streamed, so that a long run can be followed with tail -f
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    seconds = time.time() - t0
    with open(log, encoding="utf-8", errors="replace") as f:
        output = f.read()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    if os.path.exists(xml):
        root = ET.parse(xml).getroot()
        for case in root.iter("testcase"):
            counts["tests"] += 1
            test_id = f"{case.get('classname')}::{case.get('name')}"
            for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                el = case.find(tag)
                if el is not None:
                    counts[key] += 1
                    msg = (el.get("message") or "").splitlines()[0][:200] if el.get("message") else ""
                    (skipped if tag == "skipped" else failed).append({"test": test_id, "message": msg})
    ok = proc.returncode == 0
    last = (output.strip().splitlines() or ["(no output)"])[-1]
    return {"name": "gate-suite", "kind": "pytest", "verdict": "pass" if ok else "fail",
            "summary": (f"`{shlex.join(['pytest', *ctx.pytest_args])}`: {last} (exit {proc.returncode}, {seconds:.0f} s)"
                        + (f"; failed: {', '.join(f['test'] for f in failed[:3])}"
                           + (f" and {len(failed) - 3} more" if len(failed) > 3 else "") if failed else "")),
            "command": " ".join(cmd), "exit_code": proc.returncode, "seconds": round(seconds, 1),
            "counts": counts, "failed": failed, "skipped": skipped}


def tokens_check(ctx: Context) -> dict:
    """parity.tokens' check_token_parity over --data-dir's MRPC and SQuAD texts (the samples without it)."""
    from parity import tokens
    r = tokens.check_token_parity(data_dir=ctx.data_dir)
    files = {}
    for label in r.get("sources") or {}:   # labels are paths relative to the data dir (or the samples)
        path = os.path.join(ctx.data_dir or SAMPLE_DIR, label)
        if os.path.isfile(path):
            files[label] = path
    files["vocab"] = r.get("vocab_file")
    return {"name": "tokens", "kind": "tokens", "verdict": r["verdict"],
            "summary": (f"{r['texts_compared']} texts, {r['tokens_compared']} tokens through both FullTokenizers "
                        f"({r['corpus']} corpus): {r['differences']} differences"),
            "files": {k: v for k, v in files.items() if v}, "details": r}


def finetune_check(ctx: Context) -> dict:
    """parity.finetune's full suite (optimizer, features, gradients, 3 MRPC epochs, SQuAD, seeds); needs --data-dir."""
    mrpc = os.path.join(ctx.data_dir, "mrpc") if ctx.data_dir else None
    if not mrpc or not os.path.isfile(os.path.join(mrpc, "train.tsv")):
        raise NotRun("fine-tuning needs the MRPC data set: pass --data-dir (../shared/data is not here)")
    import shutil
    # Its work folder holds a MiniLM checkpoint (~100 MB): kept out of the report folder CI uploads.
    work = os.path.join(ctx.work_dir, "finetune")
    from parity.finetune import suite as finetune
    r = dict(finetune.run_finetune_checks(ctx.data_dir, work, finetune.FULL, log=lambda m: print(f"[finetune] {m}", flush=True)))
    os.makedirs(os.path.join(ctx.report_dir, "finetune"), exist_ok=True)
    for f in ("finetune.json", "finetune.md"):
        if os.path.exists(os.path.join(work, f)):
            shutil.copyfile(os.path.join(work, f), os.path.join(ctx.report_dir, "finetune", f))
    r.update(name="finetune", kind="finetune",
             files={f"mrpc/{s}.tsv": os.path.join(mrpc, f"{s}.tsv") for s in ("train", "dev")},
             artifacts=["finetune/finetune.json", "finetune/finetune.md"])
    return r


def diagnose_check(ctx: Context) -> dict:
    """``diagnose`` on the real MiniLM weights (``parity.diagnose.release_check``)."""
    from parity.diagnose import command as diagnose
    return diagnose.release_check(ctx)
