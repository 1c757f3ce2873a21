"""``bert-parity``: one command for everything bert-parity does (also ``python -m parity``).

    bert-parity [--version] [--verbose] COMMAND [ARGS...]    # bert-parity COMMAND --help for its arguments

Each subcommand is the ``main`` of the module that implements it (``COMMANDS``), given the rest of
the command line: ``bert-parity tokens --sample`` is ``python -m parity.tokens --sample``. The
modules are imported only when their command runs, so that ``--help`` and ``--version`` load neither
torch nor TensorFlow, and a command needs only the extras it uses.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import metadata
from typing import Optional

from bert_torch.commands import EXIT_CODES_HELP

# command -> (module whose main(argv) runs it, whether main expects the command name first, help)
COMMANDS = {
    "convert": ("bert_torch.convert", False, "TF checkpoint to PyTorch weights (--to-tf: and back)"),
    "compare": ("parity.cli", True, "run both sides on the same inputs and compare every tap "
                                    "(--golden FILE: against a recorded TF run, without TensorFlow)"),
    "diagnose": ("parity.cli", True, "culprit block, root-cause hints, precision ladder, repro script"),
    "dump": ("parity.golden", False, "record the official graph's inputs and every tap in a golden file"),
    "tokens": ("parity.tokens", False, "token parity of bert_torch's tokenizer against the official one"),
    "finetune": ("parity.finetune", False, "fine-tuning parity: optimizer, features, gradients, training"),
    "release": ("parity.release", False, "the release gate and its report (make report)"),
    "bench": ("parity.bench", False, "forward-pass time, PyTorch against TensorFlow (asserts nothing)"),
    "calibrate": ("parity.diagnose_calibrate", False, "measure per-tap noise floors for a calibrated profile"),
}


def version() -> str:
    try:
        return metadata.version("bert-parity")
    except metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bert-parity", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Numerical parity of a PyTorch BERT against Google's official TensorFlow BERT graph.",
        epilog=f"{EXIT_CODES_HELP}.\n`bert-parity COMMAND --help` lists a command's arguments and their defaults.")
    ap.add_argument("--version", action="version", version=f"bert-parity {version()}")
    ap.add_argument("--verbose", action="store_true",
                    help="show TensorFlow's own log lines (silenced by default); accepted anywhere on the line")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    # TensorFlow reads its log level once, at import: set before any command can import it.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or argv[first] not in COMMANDS or any(a in ("-h", "--help", "--version") for a in argv[:first]):
        parser().parse_args(argv)   # --help, --version, or a usage error naming the unknown command (exit 2)
        return 2
    module, with_name, _ = COMMANDS[argv[first]]
    rest = argv[first:] if with_name else argv[first + 1:]
    return importlib.import_module(module).main(rest)
