"""``bert-parity``: one command for everything bert-parity does (also ``python -m parity``).

    bert-parity [--version] [--verbose] COMMAND [ARGS...]    # bert-parity COMMAND --help for its arguments

Each subcommand (``COMMANDS``) is an options class and a function: the rest of the command line is parsed
into the typed options (``bert_torch.options``: every flag declared once, with its type and range), and only
then is the function's module imported and run on them. ``--help``, ``--version`` and every usage error are
answered without loading torch or TensorFlow, and a command needs only the extras it uses.
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
from typing import NamedTuple, Optional

from bert_torch.commands import EXIT_CODES_HELP, VERBOSE_ENV, ArgumentParser, run_main

class Command(NamedTuple):
    """A subcommand: its options class (``module:Class``, light: parsing it imports neither torch nor TensorFlow),
    the function that runs on the parsed options (``module:function``, imported only after parsing), its help."""
    options: str
    run: str
    help: str


COMMANDS = {
    "convert": Command("bert_torch.options:ConvertOptions", "bert_torch.convert:run_convert",
                       "TF checkpoint to PyTorch weights (--to-tf: and back; --output-format hf: a transformers "
                       "folder)"),
    "compare": Command("parity.compare.options:CompareOptions", "parity.compare.command:run_compare",
                       "run both sides on the same inputs and compare every tap (--golden FILE: against a recorded "
                       "TF run, without TensorFlow)"),
    "diagnose": Command("parity.diagnose.options:DiagnoseOptions", "parity.diagnose.command:run_diagnose",
                        "culprit block, root-cause hints, precision ladder, repro script"),
    "evaluate": Command("parity.evaluate.options:EvaluateOptions", "parity.evaluate.command:run_evaluate",
                        "task-level parity of a fine-tuned checkpoint: dev-set predictions and metrics (MRPC, "
                        "SQuAD) of the official graph against a candidate"),
    "dump": Command("parity.compare.options:DumpOptions", "parity.compare.golden:dump",
                    "record the official graph's inputs and every tap in a golden file"),
    "tokens": Command("parity.tokens:TokensOptions", "parity.tokens:run_tokens",
                      "token parity of bert_torch's tokenizer against the official one"),
    "finetune": Command("parity.finetune.options:FinetuneOptions", "parity.finetune.suite:run_finetune",
                        "fine-tuning parity: optimizer, features, gradients, training"),
    "release": Command("parity.release.options:ReleaseOptions", "parity.release.gate:run_release_command",
                       "the release gate and its report (make report)"),
    "bench": Command("parity.checks.options:BenchOptions", "parity.checks.bench:run_bench",
                     "bert_torch against HF, TF and the GEMM floor, forward and training step (asserts nothing)"),
    "calibrate": Command("parity.diagnose.options:CalibrateOptions", "parity.diagnose.calibrate:run_calibrate",
                         "measure per-tap noise floors for a calibrated profile"),
    "export-onnx": Command("parity.candidates.options:ExportOnnxOptions", "parity.candidates.export_onnx:run_export",
                           "write an ONNX file with every tap as a graph output, from any PyTorch candidate "
                           "(--candidate KIND:PATH)"),
    "portability": Command("parity.checks.options:PortabilityOptions", "parity.checks.portability:run_portability",
                           "MiniLM and the mutation suite under emulated CPUs (make portability)"),
    "gpu-check": Command("parity.checks.options:GpuCheckOptions", "parity.checks.gpu:run_gpu_check",
                         "candidate tiers on CUDA against CPU golden files (make gpu-check)"),
}


def load(target: str):
    """``module:name`` to the object it names."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def run_command(name: str, argv: list[str]) -> int:
    """The command's options parsed from ``argv`` (a usage error or ``--help`` ends here, before any model
    library is imported), then its run on them."""
    command = COMMANDS[name]
    opts = load(command.options).parse(argv)
    return load(command.run)(opts)


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
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
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
    # Around every command, whatever its module does itself: an uncaught error is an internal error (exit 3),
    # never Python's traceback and exit 1, which the contract keeps for a parity failure.
    return run_main(run_command, argv[first], argv[first + 1:])
