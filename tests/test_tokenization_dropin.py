"""bert_torch.tokenization is a drop-in for the official bert.tokenization: the same names and signatures.

The official API is read from the installed source file with ``ast`` (bert-tensorflow 1.0.4,
bert/tokenization.py), so these checks need neither TensorFlow nor an import of the official module;
they are skipped, with the reason shown, only where bert-tensorflow is not installed. The behaviour
checks (ours against the official module on the same inputs) are in tests/test_tokenization.py.

What "the same signature" means here: every official parameter is in ours at the same position, with
the same name, kind and default. Ours may add parameters after them only as keyword-only ones with a
default, so that every call written for the official module binds the same way, and means the same.
"""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

from bert_torch import tokenization as ours
from no_tensorflow import blocking  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

OFFICIAL_FILE = "bert/tokenization.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _official_source() -> tuple[str, str]:
    """(path, text) of the installed official tokenization.py, found through the package metadata."""
    try:
        dist = metadata.distribution("bert-tensorflow")
    except metadata.PackageNotFoundError:
        pytest.skip("bert-tensorflow is not installed: no official bert/tokenization.py to compare with")
    found = [f for f in (dist.files or ()) if f.as_posix() == OFFICIAL_FILE]
    assert found, f"bert-tensorflow {dist.version} is installed but lists no {OFFICIAL_FILE}"
    path = str(dist.locate_file(found[0]))
    with open(path, encoding="utf-8") as f:
        return path, f.read()


# Defaults the official file writes as calls ("vocab=tuple()"): made without evaluating its source.
_EMPTY_CALLS = {"tuple": tuple, "list": list, "dict": dict, "set": set, "frozenset": frozenset}


def _default(node: ast.expr):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _EMPTY_CALLS \
            and not node.args and not node.keywords:
        return _EMPTY_CALLS[node.func.id]()
    return ast.literal_eval(node)   # anything else must be a literal: a new form needs a case above


_EMPTY = inspect.Parameter.empty


def _ast_params(fn: ast.FunctionDef) -> list[tuple[str, inspect._ParameterKind, object]]:
    """(name, kind, default) of each parameter, as inspect.signature would give them."""
    a = fn.args
    positional = [(p, inspect.Parameter.POSITIONAL_ONLY) for p in a.posonlyargs] + \
                 [(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in a.args]
    defaults = [_EMPTY] * (len(positional) - len(a.defaults)) + [_default(d) for d in a.defaults]
    out = [(p.arg, kind, d) for (p, kind), d in zip(positional, defaults)]
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, _EMPTY))
    out += [(p.arg, inspect.Parameter.KEYWORD_ONLY, _EMPTY if d is None else _default(d))
            for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, _EMPTY))
    return out


def official_api() -> dict:
    """What the installed official module defines at its top level:
    functions {name: params}, classes {name: {method: params}}, values {name: ast node},
    flags {flag name: (DEFINE_ function, default)}. Imported modules (re, six, tf...) are not API."""
    path, text = _official_source()
    tree = ast.parse(text, path)
    api = {"path": path, "functions": {}, "classes": {}, "values": {}, "flags": {}}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            api["functions"][node.name] = _ast_params(node)
        elif isinstance(node, ast.ClassDef):
            api["classes"][node.name] = {m.name: _ast_params(m) for m in node.body
                                         if isinstance(m, ast.FunctionDef)}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    api["values"][target.id] = node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr.startswith("DEFINE_"):
            name, default = node.value.args[:2]
            api["flags"][ast.literal_eval(name)] = (node.value.func.attr, ast.literal_eval(default))
    return api


def _sig_problem(where: str, want: list, have: inspect.Signature) -> str | None:
    """Why ``have`` cannot stand in for the official parameters ``want``, or None."""
    got = list(have.parameters.values())
    for i, (name, kind, default) in enumerate(want):
        if i >= len(got):
            return f"{where}: official parameter {name!r} is missing (ours: {have})"
        p = got[i]
        if (p.name, p.kind) != (name, kind):
            return f"{where}: parameter {i} is {p.name!r} ({p.kind.description}), official {name!r} " \
                   f"({kind.description}); ours: {have}"
        if (p.default is _EMPTY) != (default is _EMPTY) or \
                (default is not _EMPTY and (type(p.default) is not type(default) or p.default != default)):
            return f"{where}: {name}={p.default!r}, official default {default!r}"
    for p in got[len(want):]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is _EMPTY:
            return f"{where}: extra parameter {p.name!r} must be keyword-only with a default " \
                   f"(ours: {have}); otherwise a call written for the official module could bind differently"
    return None


def test_official_api_is_read_from_the_installed_file():
    api = official_api()
    # Guards against a reader that silently finds nothing (and so checks nothing).
    assert {"FullTokenizer", "BasicTokenizer", "WordpieceTokenizer"} <= set(api["classes"]), api["path"]
    assert {"convert_to_unicode", "printable_text", "load_vocab", "convert_by_vocab", "whitespace_tokenize",
            "validate_case_matches_checkpoint", "_is_whitespace", "_is_control",
            "_is_punctuation"} <= set(api["functions"]), api["path"]
    assert api["classes"]["BasicTokenizer"]["__init__"][2] == ("vocab", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                              ())


def test_every_official_function_exists_with_its_signature():
    api = official_api()
    problems = []
    for name, params in api["functions"].items():
        mine = getattr(ours, name, None)
        if not inspect.isfunction(mine):
            problems.append(f"{name}: official function, ours is {mine!r}")
            continue
        problems.append(_sig_problem(name, params, inspect.signature(mine)))
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_every_official_class_and_method_exists_with_its_signature():
    api = official_api()
    problems = []
    for cls_name, methods in api["classes"].items():
        cls = getattr(ours, cls_name, None)
        if not inspect.isclass(cls):
            problems.append(f"{cls_name}: official class, ours is {cls!r}")
            continue
        for meth, params in methods.items():
            # Looked up on the class: a staticmethod would lose "self" and be reported, as it would
            # not take the official call shape BasicTokenizer._clean_text(self, text).
            fn = inspect.getattr_static(cls, meth, None)
            if not inspect.isfunction(fn):
                problems.append(f"{cls_name}.{meth}: official method, ours is {fn!r}")
                continue
            problems.append(_sig_problem(f"{cls_name}.{meth}", params, inspect.signature(fn)))
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_official_module_values_exist():
    api = official_api()
    for name, node in api["values"].items():
        assert hasattr(ours, name), f"official module-level name {name!r} is missing from ours"
        # re.compile("<pattern>"): the same pattern, so the same tokens count as [unusedN]
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "compile":
            assert getattr(ours, name).pattern == ast.literal_eval(node.args[0]), name


def test_official_flags_are_readable_from_ours():
    api = official_api()
    assert "preserve_unused_tokens" in api["flags"]   # bert-tensorflow 1.0.4 defines it
    for name, (define, default) in api["flags"].items():
        if hasattr(ours.FLAGS, "_flags"):   # absl's FlagValues: defined there (by us or the official module)
            assert name in ours.FLAGS, f"--{name} is not defined in absl's FLAGS"
            assert ours.FLAGS[name].default == default, name
        else:
            assert getattr(ours.FLAGS, name) == default, name


# absl, TensorFlow and the official package made unimportable, as in the core install (no `tf` extra).
_NO_ABSL = blocking("absl", "tensorflow", "tf_keras", "bert")

_WITHOUT_ABSL = _NO_ABSL + textwrap.dedent("""
    import inspect, types
    from bert_torch import tokenization as t
    assert "absl" not in sys.modules and "tensorflow" not in sys.modules
    assert isinstance(t.FLAGS, types.SimpleNamespace) and t.FLAGS.preserve_unused_tokens is False
    vocab = {"[UNK]": 0, "[unused1]": 1, "[": 2, "]": 3, "unused": 4, "##1": 5, "1": 6}
    tok, basic = t.FullTokenizer(vocab), t.BasicTokenizer(vocab=vocab)
    split = ["[", "unused", "##1", "]"]
    assert tok.tokenize("[unused1]") == split, tok.tokenize("[unused1]")
    assert t.preserve_token("[unused1]", vocab) is False
    t.FLAGS.preserve_unused_tokens = True   # the switch without absl; read at each call
    assert tok.tokenize("[unused1] [unused2]") == ["[unused1]", "[", "[UNK]", "]"]
    assert basic.tokenize("[unused1]") == ["[unused1]"] and t.preserve_token("[unused1]", vocab) is True
    assert t.FullTokenizer(vocab, preserve_unused_tokens=False).tokenize("[unused1]") == split
    t.FLAGS.preserve_unused_tokens = False
    assert t.FullTokenizer(vocab, preserve_unused_tokens=True).tokenize("[unused1]") == ["[unused1]"]
    print("ok")
""")


def test_preserve_unused_tokens_without_absl():
    """Without absl the flag is a plain attribute, FLAGS.preserve_unused_tokens, read at each call."""
    run = subprocess.run([sys.executable, "-c", _WITHOUT_ABSL], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout[-2000:] + run.stderr[-3000:]


def test_official_signatures_agree_with_the_ast_reader():
    """The ast reader gives what inspect gives on the imported official module (where TF is installed)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow", reason="importing the official bert.tokenization needs TensorFlow")
    official = pytest.importorskip("bert.tokenization", reason="bert-tensorflow not installed")
    api = official_api()
    for name, params in api["functions"].items():
        assert _sig_problem(name, params, inspect.signature(getattr(official, name))) is None
        assert len(inspect.signature(getattr(official, name)).parameters) == len(params)
    for cls_name, methods in api["classes"].items():
        for meth, params in methods.items():
            sig = inspect.signature(getattr(getattr(official, cls_name), meth))
            assert _sig_problem(f"{cls_name}.{meth}", params, sig) is None and len(sig.parameters) == len(params)
    assert set(api["functions"]) | set(api["classes"]) == {
        n for n, v in vars(official).items()
        if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == official.__name__}
