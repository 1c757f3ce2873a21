"""``bert-parity``: one command for everything bert-parity does (also ``python -m parity``).

    bert-parity [--version] [--verbose] COMMAND [ARGS...]    # bert-parity COMMAND --help for its arguments

Each subcommand is the ``main`` of the module that implements it (``COMMANDS``), given the rest of
the command line: ``bert-parity tokens --sample`` is ``python -m parity.tokens --sample``. The
modules are imported only when their command runs, so that ``--help`` and ``--version`` load neither
torch nor TensorFlow, and a command needs only the extras it uses.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import re
import sys
import threading
from importlib import metadata
from typing import Optional

from bert_torch.commands import EXIT_CODES_HELP, VERBOSE_ENV, ArgumentParser, run_main

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
    "bench": ("parity.bench", False, "bert_torch against HF, TF and the GEMM floor, forward and training step (asserts nothing)"),
    "calibrate": ("parity.diagnose.calibrate", False, "measure per-tap noise floors for a calibrated profile"),
    "export-onnx": ("parity.candidates_onnx", False, "write an ONNX file with every tap as a graph output, from any "
                                                     "PyTorch candidate (--candidate KIND:PATH)"),
    "portability": ("parity.portability", False, "MiniLM and the mutation suite under emulated CPUs (make portability)"),
    "gpu-check": ("parity.gpu_check", False, "candidate tiers on CUDA against CPU golden files (make gpu-check)"),
}


# TensorFlow's native log lines: `I0000 00:00:1796135975.943563   10287 port.cc:153] ...` (severity I, W, E;
# F, fatal, is kept) and absl's notice that they precede its initialisation.
TF_LOG_LINE = re.compile(rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
                         rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


_filtering = False


def drop_native_tf_logs() -> None:
    """Routes this process's stderr (file descriptor 2, inherited by child processes) through a filter that
    drops TensorFlow's native log lines and passes everything else on.

    TF_CPP_MIN_LOG_LEVEL=3 silences most of them, but not those logged while TensorFlow's shared libraries
    load: absl writes those to stderr before its logging is initialised, whatever the threshold (the oneDNN
    and "Could not find cuda drivers" notices; abseil-cpp PR #1718 and #1957 propose to fix it there).
    Installed once per process (a second call does nothing).
    """
    global _filtering
    if _filtering:
        return
    _filtering = True
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not TF_LOG_LINE.match(line):
                    try:
                        os.write(real, line)
                    except OSError:   # stderr closed by the reader (`| head`): keep draining, never block writers
                        pass

    thread = threading.Thread(target=pump, name="drop-native-tf-logs", daemon=True)
    thread.start()

    def restore() -> None:   # at exit: the pipe's last write end closes, the filter drains it and stops
        sys.stderr.flush()
        os.dup2(real, 2)
        thread.join(timeout=10)
    atexit.register(restore)


def version() -> str:
    try:
        return metadata.version("bert-parity")
    except metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
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
    """Runs a command. As the program's entry point (``argv`` None: the console script, ``python -m parity``)
    it also owns the process's stderr and filters TensorFlow's native log lines out of it."""
    entry_point = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    # TensorFlow reads its log level once, at import: set before any command can import it.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    if verbose:   # every command's errors come with their traceback (bert_torch.commands.run_main)
        os.environ[VERBOSE_ENV] = "1"
    if entry_point and not verbose and argv and argv[0] not in ("-h", "--help", "--version"):
        drop_native_tf_logs()
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or argv[first] not in COMMANDS or any(a in ("-h", "--help", "--version") for a in argv[:first]):
        parser().parse_args(argv)   # --help, --version, or a usage error naming the unknown command (exit 2)
        return 2
    module, with_name, _ = COMMANDS[argv[first]]
    rest = argv[first:] if with_name else argv[first + 1:]
    # Around every command, whatever its module does itself: an uncaught error is an internal error (exit 3),
    # never Python's traceback and exit 1, which the contract keeps for a parity failure.
    return run_main(lambda: importlib.import_module(module).main(rest))
