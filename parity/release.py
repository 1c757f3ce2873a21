"""The release gate and its report: ``python -m parity.release --report-dir reports/<version>-<commit>``.

A release report is a list of *checks*, each a function ``(ctx) -> section`` (a dict with at
least ``name``, ``verdict`` ("pass"/"fail"), ``summary``), run in order:

- ``gate-suite``: the whole pytest gate (``pytest -m '' parity/``), as a subprocess;
- ``layerwise/<checkpoint>``: every tap of the official graph against bert_torch, for the
  real all-MiniLM-L6-v2 weights and three random-init configs of ``parity/checkpoints.py``;
- ``tokens``, ``diagnose``, ``finetune``: registered only when ``parity.tokens``,
  ``parity.diagnose``, ``parity.finetune`` import; such a module joins the report by
  defining ``release_check(ctx) -> section``.

Then three gates over the sections:

- **waivers** (``parity/waivers.toml``): a tap pattern granted a looser tolerance, with a
  reason and an expiry date. An expired waiver, or one that no tap needs any more, fails.
- **ratchet** against ``reports/baseline.json`` (the last release's report.json): a tap that
  passed there and fails now, or whose error grew by more than ``--growth-factor`` (2x),
  fails. "Error" is ``tol_ratio``: the worst element's ``|c - r| / (atol + rtol·|r|)``, the
  fraction of its tolerance a tap uses, so taps of every magnitude are on one scale. Growth
  counts only above a noise floor: a tap regresses when
  ``now > factor × max(baseline, floor)``, floor 0.05 (5% of the tolerance). Below it,
  float32 rounding noise (errors of ~1e-7 against atol 2e-5) may double from one BLAS
  kernel to another without meaning anything; above it, a 2x growth is a change in the
  arithmetic. If the profile changed since the baseline, taps are compared as max_abs / today's
  atol instead. Measured here on MiniLM at 8 x 128 (under the earlier profile, atol 2e-5 and
  rtol 1e-5): errors identical run to run and with 1 or
  2 TF/torch threads; LayerNorm epsilon 5e-9 instead of 1e-12 (every tap still within
  tolerance) takes ``embeddings/output`` from 0.024 to 0.10 of its tolerance and 6 more taps
  past 2x; epsilon 1e-9 moves nothing past the rule.
- the **verdict**: pass only when every section passes, no waiver is expired or unneeded
  and nothing regressed. ``report.md``'s first line, and the first line printed, say why.

Exit codes: 0 pass; 1 the gate fails; 2 bad input (a malformed waiver ledger or baseline,
a missing data directory), one line.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from typing import Callable, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # TF C++ logs off (bert-parity --verbose)

import numpy as np  # noqa: E402

from bert_torch.commands import EXIT_CODES_HELP, HelpFormatter, run_main  # noqa: E402
from bert_torch.modeling import BertConfig  # noqa: E402

from bert_torch._io import atomic_output, dumps  # noqa: E402
from .environment import REPO_ROOT, environment, git_state  # noqa: E402
from .inputs import SAMPLE, Inputs, make_inputs  # noqa: E402
from .metrics import PROFILES, Profile, compare_tap  # noqa: E402
from .precision import Tier, check_supported  # noqa: E402

DEFAULT_BASELINE = os.path.join(REPO_ROOT, "reports", "baseline.json")
DEFAULT_WAIVERS = os.path.join(REPO_ROOT, "parity", "waivers.toml")
GROWTH_FACTOR = 2.0
NOISE_FLOOR = 0.05          # in units of the tap's tolerance (tol_ratio)
REPORT_FILES = ("report.json", "report.md", "report.html")


class ReleaseInputError(ValueError):
    """Bad input to the release gate (ledger, baseline, data dir): one line, exit 2."""


class NotRun(Exception):
    """Raised by a check that cannot run here (e.g. no data set): listed under checks_not_run, not failed."""


def default_data_dir() -> Optional[str]:
    d = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
    return d if os.path.isdir(d) else None


# --------------------------------------------------------------------------------------------- waivers

@dataclasses.dataclass
class Waiver:
    id: str
    taps: str                 # fnmatch pattern over tap names
    check: str                # fnmatch pattern over check names
    atol: float
    rtol: float
    reason: str
    expires: datetime.date
    matched: list = dataclasses.field(default_factory=list)   # (check, tap, passes without the waiver)

    def expired(self, today: datetime.date) -> bool:
        return today > self.expires


def load_waivers(path: Optional[str]) -> list[Waiver]:
    """``[[waiver]]`` tables: id, taps, check (default "*"), atol, rtol, reason, expires (a TOML date)."""
    if not path or not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ReleaseInputError(f"{path}: not a readable TOML waiver ledger ({e})") from None
    out = []
    for i, w in enumerate(doc.get("waiver", [])):
        where = f"{path}: waiver {w.get('id', i)!r}"
        for key in ("id", "taps", "atol", "rtol", "reason", "expires"):
            if key not in w:
                raise ReleaseInputError(f"{where}: missing field {key!r}")
        if not isinstance(w["expires"], datetime.date) or isinstance(w["expires"], datetime.datetime):
            raise ReleaseInputError(f"{where}: expires must be a TOML date (e.g. 2027-01-31), got {w['expires']!r}")
        if not all(isinstance(w[k], (int, float)) and w[k] >= 0 for k in ("atol", "rtol")):
            raise ReleaseInputError(f"{where}: atol and rtol must be non-negative numbers")
        if not str(w["reason"]).strip():
            raise ReleaseInputError(f"{where}: a waiver needs a reason")
        unknown = set(w) - {"id", "taps", "check", "atol", "rtol", "reason", "expires", "issue"}
        if unknown:
            raise ReleaseInputError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        out.append(Waiver(str(w["id"]), str(w["taps"]), str(w.get("check", "*")), float(w["atol"]),
                          float(w["rtol"]), str(w["reason"]), w["expires"]))
    ids = [w.id for w in out]
    if len(set(ids)) != len(ids):
        raise ReleaseInputError(f"{path}: duplicate waiver id {next(i for i in ids if ids.count(i) > 1)!r}")
    return out


def waiver_status(waivers: list[Waiver], today: datetime.date, checks_run: list[str]) -> list[dict]:
    """One row per waiver: applied / expired / unneeded / not evaluated (its check did not run)."""
    rows = []
    for w in waivers:
        ran = [c for c in checks_run if fnmatch.fnmatchcase(c, w.check)]
        needed = [f"{c}:{t}" for c, t, ok in w.matched if not ok]
        if w.expired(today):
            status, fails = "expired", True
            why = f"expired on {w.expires.isoformat()}: fix the taps or renew it with a new reason"
        elif not ran:
            status, fails, why = "not evaluated", False, f"no check matching {w.check!r} ran"
        elif not needed:
            status, fails = "unneeded", True
            why = (f"no longer needed: all {len(w.matched)} matching taps pass without it; delete it"
                   if w.matched else f"matches no tap (pattern {w.taps!r}); delete it")
        else:
            status, fails, why = "applied", False, f"needed by {len(needed)} taps: {', '.join(needed[:5])}"
        rows.append({"id": w.id, "check": w.check, "taps": w.taps, "atol": w.atol, "rtol": w.rtol,
                     "reason": w.reason, "expires": w.expires.isoformat(), "status": status,
                     "fails_gate": fails, "detail": why, "needed_by": needed})
    return rows


# --------------------------------------------------------------------------------------------- ratchet

def tap_error(t: dict) -> Optional[float]:
    """The ratchet's error of a tap: tol_ratio under the profile (not under a waiver)."""
    return (t.get("without_waiver") or t).get("tol_ratio")


def grew(base: Optional[float], now: Optional[float], factor: float = GROWTH_FACTOR,
         floor: float = NOISE_FLOOR) -> bool:
    """The growth rule: ``now > factor * max(base, floor)``; growth below the floor is noise."""
    if base is None or now is None:
        return False
    return now > factor * max(base, floor)


def ratchet(sections: list[dict], baseline: Optional[dict], factor: float = GROWTH_FACTOR,
            floor: float = NOISE_FLOOR) -> dict:
    """Compares this run's sections with the baseline report's, section by section, tap by tap."""
    out = {"baseline": None, "rule": f"a tap regresses when it passed in the baseline and fails now, or when "
           f"tol_ratio_now > {factor:g} x max(tol_ratio_baseline, {floor:g})",
           "growth_factor": factor, "noise_floor": floor, "regressions": [], "notes": []}
    if baseline is None:
        out["notes"].append("no baseline: nothing to ratchet against (first release?)")
        return out
    out["baseline"] = {"version": baseline.get("version"), "commit": (baseline.get("git") or {}).get("commit"),
                       "created_utc": baseline.get("created_utc")}
    base_sections = {s["name"]: s for s in baseline.get("checks", [])}
    ran = {s["name"] for s in sections}
    out["notes"] += [f"{n}: in the baseline, not run now" for n in base_sections if n not in ran]
    for s in sections:
        b = base_sections.get(s["name"])
        if b is None:
            out["notes"].append(f"{s['name']}: not in the baseline (new check)")
            continue
        if b.get("verdict") == "pass" and s.get("verdict") != "pass":
            out["regressions"].append({"check": s["name"], "tap": None, "kind": "new failure",
                                       "detail": f"passed in the baseline, {s.get('verdict')} now: {s.get('summary')}"})
        if s.get("kind") != "layerwise" or b.get("kind") != "layerwise":
            continue
        keys = ("batch_size", "seq_len", "seed", "sentences_sha256", "vocab_sha256")
        if any(s["inputs"].get(k) != b["inputs"].get(k) for k in keys):
            out["notes"].append(f"{s['name']}: inputs differ from the baseline's; taps not compared")
            continue
        err = tap_error
        if s.get("profile") != b.get("profile"):
            # tol_ratio is relative to the profile's tolerance: with another profile, compare max_abs in
            # units of today's allowed error for both, so that the ratchet still means "the error grew".
            out["notes"].append(f"{s['name']}: the tolerance profile changed since the baseline; errors "
                                f"compared as max_abs / today's atol")
            atols = {t["name"]: t["atol"] for t in s["taps"]}
            err = lambda t: (None if t.get("max_abs") is None or not atols.get(t["name"])  # noqa: E731
                             else t["max_abs"] / atols[t["name"]])
        if s.get("checkpoint_sha256") != b.get("checkpoint_sha256"):
            out["notes"].append(f"{s['name']}: checkpoint differs from the baseline's (sha256); compared anyway")
        now = {t["name"]: t for t in s["taps"]}
        for bt in b["taps"]:
            t = now.get(bt["name"])
            if t is None:
                out["regressions"].append({"check": s["name"], "tap": bt["name"], "kind": "missing",
                                           "detail": "in the baseline, not produced now"})
            elif bt["passed"] and not t["passed"]:
                out["regressions"].append({"check": s["name"], "tap": t["name"], "kind": "new failure",
                                           "detail": t.get("reason"), "baseline": err(bt), "now": err(t)})
            elif grew(err(bt), err(t), factor, floor):
                out["regressions"].append({
                    "check": s["name"], "tap": t["name"], "kind": "error growth",
                    "baseline": err(bt), "now": err(t), "growth": err(t) / max(err(bt), 1e-30),
                    "max_abs_baseline": bt.get("max_abs"), "max_abs_now": t.get("max_abs"),
                    "detail": (f"tol_ratio {err(bt):.3g} -> {err(t):.3g} "
                               f"(x{err(t) / max(err(bt), 1e-30):.1f}; max_abs "
                               f"{bt.get('max_abs'):.3g} -> {t.get('max_abs'):.3g}), still "
                               f"{'within' if t['passed'] else 'outside'} tolerance")})
    return out


def load_baseline(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ReleaseInputError(f"{path}: not a readable baseline report ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list):
        raise ReleaseInputError(f"{path}: not a release report (no 'checks' list); promote one with `make baseline`")
    return doc


# --------------------------------------------------------------------------------------------- checks

@dataclasses.dataclass
class Context:
    report_dir: str
    work_dir: str
    data_dir: Optional[str]
    profile: Profile
    waivers: list[Waiver]
    today: datetime.date
    pytest_args: list[str]
    files: dict = dataclasses.field(default_factory=dict)     # label -> path, hashed into the provenance
    seeds: dict = dataclasses.field(default_factory=dict)
    worst: dict = dataclasses.field(default_factory=dict)     # check -> (tap, |c - r| of its worst tap)
    tier: Tier = dataclasses.field(default_factory=Tier)       # the candidate's precision (--precision)
    require_data: bool = False   # --require-data / PARITY_REQUIRE_DATA=1 (CI): a check without its data fails


@dataclasses.dataclass
class Check:
    name: str
    run: Callable[[Context], dict]
    what: str


def compare_layerwise(ctx: Context, name: str, reference, candidate, inputs: Inputs) -> dict:
    """A layerwise section: every tap under the profile, with the waivers that match applied.

    Waived taps are compared twice (with and without the waiver) so that the gate knows
    whether each waiver is still needed.
    """
    from .compare import candidate_rounding
    ref = reference.run(inputs)
    cand = candidate.run(inputs)
    rounding, tier_rounding = candidate_rounding(candidate, inputs, cand) if ctx.profile.rounding_k else ({}, {})
    tier = getattr(candidate, "tier", None)
    names = list(reference.tap_names) + [n for n in candidate.tap_names if n not in reference.tap_names]
    taps, worst = [], (None, -1.0, None)
    for n in names:
        row = compare_tap(n, ref.get(n), cand.get(n), ctx.profile, rounding.get(n), tier, tier_rounding.get(n))
        for w in ctx.waivers:
            if fnmatch.fnmatchcase(name, w.check) and fnmatch.fnmatchcase(n, w.taps):
                w.matched.append((name, n, row["passed"]))
                if not w.expired(ctx.today):   # an expired waiver grants nothing
                    # A waiver only ever loosens: never below the profile's own tolerance for the tap.
                    atol, rtol = ctx.profile.tolerance(n, ref.get(n), rounding.get(n))
                    waived = compare_tap(n, ref.get(n), cand.get(n), Profile(
                        f"waiver {w.id}", w.reason, max(w.atol, atol), max(w.rtol, rtol)))
                    waived["waiver"] = w.id
                    waived["without_waiver"] = {k: row[k] for k in ("passed", "tol_ratio", "reason", "atol", "rtol")}
                    row = waived
                break   # first matching waiver wins
        taps.append(row)
        err = tap_error(row)
        if err is not None and err > worst[1] and n in ref and n in cand:
            worst = (n, err, np.abs(cand[n].astype(np.float64) - ref[n].astype(np.float64)).ravel())
    if worst[0] is not None:
        ctx.worst[name] = (worst[0], worst[2])
    failed = [t for t in taps if not t["passed"]]
    waived = [t["name"] for t in taps if t.get("waiver") and not t["without_waiver"]["passed"]]
    top = max(taps, key=lambda t: tap_error(t) or -1)
    summary = (f"{len(taps) - len(failed)}/{len(taps)} taps within tolerance"
               + (f" ({len(waived)} only under a waiver)" if waived else "")
               + (f"; first divergence {failed[0]['name']}: {failed[0]['reason']}" if failed
                  else f"; closest to its tolerance: {top['name']} ({tap_error(top):.3g} of it)"))
    return {"name": name, "kind": "layerwise", "verdict": "fail" if failed or not taps else "pass",
            "summary": summary, "first_divergence": failed[0]["name"] if failed else None,
            "profile": ctx.profile.to_dict(), "inputs": dict(inputs.meta),
            "sides": {"reference": reference.description, "candidate": candidate.description},
            "taps": taps}


def run_checkpoint(ctx: Context, name: str, ckpt_dir: str, batch: int, seq: int, seed: int = 0,
                   sentences: Optional[str] = None, source: Optional[str] = None) -> dict:
    """TF checkpoint directory (official layout plus pytorch_model.safetensors) -> layerwise section."""
    from .sides import TFSide, TorchSide, TAP_HEADS
    prefix = os.path.join(ckpt_dir, "bert_model.ckpt")
    config = BertConfig.from_json_file(os.path.join(ckpt_dir, "bert_config.json"))
    weights = os.path.join(ckpt_dir, "pytorch_model.safetensors")
    inputs = make_inputs(os.path.join(ckpt_dir, "vocab.txt"), batch, seq, seed, vocab_size=config.vocab_size,
                         type_vocab_size=config.type_vocab_size, pairs_file=sentences)
    candidate = TorchSide.from_weights(weights, config, tier=ctx.tier)
    reference = TFSide(prefix, config, head=candidate.head if candidate.head in TAP_HEADS else None)
    try:
        section = compare_layerwise(ctx, name, reference, candidate, inputs)
    finally:
        reference.close()
    data = prefix + ".data-00000-of-00001"
    for label, path in (("tf_checkpoint.data", data), ("torch_weights", weights), ("source", source),
                        ("sentences", sentences or SAMPLE)):
        if path:
            ctx.files[f"{name}:{label}"] = path
    ctx.seeds[f"{name}:inputs"] = seed
    from .inputs import sha256
    section["checkpoint_sha256"] = sha256(source or data)
    section["config"] = config.to_dict()
    return section


def minilm_check(ctx: Context) -> dict:
    """Real all-MiniLM-L6-v2 weights, batch 8 x 128 of real MRPC pairs.

    The pairs are the committed MRPC sample, not --data-dir's: the ratchet compares like with
    like, so the inputs must be the same on every machine, with or without the data set.
    """
    from .minilm import build_checkpoint, minilm_dir
    out = os.path.join(ctx.work_dir, "minilm")
    build_checkpoint(out)
    return run_checkpoint(ctx, "layerwise/minilm-l6-v2", out, 8, 128, 0, None,
                          source=os.path.join(minilm_dir(), "model.safetensors"))


def _subset_vocab(path: str, n: int) -> None:
    """A real WordPiece vocab cut to ``n`` entries (the gate's subset_vocab fixture, same rule)."""
    import collections
    from bert_torch.tokenization import FullTokenizer
    from .inputs import read_pairs
    from .minilm import minilm_dir
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
        from bert_torch import convert
        from reference_tf import write_random_checkpoint
        from .checkpoints import CONFIGS, SEQ
        cfg = dict(CONFIGS[config_name], hidden_act="gelu")
        out = os.path.join(ctx.work_dir, f"random-{config_name}")
        os.makedirs(out, exist_ok=True)
        vocab = os.path.join(ctx.work_dir, f"vocab{cfg['vocab_size']}.txt")
        _subset_vocab(vocab, cfg["vocab_size"])
        write_random_checkpoint(out, cfg, seed=seed, vocab_file=vocab, perturb=0.02)
        weights = os.path.join(out, "pytorch_model.safetensors")
        with open(os.devnull, "w") as devnull:
            import contextlib
            with contextlib.redirect_stdout(devnull):
                code = convert.main(["--tf-checkpoint", out, "--output", weights])
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


OPTIONAL_MODULES = {"tokens": "parity.tokens", "diagnose": "parity.diagnose", "finetune": "parity.finetune"}


def _tokens_section(mod, ctx: Context) -> dict:
    """parity.tokens' check_token_parity over --data-dir's MRPC and SQuAD texts (the samples without it)."""
    r = mod.check_token_parity(data_dir=ctx.data_dir)
    files = {}
    for label in r.get("sources") or {}:   # labels are paths relative to the data dir (or the samples)
        path = os.path.join(ctx.data_dir or getattr(mod, "SAMPLE_DIR", ""), label)
        if os.path.isfile(path):
            files[label] = path
    files["vocab"] = r.get("vocab_file")
    return {"name": "tokens", "kind": "tokens", "verdict": r["verdict"],
            "summary": (f"{r['texts_compared']} texts, {r['tokens_compared']} tokens through both FullTokenizers "
                        f"({r['corpus']} corpus): {r['differences']} differences"),
            "files": {k: v for k, v in files.items() if v}, "details": r}


def _finetune_section(mod, ctx: Context) -> dict:
    """parity.finetune's full suite (optimizer, features, gradients, 3 MRPC epochs, SQuAD, seeds); needs --data-dir."""
    mrpc = os.path.join(ctx.data_dir, "mrpc") if ctx.data_dir else None
    if not mrpc or not os.path.isfile(os.path.join(mrpc, "train.tsv")):
        raise NotRun("fine-tuning needs the MRPC data set: pass --data-dir (../shared/data is not here)")
    import shutil
    # Its work folder holds a MiniLM checkpoint (~100 MB): kept out of the report folder CI uploads.
    work = os.path.join(ctx.work_dir, "finetune")
    r = dict(mod.run_finetune_checks(ctx.data_dir, work, quick=False, log=lambda m: print(f"[finetune] {m}", flush=True)))
    os.makedirs(os.path.join(ctx.report_dir, "finetune"), exist_ok=True)
    for f in ("finetune.json", "finetune.md"):
        if os.path.exists(os.path.join(work, f)):
            shutil.copyfile(os.path.join(work, f), os.path.join(ctx.report_dir, "finetune", f))
    r.update(name="finetune", kind="finetune",
             files={f"mrpc/{s}.tsv": os.path.join(mrpc, f"{s}.tsv") for s in ("train", "dev")},
             artifacts=["finetune/finetune.json", "finetune/finetune.md"])
    return r


# Modules whose entry point predates the release_check hook: adapted here.
ADAPTERS = {"parity.tokens": ("check_token_parity", _tokens_section),
            "parity.finetune": ("run_finetune_checks", _finetune_section)}


def optional_check(name: str, module: str) -> tuple[Optional[Check], Optional[str]]:
    """A check from a sibling module, when it imports and offers ``release_check(ctx) -> section``."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return None, f"{module} is not importable ({e})"
    fn = getattr(mod, "release_check", None)
    if fn is None and module in ADAPTERS and hasattr(mod, ADAPTERS[module][0]):
        adapter = ADAPTERS[module][1]
        fn = lambda ctx: adapter(mod, ctx)  # noqa: E731
    if fn is None:
        return None, f"{module} has no release_check(ctx) hook"

    def run(ctx: Context) -> dict:
        section = dict(fn(ctx))
        section.setdefault("name", name)
        section.setdefault("kind", name)
        return section
    return Check(name, run, (mod.__doc__ or module).strip().splitlines()[0]), None


def registry() -> tuple[list[Check], dict[str, str]]:
    """Every check of a release, in order, and those not run with the reason."""
    checks = [Check("gate-suite", gate_suite_check, "pytest -m '' parity/: the whole gate, slow checks included"),
              Check("layerwise/minilm-l6-v2", minilm_check, "real all-MiniLM-L6-v2 weights, every tap, 8 x 128")]
    checks += [random_check(n) for n in ("tiny-1layer", "odd-heads-2layer", "3layer-headsize-3")]
    not_run = {}
    for name, module in OPTIONAL_MODULES.items():
        check, why = optional_check(name, module)
        if check:
            checks.append(check)
        else:
            not_run[name] = why
    return checks, not_run


# --------------------------------------------------------------------------------------------- the report

def run_release(ctx: Context, checks: list[Check], not_run: dict[str, str], baseline: Optional[dict],
                version: str, factor: float = GROWTH_FACTOR, floor: float = NOISE_FLOOR) -> dict:
    sections = []
    for check in checks:
        t0 = time.time()
        print(f"[release] {check.name}: {check.what}", flush=True)
        try:
            section = check.run(ctx)
        except NotRun as e:
            if not ctx.require_data:
                not_run = {**not_run, check.name: str(e)}
                print(f"[release] {check.name}: not run - {e}", flush=True)
                continue
            section = {"name": check.name, "kind": "not_run", "verdict": "fail",
                       "summary": f"required (--require-data) but not run: {e}"}
        except Exception as e:   # a check that crashes fails the gate, with its reason in the report
            section = {"name": check.name, "kind": "error", "verdict": "fail",
                       "summary": f"the check crashed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        section["seconds"] = round(time.time() - t0, 1)
        for label, path in (section.get("files") or {}).items():   # data a check read: hashed into the provenance
            ctx.files[f"{check.name}:{label}"] = path
        print(f"[release] {check.name}: {section['verdict']} - {section['summary']}", flush=True)
        sections.append(section)
    ran = [s["name"] for s in sections]
    waivers = waiver_status(ctx.waivers, ctx.today, ran)
    ratchet_result = ratchet(sections, baseline, factor, floor)
    reasons = [f"{s['name']}: {s['summary']}" for s in sections if s["verdict"] != "pass"]
    reasons += [f"waiver {w['id']} ({w['taps']}): {w['detail']}" for w in waivers if w["fails_gate"]]
    regs = ratchet_result["regressions"]
    if regs:
        shown = ", ".join(f"{r['check']}:{r['tap'] or '-'} ({r['kind']}"
                          + (f" x{r['growth']:.1f}" if r.get("growth") else "") + ")" for r in regs[:6])
        reasons.append(f"ratchet: {len(regs)} regression(s) against the baseline: {shown}"
                       + (f" and {len(regs) - 6} more" if len(regs) > 6 else ""))
    verdict = "fail" if reasons or not sections else "pass"
    if not sections:
        reasons.append("no check ran")
    if verdict == "pass":
        headline = (f"Release gate PASS: {len(sections)} check{'s' if len(sections) > 1 else ''} passed ({', '.join(ran)}); "
                    f"{'no regression against baseline ' + str((ratchet_result['baseline'] or {}).get('commit', ''))[:12] if baseline else 'no baseline to ratchet against'}"
                    f"; {sum(w['status'] == 'applied' for w in waivers)} waiver(s) applied")
    else:
        headline = f"Release gate FAIL: {reasons[0]}" + (f" (+{len(reasons) - 1} more reasons)" if len(reasons) > 1 else "")
    primary = next((s for s in sections if s.get("kind") == "layerwise" and s.get("taps")), None)
    env = environment("cpu", ctx.files, None, seeds=ctx.seeds)
    report = {
        "headline": headline,
        # The contract's top-level keys: the gate's verdict, and the primary (real-weights) comparison.
        "verdict": verdict,
        "first_divergence": primary["first_divergence"] if primary else None,
        "profile": ctx.profile.to_dict(),
        "inputs": primary["inputs"] if primary else {},
        "environment": env,
        "taps": primary["taps"] if primary else [],
        "primary_check": primary["name"] if primary else None,
        "reasons": reasons,
        "version": version,
        "git": env["git"],
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_dir": ctx.data_dir,
        "checks_run": ran,
        "checks_not_run": not_run,
        "checks": sections,
        "ratchet": ratchet_result,
        "waivers": waivers,
    }
    return report


def write_release(report: dict, ctx: Context) -> list[str]:
    """report.json, report.md, report.html and the PNG plots; returns the files written."""
    from . import report_render
    os.makedirs(ctx.report_dir, exist_ok=True)
    plots = report_render.make_plots(report, ctx.worst, ctx.report_dir)
    report["plots"] = [os.path.basename(p) for p in plots]
    _write(os.path.join(ctx.report_dir, "report.json"), dumps(portable(report), indent=2, default=str) + "\n")
    _write(os.path.join(ctx.report_dir, "report.md"), report_render.markdown(report))
    _write(os.path.join(ctx.report_dir, "report.html"), report_render.html(report, ctx.report_dir))
    return [os.path.join(ctx.report_dir, f) for f in REPORT_FILES] + plots


def portable(obj):
    """Paths inside the workspace written relative to the repository root (``../shared/data/...``),
    so a committed report names no path of the machine that made it."""
    base = os.path.dirname(REPO_ROOT) + os.sep
    if isinstance(obj, str) and obj.startswith(base):
        return os.path.relpath(obj, REPO_ROOT)
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


def _write(path: str, text: str) -> None:
    """Atomic (a reader never sees half a report) and world-readable (CI uploads it)."""
    with atomic_output(path, "release report") as tmp:   # removed on failure or SIGTERM/SIGINT
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)


def promote(src: str, dst: str = DEFAULT_BASELINE) -> int:
    """``make baseline``: a passing release report becomes the baseline the next release ratchets against."""
    report = load_baseline(src) if os.path.exists(src) else None
    if report is None:
        raise ReleaseInputError(f"{src}: no release report to promote; run `make report` first")
    if report.get("verdict") != "pass":
        raise ReleaseInputError(f"{src}: the report's verdict is {report.get('verdict')!r}; only a passing "
                                f"report can become the baseline ({report.get('headline')})")
    _write(dst, dumps(portable(report), indent=2) + "\n")
    ran = ", ".join(report.get("checks_run", []))
    print(f"baseline: {dst} <- {src} (version {report.get('version')}, commit "
          f"{(report.get('git') or {}).get('commit')}; checks: {ran})")
    return 0


def project_version() -> str:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.release", description=__doc__.split("\n\n")[0],
                                 epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter)
    ap.add_argument("--report-dir", help="default: reports/<version>-<commit>")
    ap.add_argument("--data-dir", help="real data (MRPC, SQuAD); default ../shared/data beside the repo when present")
    ap.add_argument("--work-dir", help="checkpoints built for the report (default: build/release)")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="last release's report.json ('' for none)")
    ap.add_argument("--waivers", default=DEFAULT_WAIVERS, help="waiver ledger (TOML)")
    ap.add_argument("--checks", help="comma-separated globs of check names to run (default: all)")
    ap.add_argument("--pytest-args", default="-m '' parity/", help="arguments of the gate-suite pytest run")
    ap.add_argument("--growth-factor", type=float, default=GROWTH_FACTOR)
    ap.add_argument("--noise-floor", type=float, default=NOISE_FLOOR, help="in units of the tap's tolerance")
    ap.add_argument("--today", help="date the waivers expire against (default: today, UTC)")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--precision", default="fp32", help="the candidate's tier in the layerwise checks: "
                    "fp32, tf32, bf16, fp16 (the reference stays the float32 graph)")
    ap.add_argument("--precision-mode", default="autocast", help="bf16/fp16: autocast (default) or cast")
    ap.add_argument("--promote", metavar="REPORT_JSON", help="make this passing report the baseline and exit")
    ap.add_argument("--require-data", action="store_true", default=os.environ.get("PARITY_REQUIRE_DATA") == "1",
                    help="a check whose data set is missing fails the gate instead of being listed as not run "
                         "(CI; also PARITY_REQUIRE_DATA=1)")
    return run_main(_release, ap.parse_args(argv))


def _release(args) -> int:
    if args.promote:
        return promote(args.promote, args.baseline or DEFAULT_BASELINE)
    checks, not_run = registry()
    if args.list:
        for c in checks:
            print(f"{c.name:32} {c.what}")
        for n, why in not_run.items():
            print(f"{n:32} not run: {why}")
        return 0
    if args.checks:
        globs = [g.strip() for g in args.checks.split(",") if g.strip()]
        unknown = [g for g in globs if not any(fnmatch.fnmatchcase(c.name, g) for c in checks)]
        if unknown:
            raise ReleaseInputError(f"--checks {unknown[0]}: matches no check; `--list` shows them")
        skipped = {c.name: "not selected (--checks)" for c in checks
                   if not any(fnmatch.fnmatchcase(c.name, g) for g in globs)}
        checks = [c for c in checks if c.name not in skipped]
        not_run = {**skipped, **not_run}
    version = project_version()
    commit = (git_state().get("commit") or "nogit")[:7]
    report_dir = args.report_dir or os.path.join(REPO_ROOT, "reports", f"{version}-{commit}")
    data_dir = args.data_dir or default_data_dir()
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise ReleaseInputError(f"--data-dir {args.data_dir}: no such directory")
    today = datetime.date.fromisoformat(args.today) if args.today else datetime.datetime.now(datetime.timezone.utc).date()
    ctx = Context(report_dir=report_dir, work_dir=args.work_dir or os.path.join(REPO_ROOT, "build", "release"),
                  data_dir=data_dir, profile=PROFILES["fp32-cpu"], waivers=load_waivers(args.waivers),
                  today=today, pytest_args=shlex.split(args.pytest_args), require_data=args.require_data,
                  tier=Tier(args.precision, args.precision_mode))
    check_supported(ctx.tier, "cpu")
    baseline = load_baseline(args.baseline)
    os.makedirs(ctx.report_dir, exist_ok=True)
    os.makedirs(ctx.work_dir, exist_ok=True)
    for name in REPORT_FILES:   # a failed run never leaves last time's report looking current
        if os.path.exists(os.path.join(ctx.report_dir, name)):
            os.remove(os.path.join(ctx.report_dir, name))
    report = run_release(ctx, checks, not_run, baseline, version, args.growth_factor, args.noise_floor)
    files = write_release(report, ctx)
    print(report["headline"])
    for r in report["reasons"][1:]:
        print(f"  also: {r}")
    print(f"report: {', '.join(os.path.relpath(f) for f in files)}")
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
