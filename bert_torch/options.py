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

from ._io import check_output_dir, check_output_file
from .commands import EXIT_CODES_HELP, ArgumentParser, HelpFormatter
from .flags import OutputPath, checkpoint, input_file, input_file_or_dir

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


@dataclasses.dataclass(frozen=True)
class ConvertOptions(Options):
    """``bert-parity convert`` (``bert-convert``, ``python -m bert_torch.convert``): TF checkpoint to PyTorch
    weights or a transformers folder, and back (``--to-tf``)."""
    PROG: ClassVar[str] = "bert-parity convert"
    DESCRIPTION: ClassVar[str] = "Convert Google's TF BERT checkpoints to PyTorch weights and back."

    # The second spelling of a flag is the original PyTorch port's (convert_tf_checkpoint_to_pytorch.py).
    tf_checkpoint: Optional[str] = flag("--tf-checkpoint", "--tf_checkpoint_path", type=checkpoint(),
                                        help="checkpoint directory or prefix (TF -> PyTorch)")
    to_tf: bool = flag("--to-tf", action="store_true", default=False,
                       help="convert PyTorch weights to a TF checkpoint")
    torch_weights: Optional[str] = flag("--torch-weights", type=input_file_or_dir("weights file or HF folder"),
                                        help="safetensors or .bin/.pt state dict (with --to-tf)")
    bert_config: Optional[str] = flag("--bert-config", "--bert_config_file", type=input_file("bert_config.json"),
                                      help="bert_config.json (default: the one beside the checkpoint)")
    vocab_file: Optional[str] = flag("--vocab-file", type=input_file("vocab file"),
                                     help="with --to-tf: copy this vocab.txt beside the checkpoint")
    body_only: bool = flag("--body-only", action="store_true", default=False,
                           help="skip head variables (cls/, output_*), so the file loads into a plain BertModel")
    # A file or a folder: which one is --output-format's to say (``check``).
    output: str = flag("--output", "--pytorch_dump_path", required=True, type=OutputPath("output", folder=None),
                       help="OUT.safetensors (or .bin), a folder with --output-format hf, or with --to-tf a "
                            "checkpoint prefix")
    output_format: str = flag("--output-format", choices=("weights", "hf"), default="weights",
                              help="weights: one file (safetensors, or a .bin state dict); hf: a transformers "
                                   "directory (config.json, model.safetensors, tokenizer files) that "
                                   "AutoModel/AutoTokenizer load")

    def check(self) -> None:
        if self.to_tf and not self.torch_weights:
            raise ValueError("--to-tf needs --torch-weights (a weights file with --bert-config, or an HF directory)")
        if not self.to_tf and not self.tf_checkpoint:
            raise ValueError("give --tf-checkpoint (TF -> PyTorch) or --to-tf")
        # The output's kind depends on --output-format: checked before any work, as the flag's type checks the rest.
        try:
            if self.output_format == "hf" and not self.to_tf:
                check_output_dir(self.output, "convert")
            else:
                check_output_file(self.output)
        except OSError as e:
            raise ValueError(f"argument --output: {e}") from None
