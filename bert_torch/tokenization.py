"""WordPiece tokenization that matches Google's official BERT tokenizer.

This is an independent implementation, and a drop-in for ``bert.tokenization``
from bert-tensorflow 1.0.4: every name that module defines exists here with the
same parameters (names, order, defaults), and gives the same tokens and ids
for the calls the official run_classifier, run_squad and extract_features make.
Comments marked "Official quirk" describe behaviour that is copied on purpose,
even where it looks odd, because the checkpoints were trained with it.

This module never imports TensorFlow. Vocab files are read with ``bert_torch._io.read_bytes``.

``--preserve_unused_tokens``, read the way the official module reads it:
the official module defines this absl flag at import and reads
``FLAGS.preserve_unused_tokens`` each time it decides whether to keep a token
whole (``preserve_token``). Here:

* If absl is installed, ``FLAGS`` is absl's global ``flags.FLAGS`` (the same
  object the official module uses), and the flag is defined there unless it
  already is (with ``allow_override``, so that importing the official module
  afterwards is not a duplicate-flag error). A command line parsed by absl
  (``--preserve_unused_tokens``), or ``FLAGS.preserve_unused_tokens = True``,
  then switches it for both modules.
* Without absl, ``FLAGS`` is a plain namespace whose ``preserve_unused_tokens``
  attribute (False) is the switch: set it to True.
* ``FullTokenizer`` and ``BasicTokenizer`` also take a keyword-only
  ``preserve_unused_tokens``: True or False fixes it for that tokenizer, and
  None (the default) reads the flag at each call, as the official code does.

Known differences from the official module (error types only, not tokens):

* Missing vocab file: the official code raises ``tf.errors.NotFoundError``.
  This module raises ``FileNotFoundError`` with a one-line message that names
  the path.
* Unknown token or id in ``FullTokenizer.convert_*``: both raise ``KeyError``.
  The official error holds only the bare key. This one holds a short sentence
  that names it. (The module-level ``convert_by_vocab`` raises the bare key, as
  the official one does.)
* Reading the flag before absl has parsed the command line: the official code
  raises ``UnparsedFlagAccessError``. This module reads the flag's current
  value (its default, False, unless it was set), because its own commands
  parse their command lines with argparse, not absl.
* Only local paths are read. ``tf.gfile`` also reads ``gs://`` and similar.
* Only regular files are read: a FIFO, pipe, device or socket given as the vocab
  is refused with ``InputFileError`` naming it; ``tf.gfile`` would open it and
  wait for a writer, or read without end.
"""

from __future__ import annotations

import collections
import io
import os
import re
import types
import unicodedata
from typing import Iterable, List, Mapping, Optional, Union

from ._io import decode, read_bytes, regular_file

try:
    from absl import flags as _absl_flags
except ImportError:   # absl comes with TensorFlow; the core install has neither
    _absl_flags = None

__all__ = [
    "BasicTokenizer",
    "BertTokenizer",
    "FullTokenizer",
    "WordpieceTokenizer",
    "convert_by_vocab",
    "convert_ids_to_tokens",
    "convert_to_unicode",
    "convert_tokens_to_ids",
    "load_vocab",
    "preserve_token",
    "printable_text",
    "validate_case_matches_checkpoint",
    "whitespace_tokenize",
]

UNK_TOKEN = "[UNK]"
MAX_INPUT_CHARS_PER_WORD = 200

VocabSource = Union[str, "os.PathLike[str]", Mapping[str, int]]

_PRESERVE_FLAG = "preserve_unused_tokens"
_PRESERVE_HELP = "If True, Wordpiece tokenization will not be applied to words in the vocab."

if _absl_flags is not None:
    FLAGS = _absl_flags.FLAGS
    if _PRESERVE_FLAG not in FLAGS:
        # allow_override: the official module defines the same flag at its import, and absl refuses a
        # second definition unless one of the two allows it. Both modules read it by name, at call time,
        # so they agree on its value whichever definition is registered.
        _absl_flags.DEFINE_bool(_PRESERVE_FLAG, False, _PRESERVE_HELP, allow_override=True)
else:
    FLAGS = types.SimpleNamespace(**{_PRESERVE_FLAG: False})


def _preserve_flag() -> bool:
    """The current value of --preserve_unused_tokens (see the module docstring)."""
    if _absl_flags is not None and isinstance(FLAGS, _absl_flags.FlagValues):
        try:
            # FLAGS[name].value, not FLAGS.name: the attribute raises until absl has parsed a command
            # line, and our commands parse theirs with argparse.
            return bool(FLAGS[_PRESERVE_FLAG].value)
        except KeyError:   # the flag was deleted from absl's registry: its default
            return False
    return bool(getattr(FLAGS, _PRESERVE_FLAG, False))


# Official quirk: the official pattern, used with .search(). "$" also matches
# before a final "\n", and "\d" is the Unicode digit class (so "[unused\u0661]"
# matches too, if the vocab has it).
_UNUSED_TOKEN_RE = re.compile("^\\[unused\\d+\\]$")


def preserve_token(token: str, vocab) -> bool:
    """True if --preserve_unused_tokens is on and ``token`` is an ``[unusedN]`` token in ``vocab``."""
    if not _preserve_flag():
        return False
    return _is_unused_in_vocab(token, vocab)


def _is_unused_in_vocab(token: str, vocab) -> bool:
    if token not in vocab:
        return False
    return bool(_UNUSED_TOKEN_RE.search(token))


def _keep_whole(token: str, vocab, preserve_unused_tokens: Optional[bool]) -> bool:
    """preserve_token, or the tokenizer's own fixed setting when it has one (not None)."""
    if preserve_unused_tokens is None:
        # Looked up at call time, as the official tokenizers do, so the flag is read on each call.
        return preserve_token(token, vocab)
    return bool(preserve_unused_tokens) and _is_unused_in_vocab(token, vocab)


# The checkpoint folder names Google published, by casing. The check below is
# the official heuristic: it only knows these names.
_LOWER_MODELS = ("uncased_L-24_H-1024_A-16", "uncased_L-12_H-768_A-12",
                 "multilingual_L-12_H-768_A-12", "chinese_L-12_H-768_A-12")
_CASED_MODELS = ("cased_L-12_H-768_A-12", "cased_L-24_H-1024_A-16",
                 "multi_cased_L-12_H-768_A-12")


def validate_case_matches_checkpoint(do_lower_case, init_checkpoint) -> None:
    """Raises ValueError if ``do_lower_case`` contradicts the casing of a Google checkpoint named in
    ``init_checkpoint`` (``.../<model name>/bert_model.ckpt``). Other paths, and none, pass."""
    if not init_checkpoint:
        return
    # Official quirk: the lazy ".*?" means the folder matched is the one before
    # the FIRST "/bert_model.ckpt", and "." matches any character.
    m = re.match("^.*?([A-Za-z0-9_-]+)/bert_model.ckpt", init_checkpoint)
    if m is None:
        return
    model_name = m.group(1)
    if model_name in _LOWER_MODELS and not do_lower_case:
        actual_flag, case_name, opposite_flag = "False", "lowercased", "True"
    elif model_name in _CASED_MODELS and do_lower_case:
        actual_flag, case_name, opposite_flag = "True", "cased", "False"
    else:
        return
    raise ValueError(
        "You passed in `--do_lower_case=%s` with `--init_checkpoint=%s`. "
        "However, `%s` seems to be a %s model, so you "
        "should pass in `--do_lower_case=%s` so that the fine-tuning matches "
        "how the model was pre-training. If this error is wrong, please "
        "just comment out this check." % (actual_flag, init_checkpoint,
                                          model_name, case_name, opposite_flag))


# --------------------------------------------------------------------------
# Text and vocab helpers
# --------------------------------------------------------------------------

def convert_to_unicode(text: Union[str, bytes]) -> str:
    """Returns ``text`` as ``str``. Bytes are decoded as UTF-8, and bad bytes are dropped."""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes):
        # Official quirk: decode with errors="ignore", so invalid UTF-8 is
        # dropped without a warning instead of raising or becoming U+FFFD.
        return text.decode("utf-8", "ignore")
    raise ValueError(f"Unsupported string type: {type(text)}")


def printable_text(text: Union[str, bytes]) -> str:
    """Returns ``text`` as a ``str`` for printing or logging: the same as ``convert_to_unicode`` on Python 3."""
    return convert_to_unicode(text)


def load_vocab(vocab_file: Union[str, "os.PathLike[str]"]) -> "collections.OrderedDict[str, int]":
    """Reads a one-token-per-line vocab file into an ordered ``token -> id`` dict (``parse_vocab``)."""
    path = os.fspath(vocab_file)
    if regular_file(path, "vocab", missing_ok=True) is None:
        raise FileNotFoundError(f"BERT vocab file not found: {path!r}")
    return parse_vocab(read_bytes(path, "vocab"), path)


def parse_vocab(data: bytes, path: str) -> "collections.OrderedDict[str, int]":
    """The ``token -> id`` dict of a vocab file's bytes (``data``, read from ``path``), as the official
    loader builds it. The ids are NOT line numbers:
    * each line is stripped of all Unicode whitespace, so a blank or
      whitespace-only line becomes the token ``""``;
    * only the first occurrence of a token gets an id. A repeat is skipped and
      does not use up an id, so every later token moves down by one.
      (The first blank line takes an id for ``""``. Later blank lines don't.)
    """
    vocab: "collections.OrderedDict[str, int]" = collections.OrderedDict()
    # Decoded whole: a UTF-8 error names its file offset.
    # encoding="utf-8" (not utf-8-sig): TF decodes each line strictly,
    # and a leading BOM stays part of the first token.
    text = decode(data, path, "vocab")
    # newline="\n": tf.gfile's readline splits on "\n" only. Python's
    # universal newlines would also split on a lone "\r".
    for line in io.StringIO(text, newline="\n"):
        # Official quirk: TF's buffered readline drops every "\r" byte,
        # in the middle of a line too ("c\rd" -> "cd"), before .strip().
        line = line.replace("\r", "")
        if not line:
            # Official quirk: the loop stops at the first readline() that
            # returns "". Only a last line made of nothing but "\r" (no
            # "\n") gives "", so it adds no "" token.
            break
        token = line.strip()
        if token not in vocab:
            vocab[token] = len(vocab)
    return vocab


def convert_by_vocab(vocab, items) -> list:
    """Looks each item up in ``vocab`` (tokens to ids, or ids to tokens). A missing one raises
    ``KeyError(item)``, as in the official code."""
    return [vocab[item] for item in items]


def convert_tokens_to_ids(vocab, tokens) -> List[int]:
    return convert_by_vocab(vocab, tokens)


def convert_ids_to_tokens(inv_vocab, ids) -> List[str]:
    return convert_by_vocab(inv_vocab, ids)


def whitespace_tokenize(text: str) -> List[str]:
    """Splits on whitespace as ``str.split()`` does."""
    # Official quirk: str.split() uses Python's whitespace set, which is larger
    # than _is_whitespace (it also has U+2028/U+2029, U+001C-U+001F, U+0085).
    # So LINE/PARAGRAPH SEPARATOR, which _clean_text keeps, still split words.
    # strip() first, as the official code does, so a non-string fails the same way.
    return text.strip().split()


def _is_whitespace(char: str) -> bool:
    """True for space, tab, newline, carriage return and category Zs."""
    # "\t\n\r" are Cc, but they count as whitespace, not as controls to delete.
    # A tuple, not a string: "" or "\t\n" must not count as "in" it (the official
    # code compares whole characters, and unicodedata then refuses such input).
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    """True for characters that _clean_text deletes: categories Cc and Cf, except tab/newline/CR."""
    if char in ("\t", "\n", "\r"):   # a tuple, for the reason in _is_whitespace
        return False
    # Official quirk: only Cc and Cf count. Private use (Co), unassigned (Cn) and
    # lone surrogates (Cs) are KEPT. (Older BERT code used startswith("C").)
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    """True for any ASCII non-alphanumeric printable character or Unicode category P*."""
    cp = ord(char)
    # Official quirk: every printable non-alphanumeric ASCII character counts,
    # including symbols such as $ + < = > ^ ` | ~ (category S*). Non-ASCII
    # symbols (e.g. the euro sign, emoji) do NOT count, so they stay inside words.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# Official quirk: these exact ranges only. They cover CJK Unified Ideographs, Ext A,
# Ext B, Ext C, Ext D, Ext E, and the two Compatibility Ideograph blocks. Ext F
# (U+2CEB0..), Ext G (U+30000..), radicals, kana and Hangul are NOT split out.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_chinese_char(cp: int) -> bool:
    """True if code point ``cp`` is in one of the official CJK ideograph ranges."""
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------

class BasicTokenizer:
    """Cleans text, splits CJK characters and punctuation, and lower-cases if asked.

    ``vocab`` holds the tokens that --preserve_unused_tokens may keep whole (only
    ``[unusedN]`` ones are). ``preserve_unused_tokens`` (keyword only, not in the
    official signature): None reads the flag at each call; True or False fixes it.
    """

    def __init__(self, do_lower_case=True, vocab=tuple(), *, preserve_unused_tokens: Optional[bool] = None):
        self.do_lower_case = do_lower_case
        self.vocab = vocab
        self.preserve_unused_tokens = preserve_unused_tokens

    def tokenize(self, text: Union[str, bytes]) -> List[str]:
        """Returns the basic tokens of ``text``, before WordPiece."""
        text = self._clean_text(convert_to_unicode(text))
        # Official quirk: CJK splitting runs for every model, English ones included.
        text = self._tokenize_chinese_chars(text)
        pieces: List[str] = []
        for word in whitespace_tokenize(text):
            if _keep_whole(word, self.vocab, self.preserve_unused_tokens):
                pieces.append(word)
                continue
            if self.do_lower_case:
                # Official quirk: accents are stripped ONLY when lower-casing.
                # Cased models keep "é" as it is. str.lower() may also change
                # the length ("İ" -> "i" + U+0307, and U+0307 is then stripped as Mn).
                word = self._run_strip_accents(word.lower())
            pieces.extend(self._run_split_on_punc(word))
        # Official quirk: join and split again. This removes empty pieces, and
        # splits anything that lower()/NFD turned into whitespace.
        return whitespace_tokenize(" ".join(pieces))

    def _run_strip_accents(self, text: str) -> str:
        """Decomposes (NFD) and drops nonspacing marks (category Mn)."""
        # Official quirk: only Mn is dropped. Mc and Me (spacing and enclosing
        # marks) stay, and the text is left in NFD form (e.g. Hangul
        # syllables become jamo).
        return "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")

    def _run_split_on_punc(self, text: str) -> List[str]:
        """Splits ``text`` so that each punctuation character is its own piece."""
        pieces: List[str] = []
        run: List[str] = []
        for char in text:
            if _is_punctuation(char):
                if run:
                    pieces.append("".join(run))
                    run = []
                pieces.append(char)
            else:
                run.append(char)
        if run:
            pieces.append("".join(run))
        return pieces

    def _tokenize_chinese_chars(self, text: str) -> str:
        """Puts a space on each side of every CJK ideograph."""
        # Through the method, as the official code does, so a subclass that overrides it is used.
        is_cjk = self._is_chinese_char
        return "".join(f" {c} " if is_cjk(ord(c)) else c for c in text)

    def _is_chinese_char(self, cp: int) -> bool:
        """True if code point ``cp`` is in one of the official CJK ideograph ranges."""
        return _is_chinese_char(cp)

    def _clean_text(self, text: str) -> str:
        """Deletes NUL, U+FFFD and control characters, and turns whitespace into spaces."""
        out = []
        for char in text:
            # Official quirk: U+FFFD (the replacement character) is deleted too.
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            out.append(" " if _is_whitespace(char) else char)
        return "".join(out)

    # The names this class used before it took the official ones.
    _strip_accents = _run_strip_accents
    _split_on_punctuation = _run_split_on_punc


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece, with "##" marking continuation pieces."""

    def __init__(self, vocab: Mapping[str, int], unk_token: str = UNK_TOKEN,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text: Union[str, bytes]) -> List[str]:
        """Returns the WordPiece tokens of each whitespace-separated word in ``text``."""
        output: List[str] = []
        for word in whitespace_tokenize(convert_to_unicode(text)):
            # Official quirk: a word longer than 200 code points becomes one
            # unk_token. 200 exactly is still split into pieces.
            if len(word) > self.max_input_chars_per_word:
                output.append(self.unk_token)
                continue
            output.extend(self._split_word(word))
        return output

    def _split_word(self, word: str) -> List[str]:
        """Returns the pieces of one word, or ``[unk_token]`` if any part cannot be matched."""
        pieces: List[str] = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    pieces.append(candidate)
                    start = end
                    break
            else:
                # Official quirk: one piece that cannot be matched turns the whole
                # word into a single [UNK]. Pieces already matched are dropped.
                return [self.unk_token]
        return pieces


class FullTokenizer:
    """End-to-end BERT tokenizer: BasicTokenizer, then WordPiece, plus id conversion.

    ``vocab_file`` is a path to a vocab.txt or an existing ``token -> id`` mapping.
    ``preserve_unused_tokens`` (keyword only, not in the official signature): None
    reads --preserve_unused_tokens at each call, as the official tokenizer does;
    True or False fixes it for this tokenizer.
    """

    def __init__(self, vocab_file: VocabSource, do_lower_case: bool = True, *,
                 preserve_unused_tokens: Optional[bool] = None):
        if isinstance(vocab_file, Mapping):
            self.vocab = collections.OrderedDict(vocab_file)
        else:
            self.vocab = load_vocab(vocab_file)
        # Built with a dict, as in the official code, so lookups work the same way
        # (numpy ints work, and a negative id is a KeyError, not an index from the end).
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.preserve_unused_tokens = preserve_unused_tokens
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case, vocab=self.vocab,
                                              preserve_unused_tokens=preserve_unused_tokens)
        self.wordpiece_tokenizer = WordpieceTokenizer(vocab=self.vocab)

    def tokenize(self, text: Union[str, bytes]) -> List[str]:
        """Returns the WordPiece tokens for ``text`` (a str, or UTF-8 bytes)."""
        tokens: List[str] = []
        for word in self.basic_tokenizer.tokenize(text):
            if _keep_whole(word, self.vocab, self.preserve_unused_tokens):
                tokens.append(word)
            else:
                tokens.extend(self.wordpiece_tokenizer.tokenize(word))
        return tokens

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> List[int]:
        """Looks up each token's id. An unknown token raises KeyError."""
        ids = []
        for token in tokens:
            try:
                ids.append(self.vocab[token])
            except KeyError:
                # The official code raises KeyError(token). Same type, clearer message.
                raise KeyError(f"token {token!r} is not in the vocabulary") from None
        return ids

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> List[str]:
        """Looks up each id's token. An unknown id raises KeyError."""
        tokens = []
        for i in ids:
            try:
                tokens.append(self.inv_vocab[i])
            except KeyError:
                raise KeyError(f"id {i!r} is not in the vocabulary "
                               f"(size {len(self.inv_vocab)})") from None
        return tokens

    @property
    def vocab_size(self) -> int:
        """The number of distinct tokens (after duplicates are dropped)."""
        return len(self.vocab)


class BertTokenizer(FullTokenizer):
    """``FullTokenizer`` with a named constructor: ``BertTokenizer.from_vocab(path)``."""

    @classmethod
    def from_vocab(cls, vocab_file: VocabSource, do_lower_case: bool = True,
                   preserve_unused_tokens: Optional[bool] = None) -> "BertTokenizer":
        """Builds a tokenizer from a vocab.txt path or a ``token -> id`` mapping."""
        return cls(vocab_file, do_lower_case=do_lower_case,
                   preserve_unused_tokens=preserve_unused_tokens)
