"""Every command-line flag's type and range, declared once and checked while the command line is parsed.

A flag's ``type=`` is one of these declarations: ``count(1, 65536)``, ``real(above=0)``, ``input_file("vocab")``,
``output_dir(owner="compare")``... argparse calls it on the flag's text, so a bad value is refused before any
work starts, as a usage error that names the flag (``error: argument --growth-factor: nan is not a finite
number (see ...)``, exit 2). Each declaration keeps what it checks (``kind``, ``lo``, ``hi``, ``what``), so that a
test can list every numeric and path flag of every command and feed each one hostile values.

Numbers: NaN and infinities are refused everywhere (no comparison with NaN is true: a NaN threshold would
switch a gate off). Paths: an input must be a regular file (or a folder, where the flag takes one); a FIFO, a
pipe (``<(cat f)``), a device or a socket is refused by name, since it could hang, never end, or be read twice
with different contents. An output must not be an existing folder (file flags), an existing file (folder
flags), a special file, or somewhere no folder can be made; an output folder that exists must be empty or a
previous output of the same command (``bert_torch._io.check_output_dir``).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import stat
from typing import Optional

from ._io import check_output_dir, check_output_file, describe_special


class Declared:
    """A flag's type: a callable argparse applies to the text, raising ``ArgumentTypeError`` with a reason."""
    kind = "text"

    def __call__(self, text: str):
        raise NotImplementedError


class Number(Declared):
    """An int (``kind`` "int") or a finite float (``kind`` "real") within [lo, hi], ends open where asked."""

    def __init__(self, kind: str, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = kind   # argparse names the type in "invalid <type> value"

    def range(self) -> str:
        show = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {show(self.lo)}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {show(self.hi)}"
        return " and ".join(p for p in (lo, hi) if p) or "any"

    def __call__(self, text: str):
        text = str(text).strip()
        try:
            value = int(text, 10) if self.kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if self.kind == 'int' else 'a number'}") from None
        if self.kind == "real" and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if ((self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)))
                or (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {self.range()}")
        return value


def count(lo: int = 1, hi: int = 1 << 31) -> Number:
    """An integer in [lo, hi] (default: positive, below 2^31)."""
    return Number("int", lo, hi)


def real(lo: Optional[float] = None, hi: Optional[float] = None, *, above: Optional[float] = None,
         below: Optional[float] = None) -> Number:
    """A finite float in [lo, hi], or (above, below) for open ends."""
    return Number("real", above if above is not None else lo, below if below is not None else hi,
                  lo_open=above is not None, hi_open=below is not None)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        reason = "no such file or directory" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        raise argparse.ArgumentTypeError(f"{path}: {reason}") from None


class InputPath(Declared):
    """An existing regular file (``files``), folder (``folders``), or either; readable."""

    def __init__(self, what: str, files: bool = True, folders: bool = False):
        self.what, self.files, self.folders = what, files, folders
        self.kind = "input " + ("file or folder" if files and folders else "file" if files else "folder")

    def __call__(self, text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"empty path for the {self.what}")
        st = _stat(text)
        if stat.S_ISDIR(st.st_mode):
            if not self.folders:
                raise argparse.ArgumentTypeError(f"{text}: is a folder; give the {self.what} file")
        elif stat.S_ISREG(st.st_mode):
            if not self.files:
                raise argparse.ArgumentTypeError(f"{text}: is a file; give the {self.what} folder")
        else:
            raise argparse.ArgumentTypeError(f"{text}: {describe_special(st)}, not a regular file (the {self.what} "
                                             f"is read by size, and may be read twice): copy it to a file first")
        if not os.access(text, os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)):
            raise argparse.ArgumentTypeError(f"{text}: permission denied")
        return text


def input_file(what: str) -> InputPath:
    return InputPath(what)


def input_dir(what: str) -> InputPath:
    return InputPath(what, files=False, folders=True)


def input_file_or_dir(what: str) -> InputPath:
    return InputPath(what, files=True, folders=True)


class Checkpoint(Declared):
    """A TF checkpoint: its folder, or a prefix whose ``.index`` is a regular file (or one of its files); with
    ``weights``, also a PyTorch weights file (``.safetensors``, ``.bin``, ``.pt``: the original port's runners
    take either as ``--init_checkpoint``)."""
    kind = "input checkpoint"
    what = "checkpoint"
    WEIGHTS = (".safetensors", ".bin", ".pt")

    def __init__(self, weights: bool = False):
        self.weights = weights

    def __call__(self, text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("empty path for the checkpoint")
        if os.path.isdir(text):
            return InputPath("checkpoint", files=False, folders=True)(text)
        if self.weights and text.endswith(self.WEIGHTS):
            return InputPath("weights file")(text)
        # A prefix, or one of its files (``.index``, ``.meta``, ``.data-*``): the prefix's index must be there,
        # as ``bert_torch.tf_checkpoint.checkpoint_prefix`` resolves it; any other file is not a checkpoint.
        prefix = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", text)
        if os.path.lexists(prefix + ".index"):
            InputPath("checkpoint index")(prefix + ".index")
            return text
        also = f", or a weights file ({', '.join(self.WEIGHTS)})" if self.weights else ""
        raise argparse.ArgumentTypeError(f"{text}: no checkpoint folder, prefix ({prefix}.index) or file of one{also}")


def checkpoint(weights: bool = False) -> Checkpoint:
    return Checkpoint(weights)


class OutputPath(Declared):
    """A file (or, with ``folder``, a folder) this command may write: checked now, written aside later."""

    def __init__(self, what: str, folder: Optional[bool] = False, owner: Optional[str] = None):
        self.what, self.folder, self.owner = what, folder, owner   # folder None: either (a later flag decides)
        self.kind = {True: "output folder", False: "output file", None: "output file or folder"}[folder]

    def __call__(self, text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"empty path for the {self.what}")
        try:
            if self.folder:
                check_output_dir(text, self.owner)
            elif self.folder is False or not os.path.isdir(text):
                check_output_file(text.rstrip(os.sep) if self.folder is None else text)
        except OSError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text


class MaybeFile(Declared):
    """A file that is read when it exists and may be written (``release --baseline``, which ``--promote``
    writes): a regular file or nothing, never a folder or a special file."""
    kind = "file"

    def __init__(self, what: str):
        self.what = what

    def __call__(self, text: str) -> str:
        return InputPath(self.what)(text) if os.path.lexists(text) else OutputPath(self.what)(text)


def maybe_file(what: str) -> MaybeFile:
    return MaybeFile(what)


def output_file(what: str = "output") -> OutputPath:
    return OutputPath(what)


def output_dir(what: str = "output folder", owner: Optional[str] = None) -> OutputPath:
    """``owner``: the command whose previous output folder may be replaced (None: an existing folder is
    written into, file by file, as a scratch or cache folder is)."""
    return OutputPath(what, folder=True, owner=owner)


class IsoDate(Declared):
    """A calendar date, YYYY-MM-DD."""
    kind = "date"

    def __call__(self, text: str):
        import datetime
        try:
            return datetime.date.fromisoformat(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def iso_date() -> IsoDate:
    return IsoDate()


class OrEmpty(Declared):
    """``declared``, or the empty text for "none" (``--baseline ''``)."""

    def __init__(self, declared: Declared):
        self.declared, self.kind = declared, declared.kind
        self.what = getattr(declared, "what", "")

    def __call__(self, text: str):
        return text if text == "" else self.declared(text)


def or_empty(declared: Declared) -> OrEmpty:
    return OrEmpty(declared)
