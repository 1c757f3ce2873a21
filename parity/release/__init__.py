"""The release gate and its report: ``python -m parity.release --report-dir reports/<version>-<commit>``.

A release report is a list of *checks*, each a function ``(ctx) -> section`` (a dict with at
least ``name``, ``verdict`` ("pass"/"fail"), ``summary``), run in order:

- ``gate-suite``: the whole pytest gate (``pytest -m '' parity/``), as a subprocess;
- ``layerwise/<checkpoint>``: every tap of the official graph against bert_torch, for the
  real all-MiniLM-L6-v2 weights and three random-init configs of ``parity/checkpoints.py``;
- ``tokens``, ``diagnose``, ``finetune``: run when ``parity.tokens``, ``parity.diagnose``,
  ``parity.finetune`` import here (else listed under ``checks_not_run`` with the reason).
  ``registry.CHECKS`` is the one list: a new check is a function ``(ctx) -> section`` added there.

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

The modules: ``context`` (Context, Check, the two exceptions), ``checks``, ``registry``, ``waivers``,
``ratchet``, ``gate`` (the run, the files, the command line), ``render`` (report.md/.html, plots).
"""
