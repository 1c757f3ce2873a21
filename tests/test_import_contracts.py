"""Imports run one way (pyproject.toml [tool.importlinter]): `lint-imports` keeps every contract on this tree,
and breaks each when an import against it is planted in a copy of the tree."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")
PACKAGES = ("bert_torch", "reference_tf", "parity")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    """lint-imports on the tree at ``root``: its packages first on sys.path, its own pyproject.toml."""
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def contracts() -> list[dict]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_every_contract_is_kept():
    run = lint_imports(REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in run.stdout


def test_every_test_module_is_forbidden_to_product_code():
    """import-linter's wildcards replace whole module names only, so the test modules are listed by name:
    a new parity/test_*.py must join the list."""
    forbidden = next(c for c in contracts() if c["name"] == "nothing imports a test module")["forbidden_modules"]
    on_disk = {f"parity.{os.path.basename(p)[:-3]}" for p in glob.glob(os.path.join(REPO, "parity", "test_*.py"))}
    assert on_disk and set(forbidden) == on_disk | {"parity.conftest"}


@pytest.fixture
def tree(tmp_path):
    """A copy of the three packages and pyproject.toml, to plant imports in."""
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path)
    return tmp_path


# (file to plant in, import line, contract it breaks)
PLANTED = [
    # (a module reference_tf does not import, so that only this contract breaks)
    ("bert_torch/glue.py", "from parity import metrics", "bert_torch imports neither reference_tf nor parity"),
    ("bert_torch/convert.py", "import reference_tf", "bert_torch imports neither reference_tf nor parity"),
    ("reference_tf/_taps.py", "from parity.sides.base import TAP_HEADS", "reference_tf does not import parity"),
    # (a test module whose own imports all run downward from here, so that only this contract breaks)
    ("parity/release/checks.py", "import parity.test_token_parity", "nothing imports a test module"),
    # (an upward import between packages is also a cycle among parity's children: both contracts break)
    ("parity/sides/base.py", "from parity.compare.core import compare_sides",
     ("the harness's packages import only the layers below them",
      "no import cycles among the modules of a harness package")),
    ("parity/numerics/metrics.py", "from parity.checks.bench import main",
     ("the harness's packages import only the layers below them",
      "no import cycles among the modules of a harness package")),
    ("parity/compare/options.py", "from parity.compare.command import run_compare",
     "no import cycles among the modules of a harness package"),
]


@pytest.mark.parametrize("path,line,contract", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_import_breaks_its_contract(tree, path, line, contract):
    target = tree / path
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {line}\n", encoding="utf-8")
    run = lint_imports(str(tree))
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    broken = (contract,) if isinstance(contract, str) else contract
    assert all(f"{c} BROKEN" in run.stdout for c in broken), run.stdout[-3000:]
    assert f"Contracts: {len(contracts()) - len(broken)} kept, {len(broken)} broken." in run.stdout
    assert run.stdout.count(" BROKEN") == len(broken)   # those, and no other
