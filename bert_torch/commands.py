"""What every command of the project shares: the exit codes, the one mapping from an error to an exit
code and its line on stderr (``run_main``), and the ``--help`` formatter.

Every ``main`` (``bert_torch.convert``, and each ``bert-parity`` subcommand) runs its body through
``run_main``. It lives here, in the package every other one may import (``bert_torch`` imports
neither ``parity`` nor ``reference_tf``), so that there is one list and not one per command.
Exit codes (CONTRACT.md): 0 pass or done; 1 parity failure (the command returns it); 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

EXIT_OK, EXIT_PARITY_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

EXIT_CODES_HELP = "exit codes: 0 pass (or done), 1 parity failure, 2 bad input (one line on stderr)"

# Top-level modules that come only with the `tf` extra (TensorFlow, its Keras 2, Google's official BERT).
TF_MODULES = frozenset({"tensorflow", "tf_keras", "bert", "reference_tf"})
TF_MISSING = ("TensorFlow is not installed (no module {name!r}): install the `tf` extra "
              "(pip install 'bert-parity[tf]'), or compare against a golden file with --golden FILE")


def error_lines(exc: BaseException) -> Optional[list[str]]:
    """The stderr lines of an error that is bad input, or None for a bug (which keeps its traceback).

    Bad input: ``ValueError`` (and its subclasses: ``CheckpointError``, ``WeightsError``,
    ``InputError``, ``BadInput``, ``GoldenError``...), ``OSError`` (unreadable, missing or
    unwritable files), and a missing TensorFlow. ``WeightsError`` gives one line per culprit.
    """
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in TF_MODULES:
        return [TF_MISSING.format(name=exc.name)]
    problems = getattr(exc, "problems", None)
    if isinstance(exc, ValueError) and problems:
        return [str(p) for p in problems]
    if isinstance(exc, (ValueError, OSError)):
        text = str(exc)
        return [text.splitlines()[0] if text.strip() else type(exc).__name__]
    return None


def run_main(body: Callable[..., int], *args, **kwargs) -> int:
    """``body(*args, **kwargs)``'s exit code; a bad-input error becomes exit 2 and its line(s) on stderr."""
    try:
        return body(*args, **kwargs)
    except KeyboardInterrupt:   # Ctrl-C: outputs are written atomically (bert_torch._io), none is half there
        print("error: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Exception as e:   # noqa: BLE001 - only what error_lines classifies is caught; the rest re-raised
        lines = error_lines(e)
        if lines is None:
            raise
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a usage error made the contract's bad input: exit 2 and one line on stderr
    naming the flag and the value at fault (``error: argument --batch-size: invalid int value: 'x'``),
    ending with where the usage is, instead of argparse's usage block above its message. Subcommands'
    parsers (``add_subparsers().add_parser``) are of the same class."""

    def error(self, message: str):
        first = message.splitlines()[0] if message.strip() else "bad command line"
        self.exit(EXIT_BAD_INPUT, f"error: {first} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, quiet where there is no default to tell (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)
