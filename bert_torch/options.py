"""A command's flags declared once, as the fields of a dataclass: the typed options the command runs on.

    @dataclasses.dataclass(frozen=True)
    class ConvertOptions(Options):
        PROG = "bert-parity convert"
        tf_checkpoint: Optional[str] = flag("--tf-checkpoint", type=checkpoint(), help="...")
        ...

    opts = ConvertOptions.parse(argv)   # usage errors and bad values: exit 2, one line naming the flag

Each field that is a ``flag`` becomes one argparse argument (its names, its declared type from
``bert_torch.flags``, its default, its help); parsing returns the dataclass, and ``check`` refuses what no
single flag can (two flags that exclude each other, one that needs another) before any work starts. The
command's entry point is the only place that sees argparse: everything below it takes the options object.

This module is light on purpose (no torch, no TensorFlow): ``bert-parity COMMAND --help`` builds the parser
from here without loading a model library.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, ClassVar, Optional

from .commands import EXIT_CODES_HELP, ArgumentParser, HelpFormatter

_FLAG = "bert_parity_flag"


def flag(*names: str, default: Any = None, **argparse_kwargs) -> Any:
    """A dataclass field that is also the flag ``names`` (``argparse_kwargs``: type, choices, action, required,
    metavar, help). ``default`` is both the field's and the flag's."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("a flag's default must be immutable (a tuple, not a list)")
    return dataclasses.field(default=default, metadata={_FLAG: (names, argparse_kwargs)})


def flags_of(cls) -> list[tuple[dataclasses.Field, tuple, dict]]:
    """The fields of an options class that are flags, in declaration order (base classes first)."""
    return [(f, *f.metadata[_FLAG]) for f in dataclasses.fields(cls) if _FLAG in f.metadata]


class Options:
    """Base of every command's options (a frozen dataclass). Subclasses set ``PROG`` and ``DESCRIPTION``."""
    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    EPILOG: ClassVar[str] = EXIT_CODES_HELP

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for field, names, kwargs in flags_of(cls):
            parser.add_argument(*names, dest=field.name, default=field.default, **kwargs)

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = ArgumentParser(prog=cls.PROG, description=cls.DESCRIPTION, epilog=cls.EPILOG,
                                formatter_class=HelpFormatter)
        cls.add_arguments(parser)
        return parser

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace):
        opts = cls(**{field.name: getattr(namespace, field.name) for field, _, _ in flags_of(cls)})
        opts.check()
        return opts

    @classmethod
    def parse(cls, argv: Optional[list[str]] = None):
        """The options of one command line. A usage error or ``--help`` raises SystemExit (2 or 0) as argparse
        does; ``bert_torch.commands.run_main`` turns it into the exit code."""
        return cls.from_namespace(cls.parser().parse_args(argv))

    def check(self) -> None:
        """Relations between flags, checked once the command line is parsed: raise ValueError (exit 2) naming
        the flags at fault. Each flag's own type and range are checked while parsing (``bert_torch.flags``)."""

    def replace(self, **changes):
        """A copy with ``changes`` (the options are frozen: a command that writes aside, e.g. into a temporary
        report folder, runs its body on a copy)."""
        return dataclasses.replace(self, **changes)
