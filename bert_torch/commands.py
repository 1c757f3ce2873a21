"""What every command of the project shares: the exit codes, the one mapping from an error to an exit
code and its line on stderr (``run_main``), and the ``--help`` formatter.

Every ``main`` (``bert_torch.convert``, and each ``bert-parity`` subcommand) runs its body through
``run_main``. It lives here, in the package every other one may import (``bert_torch`` imports
neither ``parity`` nor ``reference_tf``), so that there is one list and not one per command.
Exit codes (CONTRACT.md): 0 pass or done; 1 parity failure (the command returns it, and nothing else
does); 2 bad input; 3 an internal error of the tool; 130 / 143 interrupted by SIGINT / SIGTERM.

Other people's code (a candidate's factory and forward, the libraries that load it, a user's module) runs
inside ``foreign(where)``: whatever it raises, ``SystemExit`` included, becomes bad input naming ``where``,
so that a user's code can neither crash the tool into exit 3 nor set its exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from typing import Callable, Iterator, Optional

from ._io import only_our_outputs_replaced

EXIT_OK, EXIT_PARITY_FAILURE, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_SIGINT = 130   # SIGTERM ends the process by the signal itself (143 to a shell), after the temporaries go

EXIT_CODES_HELP = ("exit codes: 0 pass (or done), 1 parity failure, 2 bad input (one line on stderr), "
                   "3 internal error, 130/143 interrupted")
# Where an internal error is to be reported: one wording for every command.
REPORT_BUGS = "the bert-parity maintainers' issue tracker"
# `bert-parity --verbose` (or BERT_PARITY_VERBOSE=1): an error's traceback is printed after its line.
VERBOSE_ENV = "BERT_PARITY_VERBOSE"

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


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


# SIGINT seen by this process: a KeyboardInterrupt without one was raised by someone's code, not by Ctrl-C.
_sigint_received = False


def _record_sigint(signum, frame):
    global _sigint_received
    _sigint_received = True
    signal.default_int_handler(signum, frame)   # raises KeyboardInterrupt, as Python's own handler does


def _watch_sigint() -> None:
    with contextlib.suppress(ValueError, OSError):   # only the main thread may set handlers
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _record_sigint)


class ForeignError(ValueError):
    """Someone else's code or data failed (a candidate, a library loading it, a user's module): bad input,
    one line naming where it ran and what it raised."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextlib.contextmanager
def foreign(where: str, ours: tuple = ()) -> Iterator[None]:
    """Runs a block of other people's code: anything it raises becomes a ``ForeignError`` naming ``where``
    (exit 2), except this tool's own bad-input errors (``ours``: they name their culprit already) and a real
    Ctrl-C. ``sys.exit()`` in a user's factory is reported, never taken as the tool's exit code."""
    real_exit = os._exit

    def refuse_exit(code=0):   # os._exit ends the process at once: no report, and the user's code's exit code
        raise SystemExit(code)
    os._exit = refuse_exit
    try:
        yield
    except ours:
        raise
    except KeyboardInterrupt:
        if _sigint_received:
            raise
        raise ForeignError(f"{where}: raised KeyboardInterrupt without a Ctrl-C") from None
    except SystemExit as e:
        raise ForeignError(f"{where}: called sys.exit({e.code!r}) or os._exit; a candidate's code cannot end "
                           f"the run") from None
    except GeneratorExit:
        raise
    except Exception as e:   # noqa: BLE001 - the boundary: whatever the foreign code raised, named
        if verbose():
            traceback.print_exc()
        raise ForeignError(f"{where}: {_first_line(e)}") from e
    finally:
        os._exit = real_exit


def _internal_error(e: BaseException) -> int:
    if verbose():
        traceback.print_exc()
    print(f"error: internal error of bert-parity ({_first_line(e)}); this is a bug of the tool, not of your "
          f"input: please report it to {REPORT_BUGS} with the command line, `bert-parity --version` and the "
          f"traceback (`bert-parity --verbose ...` prints it)", file=sys.stderr)
    return EXIT_INTERNAL


def run_main(body: Callable[..., int], *args, **kwargs) -> int:
    """``body(*args, **kwargs)``'s exit code; a bad-input error becomes exit 2 and its line(s) on stderr, any
    other exception exit 3 (an internal error: one line, the traceback with ``--verbose``), never 1."""
    _watch_sigint()
    try:
        with only_our_outputs_replaced():
            return body(*args, **kwargs)
    except KeyboardInterrupt:   # Ctrl-C: outputs are written aside (bert_torch._io) and their temporaries removed
        print("error: interrupted; nothing was written at a final output name", file=sys.stderr)
        return EXIT_SIGINT
    except SystemExit as e:   # argparse's usage error (exit 2, its line printed) or --help (0): a code, not an exit
        return e.code if isinstance(e.code, int) else EXIT_OK if e.code is None else EXIT_BAD_INPUT
    except Exception as e:   # noqa: BLE001 - the one mapping from an error to an exit code
        lines = error_lines(e)
        if lines is None:
            return _internal_error(e)
        if verbose():
            traceback.print_exc()
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a usage error made the contract's bad input: exit 2 and one line on stderr
    naming the flag and the value at fault (``error: argument --batch-size: invalid int value: 'x'``),
    ending with where the usage is, instead of argparse's usage block above its message. Subcommands'
    parsers (``add_subparsers().add_parser``) are of the same class."""

    def parse_or_exit_code(self, argv=None):
        """``parse_args``, for a ``main`` that returns its exit code rather than raising ``SystemExit``: the
        namespace, or the code of a usage error (2, its line already printed) or of ``--help`` (0)."""
        try:
            return self.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT

    def usage_error(self, message: str) -> int:
        """A usage error's line on stderr; returns its exit code (2), for a ``main`` that returns its code."""
        first = message.splitlines()[0] if message.strip() else "bad command line"
        print(f"error: {first} (see {self.prog} --help)", file=sys.stderr)
        return EXIT_BAD_INPUT

    def error(self, message: str):
        sys.exit(self.usage_error(message))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, quiet where there is no default to tell (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)
