"""Token parity in the gate: our tokenizer against the official ``bert.tokenization``, id for id.

Real text (MRPC and SQuAD dev: the committed samples here, the full files in the slow test),
Hypothesis-generated text over every Unicode category under the settings profile
(``HYPOTHESIS_PROFILE``: ``ci`` or ``nightly``), a planted bug that the fuzzing must find, the
CLI's exit codes, and the transformers triangulation.
"""
from __future__ import annotations

import json
import os
import unicodedata

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bert_torch import tokenization as ours
from parity import tokens
from parity.minilm import minilm_dir

VOCAB = os.path.join(minilm_dir(), "vocab.txt")
SAMPLE_TEXTS = 2 * 64 + 4 + 20          # MRPC sample: 64 rows x 2 sentences; SQuAD sample: 4 contexts, 20 questions
FULL_TEXTS = 2 * (3668 + 408 + 1725) + 2067 + 10570   # MRPC train/dev/test sentences; SQuAD dev contexts + questions


def fail_on_differences(report: dict) -> None:
    if report["differences"]:
        pytest.fail(f"{report['differences']} texts tokenize differently; the first ones:\n"
                    + "\n".join(tokens.Difference(**d).describe() for d in report["examples"]), pytrace=False)


# ---------------------------------------------------------------------------------------------
# Real text
# ---------------------------------------------------------------------------------------------

def test_sample_corpus_matches_official_id_for_id():
    report = tokens.check_token_parity(None, VOCAB, hf=False)
    fail_on_differences(report)
    assert report["verdict"] == "pass" and report["corpus"] == "sample"
    assert [c["do_lower_case"] for c in report["cases"]] == [True, False]
    assert report["texts_compared"] == 2 * SAMPLE_TEXTS
    # Official token counts of the committed samples (uncased vocab): 4240 lower-cased, 3980 cased.
    assert [c["tokens"] for c in report["cases"]] == [4240, 3980]
    assert set(report["sources"]) == {"mrpc_sample.tsv", "squad_dev_sample.json"}


@pytest.mark.slow
def test_full_mrpc_and_squad_dev_match_official_id_for_id():
    data_dir = tokens.default_data_dir()
    if data_dir is None:
        pytest.skip("../shared/data is not beside the repository: the full MRPC and SQuAD dev text is not here")
    report = tokens.check_token_parity(data_dir, VOCAB, hf=False)
    fail_on_differences(report)
    assert report["texts_compared"] == 2 * FULL_TEXTS
    assert report["tokens_compared"] > 1_400_000


def test_a_difference_names_input_both_token_lists_and_position(monkeypatch):
    """A tokenizer that misses ASCII symbols as punctuation ("$" is Sc, "=" Sm, not P*) is caught
    on real text, and the report carries what a person needs to see."""
    monkeypatch.setattr(ours, "_is_punctuation", lambda c: unicodedata.category(c).startswith("P"))
    report = tokens.check_token_parity(None, VOCAB, lower_cases=(True,), hf=False, limit=40)
    assert report["verdict"] == "fail" and report["differences"] > 0
    d = report["examples"][0]
    assert d["what"] == "tokens" and any(c in d["input"] for c in "$+<=>^`|~")
    assert d["ours"][:d["index"]] == d["official"][:d["index"]] and d["ours"][d["index"]] != d["official"][d["index"]]
    text = tokens.Difference(**d).describe()
    assert f"differ at position {d['index']}" in text and repr(d["input"]) in text
    assert repr(d["ours"]) in text and repr(d["official"]) in text


# ---------------------------------------------------------------------------------------------
# Fuzzing: Hypothesis text over every Unicode category
# ---------------------------------------------------------------------------------------------

_TRICKY = list("\x00\t\n\r\x0b\x1c\x7f\x85\xa0\xad\u1680\u2000\u200b\u200d\u2028\u202f\u3000\ufeff\ufffd"
               "\ue000\U000f0000\u0378\U000e0001\u0301\u20dd\u0903!$+<=>^`|~\u00bf\u2014\u20ac"
               "\u0130\u0131\u00df\u01c5\ufb01\u03a3\u00c5\u4e00\u3400\uf900\U00020000\U0002b820\U0002ceb0"
               "\U00030000\u3072\ud55c\U0001f600\U0001f3fd\ud800\udfff")

_words = st.sampled_from(["the", "un", "##able", "[CLS]", "[unused1]", "Caf\u00e9", "NAIVE", "\u00e9t\u00e9"])
unicode_text = st.lists(st.one_of(
    st.characters(codec=None),                                   # every category but Cs
    st.characters(categories=["Cc", "Cf", "Co", "Cn", "Cs"]),    # what _clean_text must (not) delete
    st.characters(categories=["Mn", "Mc", "Me", "Zs", "Zl", "Zp"]),
    st.characters(min_codepoint=0x3400, max_codepoint=0x9FFF),   # CJK
    st.sampled_from(_TRICKY), _words,
    st.builds(lambda u, n: u * n, st.sampled_from(["a", "\u00e9", "x\u0301", "\u4e2d"]), st.integers(95, 205)),
), max_size=25).map("".join)

_PAIRS: dict = {}


def pair(lower: bool):
    if lower not in _PAIRS:
        _PAIRS[lower] = (ours.FullTokenizer(VOCAB, do_lower_case=lower), tokens.official_tokenizer(VOCAB, lower))
    return _PAIRS[lower]


def check_text(text: str, lower: bool) -> None:
    mine, official = pair(lower)
    _, diff = tokens.compare_one("hypothesis", text, lower, mine, official)
    assert diff is None, diff.describe()


# The settings profile (registered in conftest.py) chosen by HYPOTHESIS_PROFILE.
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FUZZ_EXAMPLES = 20 * PROFILE.max_examples   # ci: 200, nightly: 2000


@settings(PROFILE, max_examples=FUZZ_EXAMPLES)
@given(text=unicode_text, lower=st.booleans())
def test_fuzzed_text_matches_official_id_for_id(text, lower):
    check_text(text, lower)


def _old_is_control(char: str) -> bool:
    """The older BERT rule: every C* category is a control character to delete."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def test_fuzzing_catches_the_old_is_control_rule(monkeypatch, record_property):
    """The fuzzing above, with its profile's budget, finds a planted ``startswith("C")``."""
    monkeypatch.setattr(ours, "_is_control", _old_is_control)
    _PAIRS.clear()
    seen = []

    # Generation only (no shrinking), so len(seen) is the number of examples it took.
    @settings(PROFILE, max_examples=FUZZ_EXAMPLES, phases=[Phase.generate])
    @given(text=unicode_text, lower=st.booleans())
    def fuzz(text, lower):
        seen.append(text)
        check_text(text, lower)

    try:
        with pytest.raises(AssertionError, match="tokens differ at position"):
            fuzz()
    finally:
        _PAIRS.clear()
    record_property("examples_to_catch_is_control", len(seen))
    print(f"planted _is_control startswith('C') caught after {len(seen)} of {FUZZ_EXAMPLES} examples: {seen[-1]!r}")
    assert any(unicodedata.category(c) in ("Co", "Cn", "Cs") for c in seen[-1])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_writes_the_report_and_exits_0(tmp_path, capsys):
    out = tmp_path / "tokens.json"
    assert tokens.main(["--sample", "--no-hf", "--limit", "10", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["verdict"] == "pass" and report["texts_compared"] == 20 and report["differences"] == 0
    assert "token parity: PASS: 20 texts" in capsys.readouterr().out


def test_cli_exits_1_on_a_difference(monkeypatch, capsys):
    monkeypatch.setattr(ours, "_is_punctuation", lambda c: unicodedata.category(c).startswith("P"))
    assert tokens.main(["--sample", "--no-hf", "--limit", "40"]) == 1
    out = capsys.readouterr().out
    assert "token parity: FAIL" in out and "tokens differ at position" in out and "official:" in out


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert tokens.main(["--data-dir", str(tmp_path / "nope"), "--no-hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "Traceback" not in err
    (tmp_path / "mrpc").mkdir()
    for split in ("train", "dev", "test"):
        (tmp_path / "mrpc" / f"{split}.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t2\tonly three\n")
    assert tokens.main(["--data-dir", str(tmp_path), "--no-hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.tsv:2: 3 tab-separated fields" in err
    assert tokens.main(["--sample", "--no-hf", "--vocab-file", str(tmp_path / "vocab.txt")]) == 2
    assert "--vocab-file" in (err := capsys.readouterr().err) and "vocab.txt: no such file" in err
    (tmp_path / "latin1.txt").write_bytes(b"[UNK]\ncaf\xe9\n")
    assert tokens.main(["--sample", "--no-hf", "--vocab-file", str(tmp_path / "latin1.txt")]) == 2
    assert "latin1.txt: not UTF-8 text: byte 0xe9 at offset 9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Triangulation with transformers (documentation of the ecosystem, not a requirement)
# ---------------------------------------------------------------------------------------------

def test_hf_triangulation_counts_and_explains_the_known_differences():
    pytest.importorskip("transformers", reason="the HF triangulation needs transformers")
    texts, _ = tokens.load_corpus(None)
    hf = tokens.hf_triangulation(texts[:30], VOCAB, lower_cases=(True,), generated=200)
    assert hf["texts"] == {"corpus": 30, "probes": len(tokens.PROBES), "generated": 200}
    for name in ("BertTokenizer", "BertTokenizerFast"):
        entry = hf["tokenizers"][name]
        (case,) = entry["cases"]
        # Measured: on real MRPC/SQuAD text both agree with the official tokenizer, token for token.
        assert case["do_lower_case"] is True and case["corpus_differing"] == 0
        kinds = entry["kinds"]
        special = kinds["special_token_kept_whole"]["example"]
        assert special["official"][:4] == ["[", "cl", "##s", "]"] and special["hf"][0] == "[CLS]"
        long_word = kinds["long_word_100_vs_200"]["example"]
        assert long_word["hf"] == ["[UNK]"] and long_word["official"][0] != "[UNK]"
        private = kinds["other_C_category_deleted"]["example"]
        assert private["official"] == ["[UNK]"] and private["hf"] == ["private", "##use"]
        # Every differing text is counted under exactly one kind, and each example really differs.
        assert sum(k["texts"] for k in kinds.values()) == sum(case[f"{s}_differing"] for s in hf["texts"])
        assert all(k["example"]["official"] != k["example"]["hf"] for k in kinds.values())
    assert "surrogate_refused" in hf["tokenizers"]["BertTokenizerFast"]["kinds"]


def test_generated_texts_are_deterministic():
    assert tokens.generated_texts(50) == tokens.generated_texts(50)
    assert tokens.generated_texts(50, seed=1) != tokens.generated_texts(50)


@pytest.mark.parametrize("content", ["", "\n\n\n", "hello\nworld\n"])
def test_a_vocab_without_unk_is_bad_input_not_a_parity_failure(tmp_path, capsys, content):
    """Neither tokenizer can run without [UNK]: exit 2 naming the file, never a report of differing ids."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(content, encoding="utf-8")
    assert tokens.main(["--sample", "--no-hf", "--limit", "5", "--vocab-file", str(vocab)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(vocab) in err and "[UNK]" in err, err
