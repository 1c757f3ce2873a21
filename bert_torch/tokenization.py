"""WordPiece tokenization that matches Google's official BERT tokenizer.

This is an independent implementation. Its behaviour is meant to equal
``bert.tokenization`` from bert-tensorflow 1.0.4, token for token and id for
id. Comments marked "Official quirk" describe behaviour that is copied on
purpose, even where it looks odd, because the checkpoints were trained with it.

This module never imports TensorFlow. Vocab files are read with plain ``open``.

Known differences from the official module (error types only, not tokens):

* Missing vocab file: the official code raises ``tf.errors.NotFoundError``.
  This module raises ``FileNotFoundError`` with a one-line message that names
  the path.
* Unknown token or id in ``convert_*``: both raise ``KeyError``. The official
  error holds only the bare key. This one holds a short sentence that names it.
* ``preserve_unused_tokens``: the official code reads the absl flag
  ``--preserve_unused_tokens``, and raises ``UnparsedFlagAccessError`` if the
  flags have not been parsed. Here it is a constructor argument with the same
  default (False).
* Only local paths are read. ``tf.gfile`` also reads ``gs://`` and similar.
"""

from __future__ import annotations

import collections
import os
import re
import unicodedata
from typing import Iterable, List, Mapping, Union

from ._io import MAX_TEXT_BYTES, InputFileError, decode

__all__ = [
    "BasicTokenizer",
    "BertTokenizer",
    "FullTokenizer",
    "WordpieceTokenizer",
    "convert_to_unicode",
    "load_vocab",
    "whitespace_tokenize",
]

UNK_TOKEN = "[UNK]"
MAX_INPUT_CHARS_PER_WORD = 200

VocabSource = Union[str, "os.PathLike[str]", Mapping[str, int]]

# Official quirk: with preserve_unused_tokens on, only tokens that are
# literally "[unusedN]" and in the vocab are kept whole. "\d" is the Unicode
# digit class, which is the same as the official pattern.
_UNUSED_TOKEN_RE = re.compile(r"\[unused\d+\]")


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


def load_vocab(vocab_file: Union[str, "os.PathLike[str]"]) -> "collections.OrderedDict[str, int]":
    """Reads a one-token-per-line vocab file into an ordered ``token -> id`` dict.

    The ids follow the official loader. They are NOT line numbers:
    * each line is stripped of all Unicode whitespace, so a blank or
      whitespace-only line becomes the token ``""``;
    * only the first occurrence of a token gets an id. A repeat is skipped and
      does not use up an id, so every later token moves down by one.
      (The first blank line takes an id for ``""``. Later blank lines don't.)
    """
    path = os.fspath(vocab_file)
    vocab: "collections.OrderedDict[str, int]" = collections.OrderedDict()
    if os.path.isfile(path) and os.path.getsize(path) > MAX_TEXT_BYTES:   # bounded before it is read
        raise InputFileError(f"vocab {path}: {os.path.getsize(path)} bytes, more than {MAX_TEXT_BYTES}")
    try:
        # newline="\n": tf.gfile's readline splits on "\n" only. Python's
        # universal newlines would also split on a lone "\r".
        # encoding="utf-8" (not utf-8-sig): TF decodes each line strictly,
        # and a leading BOM stays part of the first token.
        with open(path, "r", encoding="utf-8", newline="\n") as reader:
            for line in reader:
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
    except FileNotFoundError:
        raise FileNotFoundError(f"BERT vocab file not found: {path!r}") from None
    except UnicodeDecodeError:   # one line naming the file and the byte (e.g. a UTF-16 vocab)
        with open(path, "rb") as f:
            data = f.read()
        decode(data, path, "vocab")   # raises InputFileError with the file offset of the first bad byte
        raise
    except OSError as e:   # a directory, no permission
        raise InputFileError(f"vocab {path}: cannot read ({e.strerror or e})") from None
    return vocab


def whitespace_tokenize(text: str) -> List[str]:
    """Splits on whitespace as ``str.split()`` does."""
    # Official quirk: str.split() uses Python's whitespace set, which is larger
    # than _is_whitespace (it also has U+2028/U+2029, U+001C-U+001F, U+0085).
    # So LINE/PARAGRAPH SEPARATOR, which _clean_text keeps, still split words.
    return text.split()


def _is_whitespace(char: str) -> bool:
    """True for space, tab, newline, carriage return and category Zs."""
    # "\t\n\r" are Cc, but they count as whitespace, not as controls to delete.
    if char in " \t\n\r":
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    """True for characters that _clean_text deletes: categories Cc and Cf, except tab/newline/CR."""
    if char in "\t\n\r":
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


def _is_preserved(token: str, vocab: Mapping[str, int], enabled: bool) -> bool:
    """True if ``token`` is an in-vocab ``[unusedN]`` token and preservation is on."""
    return enabled and token in vocab and _UNUSED_TOKEN_RE.fullmatch(token) is not None


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------

class BasicTokenizer:
    """Cleans text, splits CJK characters and punctuation, and lower-cases if asked."""

    def __init__(self, do_lower_case: bool = True, vocab: Mapping[str, int] = None,
                 preserve_unused_tokens: bool = False):
        self.do_lower_case = do_lower_case
        self.vocab = vocab if vocab is not None else {}
        self.preserve_unused_tokens = preserve_unused_tokens

    def tokenize(self, text: Union[str, bytes]) -> List[str]:
        """Returns the basic tokens of ``text``, before WordPiece."""
        text = self._clean_text(convert_to_unicode(text))
        # Official quirk: CJK splitting runs for every model, English ones included.
        text = self._tokenize_chinese_chars(text)
        pieces: List[str] = []
        for word in whitespace_tokenize(text):
            if _is_preserved(word, self.vocab, self.preserve_unused_tokens):
                pieces.append(word)
                continue
            if self.do_lower_case:
                # Official quirk: accents are stripped ONLY when lower-casing.
                # Cased models keep "é" as it is. str.lower() may also change
                # the length ("İ" -> "i" + U+0307, and U+0307 is then stripped as Mn).
                word = self._strip_accents(word.lower())
            pieces.extend(self._split_on_punctuation(word))
        # Official quirk: join and split again. This removes empty pieces, and
        # splits anything that lower()/NFD turned into whitespace.
        return whitespace_tokenize(" ".join(pieces))

    @staticmethod
    def _clean_text(text: str) -> str:
        """Deletes NUL, U+FFFD and control characters, and turns whitespace into spaces."""
        out = []
        for char in text:
            # Official quirk: U+FFFD (the replacement character) is deleted too.
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            out.append(" " if _is_whitespace(char) else char)
        return "".join(out)

    @staticmethod
    def _tokenize_chinese_chars(text: str) -> str:
        """Puts a space on each side of every CJK ideograph."""
        return "".join(f" {c} " if _is_chinese_char(ord(c)) else c for c in text)

    @staticmethod
    def _strip_accents(text: str) -> str:
        """Decomposes (NFD) and drops nonspacing marks (category Mn)."""
        # Official quirk: only Mn is dropped. Mc and Me (spacing and enclosing
        # marks) stay, and the text is left in NFD form (e.g. Hangul
        # syllables become jamo).
        return "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")

    @staticmethod
    def _split_on_punctuation(text: str) -> List[str]:
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
    """

    def __init__(self, vocab_file: VocabSource, do_lower_case: bool = True,
                 preserve_unused_tokens: bool = False):
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
            if _is_preserved(word, self.vocab, self.preserve_unused_tokens):
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
                   preserve_unused_tokens: bool = False) -> "BertTokenizer":
        """Builds a tokenizer from a vocab.txt path or a ``token -> id`` mapping."""
        return cls(vocab_file, do_lower_case=do_lower_case,
                   preserve_unused_tokens=preserve_unused_tokens)
