"""Every numeric and path flag of every command is declared once (bert_torch.flags) and refuses hostile values
while the command line is parsed: exit 2, one line naming the flag, before any work."""
from __future__ import annotations

import argparse
import importlib
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bert_torch import commands, flags
from parity import frontdoor

# Flags whose value names a file or folder (by their dest); each must carry a path declaration.
PATH_DESTS = {"tf_checkpoint", "golden", "bert_config", "torch_weights", "torch_bert_config", "vocab_file",
              "sentences", "report_dir", "spill_dir", "out", "output", "data_dir", "work_dir", "baseline",
              "waivers", "tf_cache", "promote", "child_out"}
# Reserved for a parent's own child process, never typed by a user (hidden from --help).
INTERNAL = {("calibrate", "child_out")}


class _Captured(BaseException):   # passes through run_main, which catches Exception and SystemExit
    pass


# The python -m commands outside the front door: the original port's runners and the DDP checks.
RUNNERS = {"run_classifier": "bert_torch.run_classifier", "run_squad": "bert_torch.run_squad",
           "extract_features": "bert_torch.extract_features", "ddp_check": "parity.checks.ddp",
           "mrpc_ddp_check": "parity.checks.mrpc_ddp"}
PATH_DESTS |= {"bert_config_file", "vocab_file", "output_dir", "init_checkpoint", "train_file", "predict_file",
               "input_file", "output_file"}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """command -> its parser: a front-door command's from its options class, a runner's as its main builds it
    (parse_args stopped before anything runs)."""
    found = {name: frontdoor.load(command.options).parser() for name, command in frontdoor.COMMANDS.items()}
    real = commands.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)
    commands.ArgumentParser.parse_args = capture
    try:
        for name, module in RUNNERS.items():
            main = importlib.import_module(module).main
            try:
                main([]) if main.__code__.co_argcount else main()
            except _Captured as c:
                found[name] = c.args[0]
    finally:
        commands.ArgumentParser.parse_args = real
    return found


PARSERS = parsers()
FLAGS = [(cmd, a) for cmd, p in PARSERS.items() for a in p._actions
         if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


def test_every_numeric_and_path_flag_is_declared():
    undeclared = [f"{cmd} {a.option_strings[0]}" for cmd, a in FLAGS
                  if (a.type in (int, float) or (a.dest in PATH_DESTS and (cmd, a.dest) not in INTERNAL))
                  and not isinstance(a.type, flags.Declared)]
    assert not undeclared, f"declare these in bert_torch.flags: {undeclared}"
    assert sum(isinstance(a.type, flags.Number) for _, a in FLAGS) >= 55   # the walk found the commands' flags


NUMERIC = [(cmd, a) for cmd, a in FLAGS if isinstance(a.type, flags.Number)]
PATHS = [(cmd, a) for cmd, a in FLAGS
         if isinstance(a.type, flags.Declared) and not isinstance(a.type, (flags.Number, flags.IsoDate))]


def run(cmd: str, flag: str, value: str, capsys) -> tuple[int, str]:
    """The command through the front door; a trailing unknown flag makes a wrongly accepted value a different
    usage error, never a run."""
    try:
        argv = [flag, value, "--no-such-flag-at-all"]
        code = (importlib.import_module(RUNNERS[cmd]).main(argv) if cmd in RUNNERS
                else frontdoor.main([cmd, *argv]))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def hostile_numbers(n: flags.Number) -> list[str]:
    values = ["nan", "inf", "-inf", "NaN", "", "x", "1e999"]
    values += ["1.5", "1e3"] if n.kind == "int" else []
    for bound, step in ((n.lo, -1), (n.hi, 1)):
        if bound is not None:
            values.append(str(int(bound) + step) if n.kind == "int" else repr(bound + step * max(abs(bound), 1.0)))
    if n.lo_open:
        values.append(repr(n.lo))
    if n.hi_open:
        values.append(repr(n.hi))
    return values


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_hostile_number_is_exit_2_naming_the_flag(data, capsys):
    cmd, action = data.draw(st.sampled_from(NUMERIC))
    value = data.draw(st.sampled_from(hostile_numbers(action.type)))
    code, err = run(cmd, action.option_strings[0], value, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"argument {action.option_strings[0]}" in lines[0], (cmd, value, err)


@pytest.fixture(scope="module")
def hostile_paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    fifo, loop_a, loop_b, afile, full = (base / n for n in ("fifo", "loop_a", "loop_b", "file", "full"))
    os.mkfifo(fifo)
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    afile.write_text("x")
    full.mkdir()
    (full / "someone_elses.txt").write_text("keep me")
    return {"fifo": str(fifo), "device": "/dev/zero", "loop": str(loop_a), "missing": str(base / "nope" / "x"),
            "file": str(afile), "folder": str(base), "foreign_folder": str(full), "empty": ""}


def refused(decl, kind: str) -> bool:
    """Whether the declaration must refuse that kind of path."""
    if isinstance(decl, flags.OrEmpty):
        return kind != "empty" and refused(decl.declared, kind)
    if kind in ("fifo", "device", "loop", "empty"):
        return True
    if isinstance(decl, flags.OutputPath):
        if decl.folder:
            return kind == "file" or (kind in ("folder", "foreign_folder") and decl.owner is not None)
        return decl.folder is False and kind in ("folder", "foreign_folder")
    if isinstance(decl, flags.MaybeFile):
        return kind in ("folder", "foreign_folder")
    if isinstance(decl, flags.Checkpoint):
        return kind in ("missing", "file")
    if isinstance(decl, flags.InputPath):
        return kind == "missing" or (kind in ("folder", "foreign_folder") and not decl.folders) \
            or (kind == "file" and not decl.files)
    raise AssertionError(f"unknown declaration {decl!r}")


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_hostile_path_is_exit_2_naming_the_flag(data, capsys, hostile_paths):
    cmd, action = data.draw(st.sampled_from(PATHS))
    kind = data.draw(st.sampled_from([k for k in hostile_paths if refused(action.type, k)]))
    code, err = run(cmd, action.option_strings[0], hostile_paths[kind], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"argument {action.option_strings[0]}" in lines[0], (cmd, kind, err)


def test_an_output_folder_holding_other_files_is_refused_and_kept(hostile_paths, capsys):
    """`convert --output-format hf --output DIR` and a report folder never empty a folder they did not write."""
    folder = hostile_paths["foreign_folder"]
    code, err = run("compare", "--report-dir", folder, capsys)
    assert code == 2 and "did not write" in err
    code = frontdoor.main(["convert", "--tf-checkpoint", hostile_paths["folder"], "--output-format", "hf",
                           "--output", folder])
    assert code == 2 and "did not write" in capsys.readouterr().err
    assert os.listdir(folder) == ["someone_elses.txt"]


def test_numbers_keep_their_range_and_finiteness():
    n = flags.real(above=0, hi=1)
    assert n("0.5") == 0.5 and n("1") == 1.0
    for bad in ("0", "-0.0", "1.0000001", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            n(bad)
    c = flags.count(1, 10)
    assert c("10") == 10
    for bad in ("0", "11", "2.0", "1e1"):
        with pytest.raises(argparse.ArgumentTypeError):
            c(bad)


@pytest.mark.parametrize("value", ["2024-13-45", "tomorrow", "", "2024-02-30"])
def test_a_date_flag_names_itself(value, capsys):
    code, err = run("release", "--today", value, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "argument --today" in err, err


def test_a_marked_output_folder_that_the_user_added_to_is_not_replaced(tmp_path):
    """A previous output of the same command is replaced only while it holds nothing but what it wrote."""
    from bert_torch._io import OutputError, atomic_dir
    out = tmp_path / "r"
    with atomic_dir(str(out), "--report-dir", owner="compare") as tmp:
        open(os.path.join(tmp, "report.json"), "w").write("{}")
        os.makedirs(os.path.join(tmp, "repro"))
        open(os.path.join(tmp, "repro", "repro.py"), "w").write("")
    with atomic_dir(str(out), "--report-dir", owner="compare") as tmp:   # ours alone: replaced
        open(os.path.join(tmp, "report.json"), "w").write('{"second": 1}')
    assert (out / "report.json").read_text() == '{"second": 1}' and not (out / "repro").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        with atomic_dir(str(out), "--report-dir", owner="compare"):
            raise AssertionError("refused before the block runs")
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.json").exists()


def test_foreign_code_cannot_end_the_process():
    """os._exit and sys.exit in a candidate's code are reported as bad input naming it, never obeyed."""
    import sys
    for leave in (lambda: os._exit(0), lambda: sys.exit(0), lambda: (_ for _ in ()).throw(KeyboardInterrupt)):
        with pytest.raises(commands.ForeignError, match="--candidate module:m:f"):
            with commands.foreign("--candidate module:m:f"):
                leave()
    assert os._exit.__module__ == "posix" or os._exit.__name__ == "_exit"
