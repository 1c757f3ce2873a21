"""``python -m reference_tf dump ...`` (CONTRACT.md): record the official graph's taps in a golden file.

The command is ``bert-parity dump`` (``parity.compare.golden``); this entry point stays because the contract
names it. It re-executes ``python -m parity dump`` in a child process instead of importing ``parity``:
``reference_tf`` sits below ``parity`` (the harness imports the reference, never the other way round;
pyproject.toml ``[tool.importlinter]`` enforces it), and the dump needs the harness's inputs,
environment record and file format. Arguments and exit codes are passed through unchanged.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "dump":
        print("usage: python -m reference_tf dump --tf-checkpoint CKPT --out FILE [...] "
              "(see bert-parity dump --help)", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, "-m", "parity", "dump", *argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
