"""The CI workflow triggers on every file that can change a verdict, runs the nightly profile on a schedule,
reads only, and makes the release report require its data."""
from __future__ import annotations

import fnmatch
import os
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (a transformers dependency, in the `test` extra) reads the workflow")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(REPO, ".github", "workflows", "parity.yml")
# Files that cannot change a verdict: prose, and release reports other than the ratchet's baseline.
# The README and the docs are not among these: their commands run as tests (tests/test_docs.py).
NOT_VERDICT = ("reports/*", ".gitignore")


def workflow() -> dict:
    with open(WORKFLOW, encoding="utf-8") as f:
        return yaml.safe_load(f)


def triggers(doc: dict) -> dict:
    return doc.get("on", doc.get(True))   # YAML 1.1 reads a bare `on:` key as True


def test_every_tracked_file_that_can_change_a_verdict_triggers_the_gate():
    paths = triggers(workflow())["pull_request"]["paths"]
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 50
    verdict_files = [f for f in files if f == "reports/baseline.json"
                     or not any(fnmatch.fnmatch(f, p) for p in NOT_VERDICT)]
    missed = [f for f in verdict_files if not any(fnmatch.fnmatch(f, p) for p in paths)]
    assert not missed, missed
    for must in ("tests/test_convert.py", "reports/baseline.json", "parity/waivers.toml", "Makefile",
                 ".github/workflows/parity.yml", "README.md", "docs/comparing.md", "mkdocs.yml"):
        assert any(fnmatch.fnmatch(must, p) for p in paths), must


def test_nightly_schedule_permissions_and_required_data():
    doc = workflow()
    assert doc["permissions"] == {"contents": "read"}
    assert triggers(doc)["schedule"][0]["cron"]
    nightly = doc["jobs"]["nightly"]
    assert "schedule" in nightly["if"]
    assert any(s.get("env", {}).get("HYPOTHESIS_PROFILE") == "nightly" and "test-all" in s.get("run", "")
               for s in nightly["steps"])
    gate = doc["jobs"]["gate"]
    assert any(s.get("env", {}).get("PARITY_REQUIRE_DATA") == "1" for s in gate["steps"])
    for job in (gate, nightly):   # the pip cache is keyed on the files holding the pins
        setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
        assert set(setup["with"]["cache-dependency-path"].split()) == {"pyproject.toml", "Makefile"}


def test_ci_runs_the_heavy_checks_that_make_test_leaves_out():
    """`make test` is the quick subset (not slow, not heavy); CI must still run the heavy end-to-end checks:
    `.ci/run` runs `make check`, whose selection is everything but `slow`."""
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci = [line.strip() for line in f if not line.lstrip().startswith("#")]
    assert "make check" in ci and "make test" not in ci
    with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
        make = f.read()
    recipe = {t: make.split(f"\n{t}: setup\n", 1)[1].split("\n", 1)[0] for t in ("test", "check")}
    assert recipe["test"].endswith("-m 'not slow and not heavy'") and recipe["check"].endswith("-m 'not slow'"), recipe
    # The multi-process DDP checks are heavy: in CI's selection, not in make test's. Read from the test's own
    # marks (pytest evaluates the expressions above against exactly these): collecting in two child pytest
    # processes said the same in 10 s of make test's time.
    from parity import test_ddp
    marks = {m.name for m in getattr(test_ddp.test_two_processes_compute_the_single_process_step, "pytestmark", [])}
    assert "heavy" in marks and "slow" not in marks, marks


def test_each_xdist_worker_takes_its_share_of_the_cores(request):
    """The root conftest gives each of make test's workers its share of the cores (torch's and TF's pools
    at one thread per core in every worker oversubscribed the machine), and keeps what the user set."""
    import torch
    root = request.config.pluginmanager.get_plugin(os.path.join(REPO, "conftest.py"))
    assert root is not None, "the repository's root conftest.py was not loaded"
    for cores, workers, share in ((2, 2, "1"), (16, 2, "8"), (3, 2, "1"), (1, 4, "1")):
        env = {}
        root.share_cores(env, cores, workers)
        assert env == dict.fromkeys(root.THREAD_VARIABLES, share), (cores, workers, env)
    env = {"OMP_NUM_THREADS": "3"}
    root.share_cores(env, 16, 2)
    assert env["OMP_NUM_THREADS"] == "3" and env["TF_NUM_INTRAOP_THREADS"] == "8"
    for workers in (0, 1):   # a single pytest process keeps the library defaults
        env = {}
        root.share_cores(env, 8, workers)
        assert env == {}
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0) > 1:   # this run is make test's: it took effect
        assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
