"""Fixtures of the parity gate: real MiniLM weights, official random checkpoints, CLI runners."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bert_torch import convert  # noqa: E402
from bert_torch.tokenization import FullTokenizer  # noqa: E402
from parity import frontdoor
from parity.compare.golden import main as dump_golden  # noqa: E402
from parity.inputs import SAMPLE, read_pairs  # noqa: E402
from parity.minilm import build_checkpoint, minilm_dir  # noqa: E402
from parity.compare.schema import check_json_file  # noqa: E402


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> dict:
    """all-MiniLM-L6-v2, converted to an official TF checkpoint by our own --to-tf converter."""
    return build_checkpoint(str(tmp_path_factory.mktemp("minilm")))


@pytest.fixture(scope="session")
def minilm_reference(minilm):
    """The official graph's taps on real MiniLM weights for real inputs of a shape, one TF run per shape:
    ``make(batch, seq) -> {"config", "inputs", "ref", "names", "weights"}``."""
    from bert_torch.modeling import BertConfig
    from parity.inputs import make_inputs
    from parity.sides.base import TFSide
    cache = {}

    def make(batch: int, seq: int) -> dict:
        if (batch, seq) not in cache:
            config = BertConfig.from_json_file(minilm["bert_config"])
            inputs = make_inputs(minilm["vocab"], batch, seq, 0, vocab_size=config.vocab_size)
            tf = TFSide(minilm["prefix"], config)
            try:
                ref = tf.run(inputs)
            finally:
                tf.close()
            cache[batch, seq] = {"config": config, "inputs": inputs, "ref": ref, "names": tf.tap_names,
                                 "weights": minilm["torch_weights"]}
        return cache[batch, seq]

    return make


@pytest.fixture(scope="session")
def minilm_golden(minilm, tmp_path_factory) -> str:
    """The official graph's taps on MiniLM for compare's default 2 x 32 inputs, recorded once per session
    (``bert-parity dump``, in this process: the child that ``python -m reference_tf dump`` starts would import
    torch and TensorFlow again, about 7 s; parity/test_golden.py checks that entry point). A golden replay gives
    the live comparison's numbers bit for bit (parity/test_golden.py), so the tests that only vary the candidate
    replay it instead of rebuilding the graph."""
    path = str(tmp_path_factory.mktemp("golden") / "minilm.golden.safetensors")
    assert dump_golden(["--tf-checkpoint", minilm["dir"], "--out", path, "--batch-size", "2", "--seq-len", "32"]) == 0
    return path


@pytest.fixture(scope="session")
def subset_vocab(tmp_path_factory):
    """A real WordPiece vocab cut to ``n`` entries: the specials, then the sample's most common pieces."""
    cache = {}
    full = os.path.join(minilm_dir(), "vocab.txt")

    def make(n: int) -> str:
        if n not in cache:
            tok = FullTokenizer(full, do_lower_case=True)
            counts = collections.Counter(t for a, b in read_pairs(SAMPLE) for t in tok.tokenize(a) + tok.tokenize(b))
            specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            pieces = [t for t, _ in counts.most_common() if t not in specials]
            chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
            words = (specials + [c for c in chars if c not in pieces] + pieces)[:n]
            assert len(words) == n, f"the sample gives only {len(words)} distinct pieces"
            path = tmp_path_factory.mktemp("vocab") / f"vocab{n}.txt"
            path.write_text("\n".join(words) + "\n", encoding="utf-8")
            cache[n] = str(path)
        return cache[n]

    return make


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, subset_vocab):
    """An official-code random checkpoint and our conversion of it, cached per arguments."""
    from reference_tf import write_random_checkpoint
    cache = {}

    def make(config: dict, head: Optional[str] = None, num_labels: int = 2, seed: int = 0, **kw) -> dict:
        key = json.dumps([config, head, num_labels, seed, kw], sort_keys=True)
        if key not in cache:
            out = tmp_path_factory.mktemp("ckpt")
            vocab = os.path.join(minilm_dir(), "vocab.txt") if config["vocab_size"] == 30522 \
                else subset_vocab(config["vocab_size"])
            write_random_checkpoint(str(out), config, seed=seed, head=head, num_labels=num_labels,
                                    vocab_file=vocab, **kw)
            weights = str(out / "pytorch_model.safetensors")
            assert convert.main(["--tf-checkpoint", str(out), "--output", weights]) == 0
            cache[key] = {"dir": str(out), "prefix": str(out / "bert_model.ckpt"), "torch_weights": weights,
                          "bert_config": str(out / "bert_config.json"), "vocab": str(out / "vocab.txt")}
        return cache[key]

    return make


class Run:
    def __init__(self, code: int, out: str, err: str, report: Optional[dict], report_dir):
        self.code, self.out, self.err, self.report, self.report_dir = code, out, err, report, report_dir

    def tap(self, name: str) -> dict:
        return next(t for t in self.report["taps"] if t["name"] == name)


@pytest.fixture
def compare(tmp_path, capsys):
    """Runs ``python -m parity compare`` in-process; returns exit code, output and report. With ``golden=True``
    the first argument is a golden file (``compare --golden``), not a checkpoint."""
    def run(tf_checkpoint: str, torch_weights: str, *extra: str, golden: bool = False) -> Run:
        report_dir = tmp_path / f"report{len(list(tmp_path.iterdir()))}"
        code = frontdoor.main(["compare", "--golden" if golden else "--tf-checkpoint", tf_checkpoint,
                         "--torch-weights", torch_weights, "--report-dir", str(report_dir), *extra])
        out, err = capsys.readouterr()
        sys.stdout.write(out)
        path = report_dir / "report.json"
        # Every report a test writes is strict JSON valid against parity/schemas/report.schema.json.
        return Run(code, out, err, check_json_file(str(path), "report") if path.exists() else None, report_dir)
    return run


# Hypothesis settings profiles for the property tests (parity/test_property_parity.py,
# parity/test_token_parity.py), chosen by HYPOTHESIS_PROFILE: "ci" (the default) is small and
# derandomized, so a CI failure repeats on rerun; "nightly" searches far more, at random, and keeps
# found failures in .hypothesis/. Both print the reproduce blob of a shrunk failure. Registered
# here, applied by those tests (settings(settings.get_profile(name), ...)), NOT loaded globally: a global load
# would also derandomize every other hypothesis test in the session.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=10, derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("nightly", max_examples=100, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# A real headless browser for the HTML pages (CI installs Debian's chromium: .ci/run).

class Browser:
    def __init__(self, path: str):
        self.path = path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        profile = tempfile.mkdtemp(prefix="chromium-")
        try:
            return subprocess.run([self.path, "--headless", "--no-sandbox", "--disable-gpu",
                                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                   "--no-first-run", "--disable-quic", f"--user-data-dir={profile}",
                                   "--enable-logging=stderr", "--v=0", *args],
                                  capture_output=True, text=True, timeout=120)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    @staticmethod
    def console_messages(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]

    def dom(self, page: str) -> str:
        """The page's DOM after it ran, asserting that it loaded and logged nothing to the console."""
        run = self.run("--dump-dom", "file://" + os.path.abspath(page))
        assert run.returncode == 0, run.stderr[-2000:]
        assert self.console_messages(run.stderr) == []
        return run.stdout


def find_browser() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def browser() -> Browser:
    path = find_browser()
    if path is None:   # visible in the summary (-ra); CI installs chromium so that it runs there
        pytest.skip("no headless browser installed (Debian: apt-get install chromium); the HTML page is not "
                    "checked in a browser here")
    return Browser(path)
