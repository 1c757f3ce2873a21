"""The release report's checks, in order: one explicit list, in the manner of Polygraphy's
``tools/registry.py``. A check whose module does not import here (e.g. the fine-tuning suite without
its extras) is listed under ``checks_not_run`` with the reason, never dropped silently."""
from __future__ import annotations

import importlib

from parity.release.checks import (diagnose_check, finetune_check, gate_suite_check, minilm_check, random_check,
                     tokens_check)
from parity.release.context import Check

CHECKS: list[Check] = [
    Check("gate-suite", gate_suite_check, "pytest -m '' parity/ on 2 xdist workers: the whole gate, slow checks included"),
    Check("layerwise/minilm-l6-v2", minilm_check, "real all-MiniLM-L6-v2 weights (or --candidate), every tap, 8 x 128"),
    *[random_check(n) for n in ("tiny-1layer", "odd-heads-2layer", "3layer-headsize-3")],
    Check("tokens", tokens_check, "FullTokenizer against the official tokenizer on every MRPC and SQuAD text",
          requires="parity.tokens"),
    Check("diagnose", diagnose_check, "diagnose on the real MiniLM weights, 8 x 128: no culprit, no hint",
          requires="parity.diagnose"),
    Check("finetune", finetune_check, "fine-tuning parity: optimizer, features, gradients, MRPC and SQuAD runs, seeds",
          requires="parity.finetune"),
]


def unavailable(check: Check) -> str | None:
    """Why ``check`` cannot run in this installation, or None."""
    if not check.requires:
        return None
    try:
        importlib.import_module(check.requires)
    except ImportError as e:
        return f"{check.requires} is not importable ({e})"
    return None


def registry() -> tuple[list[Check], dict[str, str]]:
    """Every check of a release that can run here, in order, and those that cannot, with the reason."""
    why = {c.name: unavailable(c) for c in CHECKS}
    return [c for c in CHECKS if why[c.name] is None], {n: w for n, w in why.items() if w is not None}
