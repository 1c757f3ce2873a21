"""Typed options at the front door (bert_torch/options.py): every command's flags declared once as a dataclass,
parsed there, and nothing below reading argparse's namespace; `COMMAND --help` loads no model library; the
harness's layout (packages by concern) stays what parity/__init__.py says."""
from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import subprocess
import sys
from typing import Optional

import pytest

from bert_torch.commands import run_main
from bert_torch.flags import count
from bert_torch.options import Options, flag
from parity import frontdoor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "tensorflow", "transformers", "onnxruntime", "onnx")


@dataclasses.dataclass(frozen=True)
class Toy(Options):
    PROG = "toy"
    size: int = flag("--size", type=count(1, 10), default=3, help="a bounded count")
    name: Optional[str] = flag("--name", help="a name")
    other: Optional[str] = flag("--other", help="excludes --name")
    derived: str = "not a flag"

    def check(self) -> None:
        if self.name and self.other:
            raise ValueError("give --name or --other, not both")


def test_parse_returns_the_typed_options_with_declared_defaults():
    opts = Toy.parse(["--size", "7", "--name", "x"])
    assert opts == Toy(size=7, name="x") and isinstance(opts.size, int) and opts.derived == "not a flag"
    assert Toy.parse([]) == Toy(size=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.size = 1
    assert opts.replace(size=1).size == 1 and opts.size == 7


@pytest.mark.parametrize("argv,code,words", [
    (["--size", "11"], 2, "--size"),        # the declared range, checked while parsing
    (["--size", "nan"], 2, "--size"),
    (["--derived", "x"], 2, "--derived"),   # a field that is not a flag is not on the command line
    (["--name", "a", "--other", "b"], 2, "not both"),   # check(): a relation between flags
    (["--help"], 0, ""),
])
def test_bad_values_and_relations_are_one_line_exit_2(capsys, argv, code, words):
    assert run_main(lambda: Toy.parse(argv) and 0) == code
    err = capsys.readouterr().err
    assert words in err and (code == 0 or err.count("\n") == 1), err


def test_a_mutable_default_is_refused_at_declaration():
    with pytest.raises(TypeError):
        flag("--many", default=[])


@pytest.mark.parametrize("name", sorted(frontdoor.COMMANDS))
def test_every_command_parses_into_its_options_class(name):
    command = frontdoor.COMMANDS[name]
    cls = frontdoor.load(command.options)
    assert dataclasses.is_dataclass(cls) and issubclass(cls, Options) and cls.__dataclass_params__.frozen
    assert cls.PROG == f"bert-parity {name}"
    declared = {a.dest for a in cls.parser()._actions if a.option_strings and a.dest != "help"}
    assert declared and declared <= {f.name for f in dataclasses.fields(cls)}
    assert callable(frontdoor.load(command.run))


def test_command_help_loads_no_model_library():
    """`bert-parity COMMAND --help` (every command) and a usage error answer before torch, TensorFlow,
    transformers or onnx are imported: the options classes are light, the command's module comes later."""
    probe = ("import json, sys\nfrom parity import frontdoor\nout = {}\n"
             "for name in sorted(frontdoor.COMMANDS):\n"
             "    for argv in ([name, '--help'], [name, '--no-such-flag']):\n"
             "        code = frontdoor.main(argv)\n"
             "        out[' '.join(argv)] = [code, sorted(m for m in %r if m in sys.modules)]\n"
             "print(json.dumps(out))" % (HEAVY,))
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out) == 2 * len(frontdoor.COMMANDS)
    assert {k: v for k, v in out.items() if v[1] or v[0] != (0 if k.endswith("--help") else 2)} == {}


# Modules allowed to touch argparse's namespace: the declarations themselves, and the original port's runners,
# which mirror the official run_classifier.py / run_squad.py / extract_features.py and their FLAGS object.
NAMESPACE_ALLOWED = {"bert_torch/options.py", "bert_torch/commands.py", "bert_torch/flags.py",
                     "bert_torch/run_classifier.py", "bert_torch/run_squad.py", "bert_torch/extract_features.py",
                     "parity/frontdoor.py"}


def product_modules() -> list[str]:
    paths = []
    for pkg in ("bert_torch", "reference_tf", "parity"):
        for path in glob.glob(os.path.join(REPO, pkg, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, REPO)
            base = os.path.basename(rel)
            if not (base.startswith("test_") or base == "conftest.py" or "/examples/" in rel):
                paths.append(rel)
    return sorted(paths)


def namespace_uses(source: str) -> list[str]:
    """Lines that parse a command line or handle its namespace outside the declarations."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "parse_args", "parse_known_args", "add_argument"):
            found.append(f"line {node.lineno}: .{node.func.attr}()")
        elif isinstance(node, ast.Attribute) and node.attr == "Namespace":
            found.append(f"line {node.lineno}: Namespace")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):   # not *args
            params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"line {p.lineno}: a parameter named {p.arg}" for p in params
                      if p.arg in ("args", "ns", "namespace") and p.annotation is None]
    return found


def test_nothing_below_the_front_door_reads_the_namespace():
    """Every command parses into its options class at its entry; product code below takes the options object
    (or plain values). Forward hooks' ``(module, args, out)`` are the exception that names its arguments."""
    offenders = {}
    for rel in product_modules():
        if rel in NAMESPACE_ALLOWED:
            continue
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            source = f.read()
        uses = [u for u in namespace_uses(source) if not _is_hook_argument(source, u)]
        if uses:
            offenders[rel] = uses
    assert offenders == {}


def _is_hook_argument(source: str, use: str) -> bool:
    """``def hook(module, args, out)`` / ``lambda mod, args: ...``: PyTorch's forward (pre-)hook signature."""
    if "parameter named args" not in use:
        return False
    line = source.splitlines()[int(use.split()[1].rstrip(":")) - 1]
    return "module, args" in line or "mod, args" in line or "self, func, types, args" in line


def test_the_planted_namespace_reader_is_found():
    assert namespace_uses("def run(args):\n    return args.x\n") == ["line 1: a parameter named args"]
    assert namespace_uses("import argparse\np = argparse.ArgumentParser()\np.parse_args()\n")


def test_the_harness_is_packages_by_concern():
    """At most 12 modules directly in parity/ besides the gate's tests; each package says what it holds."""
    top = [os.path.basename(p) for p in glob.glob(os.path.join(REPO, "parity", "*.py"))]
    modules = sorted(n for n in top if not (n.startswith("test_") or n == "conftest.py"))
    assert len(modules) <= 12, modules
    for init in glob.glob(os.path.join(REPO, "parity", "*", "__init__.py")):
        with open(init, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        assert ast.get_docstring(tree), f"{init}: no docstring saying what the package holds"
