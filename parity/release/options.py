"""The flags of ``bert-parity release`` (``python -m parity.release``), declared once as the typed options the
release gate runs on (``bert_torch.options``).

Light on purpose, like ``parity.compare.options``: ``bert-parity release --help`` builds its parser from here
without importing torch. The ratchet's and the waivers' defaults are declared here, beside the flags that
override them, and those modules import them from here.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from typing import ClassVar, Optional

from bert_torch.flags import input_dir, input_file, iso_date, maybe_file, or_empty, output_dir, real
from bert_torch.options import Options, flag

from parity.files import CACHE_ENV, PACKAGE_DIR, REPO_ROOT
from parity.inputs import BadInput

# The ratchet's baseline and rule (a tap regresses when its error grows past GROWTH_FACTOR times the
# baseline's and above NOISE_FLOOR, in units of its tolerance), and the waiver ledger.
DEFAULT_BASELINE = os.path.join(REPO_ROOT, "reports", "baseline.json")
DEFAULT_WAIVERS = os.path.join(PACKAGE_DIR, "waivers.toml")
GROWTH_FACTOR = 2.0
NOISE_FLOOR = 0.05
REQUIRE_DATA_ENV = "PARITY_REQUIRE_DATA"   # =1: --require-data (CI)


@dataclasses.dataclass(frozen=True)
class ReleaseOptions(Options):
    """``bert-parity release`` (``python -m parity.release``)."""
    PROG: ClassVar[str] = "bert-parity release"
    DESCRIPTION: ClassVar[str] = "The release gate and its report."

    report_dir: Optional[str] = flag("--report-dir", type=output_dir("report folder", owner="release"),
                                     help="default: reports/<version>-<commit>")
    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="real data (MRPC, SQuAD); default ../shared/data beside the repo when present")
    work_dir: Optional[str] = flag("--work-dir", type=output_dir("work folder"),
                                   help="checkpoints built for the report (default: build/release)")
    baseline: str = flag("--baseline", default=DEFAULT_BASELINE, type=or_empty(maybe_file("baseline report")),
                         help="last release's report.json ('' for none)")
    waivers: str = flag("--waivers", default=DEFAULT_WAIVERS, type=or_empty(input_file("waiver ledger")),
                        help="waiver ledger (TOML)")
    checks: Optional[str] = flag("--checks", help="comma-separated globs of check names to run (default: all)")
    pytest_args: str = flag("--pytest-args", default="-m '' -n 2 --dist loadfile parity/",
                            help="arguments of the gate-suite pytest run (by default two pytest-xdist workers, a "
                                 "test file per worker at a time, so a file's TF fixtures are built once)")
    growth_factor: float = flag("--growth-factor", type=real(1.0, 1e6), default=GROWTH_FACTOR,
                                help="a tap regresses when its error grows by more than this factor over the "
                                     "baseline's (>= 1)")
    noise_floor: float = flag("--noise-floor", type=real(0.0, 1.0), default=NOISE_FLOOR,
                              help="errors under this share of the tap's tolerance never count as a regression "
                                   "(0 to 1)")
    today: Optional[datetime.date] = flag("--today", type=iso_date(),
                                          help="date the waivers expire against (default: today, UTC)")
    list_checks: bool = flag("--list", action="store_true", default=False, help="list the checks and exit")
    precision: str = flag("--precision", default="fp32",
                          help="the candidate's tier in the layerwise checks: fp32, tf32, bf16, fp16 (the reference "
                               "stays the float32 graph)")
    precision_mode: str = flag("--precision-mode", default="autocast", help="bf16/fp16: autocast or cast")
    candidate: Optional[str] = flag("--candidate", metavar="KIND:PATH",
                                    help="the model the primary check (real MiniLM weights, every tap) proves instead "
                                         "of bert_torch: bert_torch:W, hf:DIR, ppb:FILE, onnx:FILE, "
                                         "module:pkg.mod:factory (built from the same MiniLM weights; the random-init "
                                         "checks stay bert_torch)")
    tf_cache: Optional[str] = flag("--tf-cache", metavar="DIR", type=output_dir("TF cache folder"),
                                   help="reuse the official graph's results (taps, gradients, training runs) stored "
                                        "in DIR by an earlier run when everything that determines them is unchanged, "
                                        "and store new ones there (make report: build/tf-cache; default: "
                                        f"${CACHE_ENV}, else none). The report's provenance says what was reused")
    promote: Optional[str] = flag("--promote", metavar="REPORT_JSON", type=input_file("release report"),
                                  help="make this passing report the baseline and exit")
    require_data: bool = flag("--require-data", action="store_true", default=False,
                              help="a check whose data set is missing fails the gate instead of being listed as not "
                                   f"run (CI; also {REQUIRE_DATA_ENV}=1)")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The flags' defaults that come from the environment are read when the command line is parsed (and
        checked as a typed value would be), not when this module is imported."""
        parser = super().parser()
        parser.set_defaults(tf_cache=os.environ.get(CACHE_ENV) or None,
                            require_data=os.environ.get(REQUIRE_DATA_ENV) == "1")
        return parser

    @property
    def check_globs(self) -> Optional[list[str]]:
        """``--checks`` as a list of globs (None: every check)."""
        return None if self.checks is None else [g.strip() for g in self.checks.split(",") if g.strip()]

    def check(self) -> None:
        if self.checks is not None and not self.check_globs:
            # an empty selection is a mistake, not a gate that ran nothing (or everything)
            raise BadInput(f"--checks {self.checks!r}: names no check; `--list` shows them")
