"""Docs that cannot rot: README.md and docs/ are built and their examples are run.

* The site builds: ``mkdocs build --strict`` (heavy).
* Every fenced block tagged ``sh``, ``bash``, ``shell``, ``console`` or ``python`` in README.md and docs/*.md is
  run (heavy), one test case per block, named ``docs/comparing.md:42`` (the line of the opening fence). Shell
  blocks run under ``bash -euo pipefail`` with the project's ``.venv/bin`` first on PATH, python blocks with the
  project's Python. Each page runs in a folder of its own, prepared once per session (the real all-MiniLM-L6-v2
  weights as a Google-format checkpoint in ``minilm/``; ``../shared/data`` when the data set is beside the
  repository); a page's blocks run in the page's order and may use what earlier blocks wrote (running one block
  alone runs the page's earlier blocks first). Output samples are fenced as ``text`` and are not run.
* An HTML comment on the line before a block changes how it runs (as Polygraphy's README tests do)::

      <!-- docs: skip reason="needs a CUDA GPU" -->            never run; the reason is required
      <!-- docs: slow reason="about 5 minutes" -->             run only under -m slow; the reason is required
      <!-- docs: expect-exit 1 -->                              the block must exit with this code (a failure shown)
      <!-- docs: slow cwd=repo reason="..." -->                run in the repository root, not the page's folder

  Several markers may stand on consecutive lines before one block. A marker that is malformed, lacks a
  required reason or stands before no runnable block fails the structural test and the block's own case.
* A fast structural test (not heavy): README.md at most 250 lines, every page in mkdocs.yml's nav and every nav
  entry a page, no issue numbers, every fence tagged with a language, well-formed markers, one spelling of the
  commands, and every repository path the pages name in backticks exists.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
MKDOCS_YML = os.path.join(REPO, "mkdocs.yml")
# The project's virtual environment (make setup); another environment's Python when there is none.
VENV_BIN = os.path.join(REPO, ".venv", "bin")
BIN = VENV_BIN if os.path.exists(os.path.join(VENV_BIN, "python")) else os.path.dirname(sys.executable)
PYTHON = os.path.join(BIN, "python")
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

README_MAX_LINES = 250
SHELL_LANGS = {"sh", "bash", "shell", "console"}
RUN_LANGS = SHELL_LANGS | {"python"}
BLOCK_TIMEOUT_S = 600
SLOW_BLOCK_TIMEOUT_S = 3600

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*docs:(?P<body>.*?)-->\s*$")
MARKER_LIKE = re.compile(r"<!--\s*docs\b")
DIRECTIVES = {"skip", "slow", "expect-exit"}
ATTRIBUTE = re.compile(r'(?P<key>[a-z-]+)=(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+))')

# The one spelling of the commands: `bert-parity COMMAND`; the `python -m` forms the contract keeps, the MiniLM
# writer and the checks run under torchrun (no front-door command) are the only `python -m` forms shown.
COMMANDS = {"convert", "compare", "diagnose", "evaluate", "dump", "tokens", "finetune", "release", "bench",
            "calibrate", "export-onnx", "portability", "gpu-check"}
MODULE_FORM = re.compile(r"\b(?:python3?|torchrun)\b[^|;&`]*?\s-m\s+([\w.]+)(?:\s+([\w-]+))?")
ALLOWED_MODULES = {"parity.minilm", "parity.checks.ddp", "parity.checks.mrpc_ddp", "bert_torch.convert",
                   "bert_torch.run_classifier", "bert_torch.run_squad", "bert_torch.extract_features", "pytest",
                   "mkdocs", "venv", "pip"}
ALLOWED_MODULE_COMMANDS = {"parity": {"compare", "diagnose", "dump"}, "reference_tf": {"dump"}}
ISSUE_NUMBER = re.compile(r"(?<![&\w])#\d+\b|\b(issue|issues|PR|pull request)\s*#?\d+\b", re.IGNORECASE)
REPO_PATH = re.compile(r"`((?:parity|bert_torch|reference_tf|tests|reports|\.ci|\.github)/[\w./-]*)`")


@dataclasses.dataclass
class Block:
    page: str             # relative to the repository: README.md, docs/comparing.md
    line: int             # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None       # the reason
    slow: str | None = None       # the reason
    expect_exit: int = 0
    cwd_repo: bool = False
    errors: list = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[str]:
    found = ["README.md"]
    if os.path.isdir(DOCS):
        for root, _dirs, files in os.walk(DOCS):
            found += sorted(os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".md"))
    return found


def parse_marker(body: str, block: Block) -> None:
    """Applies one marker's directive to ``block``; problems go to ``block.errors``."""
    words = body.strip()
    head = words.split(None, 1)[0] if words else ""
    rest = words[len(head):].strip()
    if head not in DIRECTIVES:
        block.errors.append(f"unknown docs marker {words!r} (known: {', '.join(sorted(DIRECTIVES))})")
        return
    if head == "expect-exit":
        code, _, rest = rest.partition(" ")
        if not code.isdigit() or not 1 <= int(code) <= 255:
            block.errors.append(f"expect-exit needs an exit code 1-255, not {code!r}")
        else:
            block.expect_exit = int(code)
    attrs, pos = {}, 0
    for m in ATTRIBUTE.finditer(rest):
        if rest[pos:m.start()].strip():
            break
        attrs[m.group("key")] = m.group("quoted") if m.group("quoted") is not None else m.group("bare")
        pos = m.end()
    if rest[pos:].strip():
        block.errors.append(f"cannot read {rest[pos:].strip()!r} in docs marker {words!r} "
                            "(attributes are key=\"value\")")
    unknown = set(attrs) - {"reason", "cwd"}
    if unknown:
        block.errors.append(f"unknown attribute(s) {sorted(unknown)} in docs marker {words!r}")
    if "cwd" in attrs:
        if attrs["cwd"] != "repo":
            block.errors.append(f"cwd may only be repo, not {attrs['cwd']!r}")
        block.cwd_repo = True
    reason = (attrs.get("reason") or "").strip()
    if head in ("skip", "slow"):
        if not reason:
            block.errors.append(f'a {head} marker needs a reason: <!-- docs: {head} reason="why" -->')
        setattr(block, head, reason or "(no reason given)")


def parse(page: str, root: str = REPO) -> tuple[list[Block], list[str]]:
    """Every fenced block of ``page`` that is run, and the page's problems (untagged fences, stray markers)."""
    with open(os.path.join(root, page), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, problems, pending = [], [], []   # pending: (line number, marker body) before the next block
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.match(text)
        if marker:
            pending.append((i + 1, marker.group("body")))
            i += 1
            continue
        if MARKER_LIKE.search(text):
            problems.append(f"{page}:{i + 1}: a docs marker must stand alone on its line as <!-- docs: ... -->")
        opening = FENCE.match(text)
        if not opening:
            if pending:   # a marker stands on the line right before its block
                problems.append(f"{page}:{pending[0][0]}: docs marker not directly before a fenced block")
                pending = []
            i += 1
            continue
        fence, info = opening.group("fence"), opening.group("info").strip()
        lang = info.split()[0].lower() if info else ""
        start, i = i + 1, i + 1
        body = []
        while i < len(lines) and not re.match(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$",
                                              lines[i]):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            problems.append(f"{page}:{start}: fenced block never closed")
        i += 1
        if not lang:
            problems.append(f"{page}:{start}: fenced block without a language (fence output samples as text)")
        if lang in RUN_LANGS:
            block = Block(page, start, lang, "\n".join(body) + "\n")
            for _line, marker_body in pending:
                parse_marker(marker_body, block)
            problems += [f"{block.id}: {e}" for e in block.errors]
            blocks.append(block)
        elif pending:
            problems.append(f"{page}:{pending[0][0]}: docs marker before a {lang or 'untagged'} block, which is "
                            "not run")
        pending = []
    if pending:
        problems.append(f"{page}:{pending[0][0]}: docs marker at the end of the page, before no block")
    return blocks, problems


def all_blocks() -> list[Block]:
    return [b for page in pages() for b in parse(page)[0]]


def params():
    out = []
    for b in all_blocks():
        marks = []
        if b.skip is not None and not b.errors:
            marks.append(pytest.mark.skip(reason=f"{b.id}: {b.skip}"))
        if b.slow is not None:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(b, marks=marks, id=b.id))
    return out


# --- the structural test (fast) ------------------------------------------------------------------------------

def nav_pages(nav) -> list[str]:
    found = []
    for entry in nav:
        if isinstance(entry, str):
            found.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def code_lines(text: str):
    """(line number, code) for every line of a shell block (its comments left out) and every inline code span
    outside fenced blocks: where a command is spelled."""
    fence, lang = None, ""
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang = m.group("fence"), (m.group("info").split() or [""])[0].lower()
        elif fence is not None:
            if re.match(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$", line):
                fence = None
            elif lang in SHELL_LANGS:
                yield n, re.sub(r"(^|\s)#.*$", "", line)
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield n, span


def test_docs_structure():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs and transformers) reads mkdocs.yml")
    problems = []
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme_lines = len(f.read().splitlines())
    if readme_lines > README_MAX_LINES:
        problems.append(f"README.md has {readme_lines} lines, more than {README_MAX_LINES}: move detail into docs/")

    with open(MKDOCS_YML, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if config.get("docs_dir") != "docs" or config.get("strict") is not True:
        problems.append("mkdocs.yml must set docs_dir: docs and strict: true")
    nav = nav_pages(config.get("nav", []))
    on_disk = {os.path.relpath(p, "docs") for p in pages() if p.startswith("docs" + os.sep)}
    problems += [f"docs/{p} is not in mkdocs.yml's nav" for p in sorted(on_disk - set(nav))]
    problems += [f"mkdocs.yml's nav lists {p}, which is not in docs/" for p in nav if p not in on_disk]
    if len(nav) != len(set(nav)):
        problems.append("mkdocs.yml's nav lists a page twice")

    for page in pages():
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            text = f.read()
        problems += parse(page)[1]
        for n, line in enumerate(text.split("\n"), 1):
            for m in ISSUE_NUMBER.finditer(line):
                problems.append(f"{page}:{n}: issue number {m.group(0)!r} (say what the change does instead)")
            for m in MODULE_FORM.finditer(line):
                module, command = m.group(1), m.group(2)
                if module in ALLOWED_MODULES or (module in ALLOWED_MODULE_COMMANDS and command is None):
                    continue
                if command not in ALLOWED_MODULE_COMMANDS.get(module, ()):
                    problems.append(f"{page}:{n}: {m.group(0)!r}: spell it `bert-parity COMMAND`")
        for n, code in code_lines(text):
            for m in re.finditer(r"\bbert-parity ([a-z][\w-]*)", code):
                if m.group(1) not in COMMANDS:
                    problems.append(f"{page}:{n}: `bert-parity {m.group(1)}` is no command")
        for m in REPO_PATH.finditer(text):
            path = m.group(1).rstrip(".")
            if any(c in path for c in "<>*{}") or not path or (path.startswith("reports/") and path.endswith("/")):
                continue   # a pattern, or an output folder the commands create
            path = path.rstrip("/")
            if not os.path.exists(os.path.join(REPO, path)):
                line = text[:m.start()].count("\n") + 1
                problems.append(f"{page}:{line}: `{m.group(1)}` does not exist in the repository")
    assert not problems, "\n".join(problems)


def test_markers_are_read_as_documented(tmp_path):
    """The marker grammar itself: reasons required, unknown directives refused, stray markers caught."""
    page = tmp_path / "page.md"
    lines = ['<!-- docs: skip reason="needs a CUDA GPU" -->', "```sh", "nvidia-smi", "```", "",
             "<!-- docs: skip -->", "```bash", "true", "```", "",
             "<!-- docs: expect-exit 1 -->", '<!-- docs: slow reason="a minute" -->', "```python",
             "raise SystemExit(1)", "```", "",
             "<!-- docs: expect-exit x -->", "```sh", "true", "```", "",
             "<!-- docs: sometimes -->", "```sh", "true", "```", "",
             "```text", "output", "```", "",
             '<!-- docs: slow reason="x" -->', "```text", "output", "```", "",
             '<!-- docs: slow reason="x" -->', "", "```sh", "true", "```", "",
             "```", "untagged", "```", "",
             "```sh", "plain", "```", ""]
    page.write_text("\n".join(lines))   # line n of the page is lines[n - 1]
    blocks, problems = parse("page.md", root=str(tmp_path))
    by_line = {b.line: b for b in blocks}
    assert by_line[2].skip == "needs a CUDA GPU" and not by_line[2].errors
    assert by_line[7].errors and "needs a reason" in by_line[7].errors[0]
    assert by_line[13].expect_exit == 1 and by_line[13].slow == "a minute" and by_line[13].lang == "python"
    assert by_line[18].errors and by_line[23].errors
    assert by_line[38].errors == [] and by_line[38].slow is None   # the marker before a blank line is stray
    plain = by_line[max(by_line)]
    assert plain.skip is None and plain.slow is None and plain.expect_exit == 0 and not plain.errors
    text = "\n".join(problems)
    assert "page.md:31: docs marker before a text block" in text
    assert "page.md:36: docs marker not directly before a fenced block" in text
    assert "page.md:42: fenced block without a language" in text
    assert "text" not in {b.lang for b in blocks}


# --- the site and the examples (heavy) --------------------------------------------------------------------------

@pytest.mark.heavy
def test_site_builds(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed in this environment (pip install mkdocs)")
    built = subprocess.run([PYTHON, "-m", "mkdocs", "build", "--strict", "--config-file", MKDOCS_YML,
                            "--site-dir", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").exists()


class Workspace:
    """One folder per page under a session folder: a hard-linked copy of what the session prepared."""

    def __init__(self, base):
        self.base = base
        self.prepared = os.path.join(base, "_prepared")
        self.folders: dict[str, str] = {}
        self.results: dict[str, tuple[bool, str]] = {}

    def folder(self, page: str) -> str:
        if page not in self.folders:
            slug = re.sub(r"[^\w.-]+", "_", page)
            path = os.path.join(self.base, slug)
            try:
                shutil.copytree(self.prepared, path, symlinks=True, copy_function=os.link)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(self.prepared, path, symlinks=True)
            self.folders[page] = path
        return self.folders[page]


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("docs"))
    ws = Workspace(base)
    os.makedirs(ws.prepared)
    made = subprocess.run([PYTHON, "-m", "parity.minilm", "--out", "minilm"], cwd=ws.prepared,
                          capture_output=True, text=True, timeout=600, env=environment(), check=False)
    assert made.returncode == 0, "the docs' checkpoint (python -m parity.minilm --out minilm) could not be " \
                                 "written:\n" + made.stdout[-2000:] + made.stderr[-4000:]
    if os.path.isdir(SHARED_DATA):   # `../shared/data` from every page's folder, as from the repository
        os.makedirs(os.path.join(base, "shared"))
        os.symlink(SHARED_DATA, os.path.join(base, "shared", "data"))
    return ws


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.pop("VIRTUAL_ENV", None)
    return env


def command_of(block: Block) -> tuple[list[str], str]:
    if block.lang == "python":
        return [PYTHON, "-"], block.code
    code = block.code
    if block.lang == "console":   # commands are the lines after a `$ ` prompt; the rest is their output
        code = "\n".join(line[2:] for line in code.split("\n") if line.startswith("$ ")) + "\n"
    return ["bash", "-euo", "pipefail", "-s"], code


def execute(block: Block, ws: Workspace) -> tuple[bool, str]:
    if block.errors:
        return False, "malformed docs marker: " + "; ".join(block.errors)
    cmd, code = command_of(block)
    cwd = REPO if block.cwd_repo else ws.folder(block.page)
    timeout = SLOW_BLOCK_TIMEOUT_S if block.slow else BLOCK_TIMEOUT_S
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(code, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the block's own process group, nothing else
        out, err = proc.communicate()
        return False, f"{block.id} ran past {timeout} s\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    seconds = time.monotonic() - started
    ok = proc.returncode == block.expect_exit and "Traceback (most recent call last)" not in err
    report = (f"{block.id} ({block.lang}, in {cwd}) exited {proc.returncode}, expected {block.expect_exit}, "
              f"after {seconds:.1f} s\n--- block\n{code}--- stdout\n{out[-3000:]}\n--- stderr\n{err[-6000:]}")
    if proc.returncode == block.expect_exit and not ok:
        report = "a traceback was printed\n" + report
    return ok, report


@pytest.mark.heavy
@pytest.mark.parametrize("block", params())
def test_doc_block_runs(block: Block, docs_workspace: Workspace):
    ws = docs_workspace
    # What this block may rely on: the page's earlier blocks that run where it runs (not skipped; slow ones
    # only before a slow block), each run once per session.
    for earlier in all_blocks():
        if earlier.page != block.page or earlier.line >= block.line:
            continue
        if earlier.skip is not None or earlier.cwd_repo or (earlier.slow is not None and block.slow is None):
            continue
        if earlier.id not in ws.results:
            ws.results[earlier.id] = execute(earlier, ws)
        if not ws.results[earlier.id][0]:
            pytest.fail(f"an earlier block of the page failed, which {block.id} may rely on:\n"
                        + ws.results[earlier.id][1])
    if block.id not in ws.results:
        ws.results[block.id] = execute(block, ws)
    ok, report = ws.results[block.id]
    assert ok, report


if __name__ == "__main__":   # list the blocks and how each runs
    for b in all_blocks():
        how = [f"skip: {b.skip}"] if b.skip is not None else []
        how += [f"slow: {b.slow}"] if b.slow is not None else []
        how += [f"expect-exit {b.expect_exit}"] if b.expect_exit else []
        how += ["cwd=repo"] if b.cwd_repo else []
        print(f"{b.id:32} {b.lang:7} {'; '.join(how) or 'runs'}  {shlex.quote(b.code.splitlines()[0])[:60]}")
