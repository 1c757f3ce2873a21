"""The release run: every registered check, then the waivers, the ratchet and the verdict; the report's
files; ``make baseline``; and the command line (``python -m parity.release``)."""
from __future__ import annotations
import datetime
import fnmatch
import os
import shlex
import time
import tomllib
from typing import Optional
from bert_torch.commands import run_main
from bert_torch._io import atomic_dir, atomic_output, dumps
from parity.sides.refcache import CACHE_ENV, LOG_ENV, OWNER_ENV, RefCache, provenance as tf_cache_provenance
from parity.environment import environment, git_state
from parity.files import REPO_ROOT, default_data_dir
from parity.numerics.metrics import PROFILES
from parity.numerics.precision import Tier, check_supported
from parity.candidates.spec import parse_candidate
from parity.release.context import Check, Context, NotRun, ReleaseInputError
from parity.release.options import ReleaseOptions
from parity.release.ratchet import DEFAULT_BASELINE, GROWTH_FACTOR, NOISE_FLOOR, load_baseline, ratchet
from parity.release.registry import registry
from parity.release.waivers import load_waivers, waiver_status


REPORT_FILES = ("report.json", "report.md", "report.html")


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
    env["tf_cache"] = tf_cache_provenance()   # which TF results were reused (the gate-suite's too: one log)
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
    from parity.release.render import html as render_html, make_plots, markdown   # matplotlib: imported when writing
    os.makedirs(ctx.report_dir, exist_ok=True)
    plots = make_plots(report, ctx.worst, ctx.report_dir)
    report["plots"] = [os.path.basename(p) for p in plots]
    _write(os.path.join(ctx.report_dir, "report.json"), dumps(portable(report), indent=2, default=str) + "\n")
    _write(os.path.join(ctx.report_dir, "report.md"), markdown(report))
    _write(os.path.join(ctx.report_dir, "report.html"), render_html(report, ctx.report_dir))
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


def use_tf_cache(root: Optional[str], log: str) -> None:
    """Every TF run of this release (and of its gate-suite subprocess, which inherits the environment) goes
    through the cache at ``root`` and logs its use to ``log``, read back into the provenance; none without."""
    owner = os.environ.get(OWNER_ENV)
    if (root and os.environ.get(LOG_ENV) and os.environ.get(CACHE_ENV) == os.path.abspath(root)
            and owner and owner != str(os.getpid())):
        return   # a release run inside a release's gate-suite: its TF runs go in the outer run's log
    for name in (CACHE_ENV, LOG_ENV, OWNER_ENV):
        os.environ.pop(name, None)
    if not root:
        return
    RefCache(root)   # a folder that cannot be used is bad input now, not a crash an hour in
    if os.path.exists(log):
        os.remove(log)
    os.environ[CACHE_ENV] = os.path.abspath(root)
    os.environ[LOG_ENV] = os.path.abspath(log)
    os.environ[OWNER_ENV] = str(os.getpid())


def project_version() -> str:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m parity.release`` (``bert-parity release``)."""
    return run_main(lambda: run_release_command(ReleaseOptions.parse(argv)))


def run_release_command(opts: ReleaseOptions) -> int:
    """``--promote``, ``--list``, or the release: the selected checks run, the report folder written, the
    verdict printed. Exit 0 pass, 1 the gate fails."""
    if opts.promote:
        return promote(opts.promote, opts.baseline or DEFAULT_BASELINE)
    checks, not_run = registry()
    if opts.list_checks:
        for c in checks:
            print(f"{c.name:32} {c.what}")
        for n, why in not_run.items():
            print(f"{n:32} not run: {why}")
        return 0
    globs = opts.check_globs
    if globs is not None:   # (ReleaseOptions.check refused a selection naming nothing)
        unknown = [g for g in globs if not any(fnmatch.fnmatchcase(c.name, g) for c in checks)]
        if unknown:
            raise ReleaseInputError(f"--checks {unknown[0]}: matches no check; `--list` shows them")
        skipped = {c.name: "not selected (--checks)" for c in checks
                   if not any(fnmatch.fnmatchcase(c.name, g) for g in globs)}
        checks = [c for c in checks if c.name not in skipped]
        not_run = {**skipped, **not_run}
    version = project_version()
    commit = (git_state().get("commit") or "nogit")[:7]
    report_dir = opts.report_dir or os.path.join(REPO_ROOT, "reports", f"{version}-{commit}")
    data_dir = opts.data_dir or default_data_dir()
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        raise ReleaseInputError(f"--data-dir {opts.data_dir}: no such directory")
    today = opts.today or datetime.datetime.now(datetime.timezone.utc).date()
    ctx = Context(report_dir=report_dir, work_dir=opts.work_dir or os.path.join(REPO_ROOT, "build", "release"),
                  data_dir=data_dir, profile=PROFILES["fp32-cpu"], waivers=load_waivers(opts.waivers),
                  today=today, pytest_args=shlex.split(opts.pytest_args), require_data=opts.require_data,
                  tier=Tier(opts.precision, opts.precision_mode),
                  candidate=parse_candidate(opts.candidate) if opts.candidate else None)
    check_supported(ctx.tier, "cpu")
    baseline = load_baseline(opts.baseline)
    os.makedirs(ctx.work_dir, exist_ok=True)
    use_tf_cache(opts.tf_cache, os.path.join(ctx.work_dir, "tf-cache-uses.jsonl"))
    # The report folder is written aside and renamed into place when complete (it appears whole or not at all),
    # replacing only an empty folder or a previous release report.
    with atomic_dir(report_dir, "--report-dir", owner="release") as out:
        ctx.report_dir = out
        report = run_release(ctx, checks, not_run, baseline, version, opts.growth_factor, opts.noise_floor)
        files = [os.path.join(report_dir, os.path.relpath(f, out)) for f in write_release(report, ctx)]
    ctx.report_dir = report_dir
    print(report["headline"])
    for r in report["reasons"][1:]:
        print(f"  also: {r}")
    print(f"report: {', '.join(os.path.relpath(f) for f in files)}")
    return 0 if report["verdict"] == "pass" else 1
