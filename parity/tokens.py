"""Token parity: ``bert_torch.tokenization`` against the official ``bert.tokenization``, id for id.

    python -m parity.tokens [--data-dir D] [--vocab-file V] [--out F.json] [--no-hf]

Every MRPC sentence (train, dev, test) and every SQuAD v1.1 dev context and question under the
data directory goes through both ``FullTokenizer``s, with ``do_lower_case`` true and false; the
tokens and their ids must be identical. Without a data directory the committed samples in
``parity/data/`` are used (and the report says so). Exit codes follow CONTRACT.md: 0 no
difference, 1 a difference (each printed with the input, both token lists and the first
differing position), 2 bad input (one line naming the file).

The same texts, plus a fixed list of known-tricky probes, also go through transformers'
``BertTokenizer`` (pure Python) and ``BertTokenizerFast`` (Rust ``tokenizers``). That part is
documentation of the ecosystem, not a requirement: it counts how often and where they differ
from the official tokenizer, with one example per kind of difference.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Iterable, Optional, Sequence

from bert_torch.commands import run_main
from bert_torch.flags import count, input_dir, input_file, output_file
from bert_torch.options import Options, flag
from bert_torch._io import read_text, sha256, write_json
from bert_torch.tokenization import FullTokenizer, load_vocab

from parity.files import SAMPLE_DIR, default_data_dir
from parity.inputs import InputError

MRPC_SPLITS = ("train", "dev", "test")
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")

# Texts on which tokenizers are known (or suspected) to part ways. They go through the HF
# triangulation beside the corpus, so that its table shows each kind even when real text never
# triggers it; our tokenizer must match the official one on them too.
PROBES = (
    "[CLS] the cat [SEP] sat [MASK] .",             # specials: HF keeps them whole
    "a" * 150,                                     # 101..200 chars: HF [UNK], official pieces
    "a" * 201,                                     # > 200: [UNK] everywhere
    "x" * 99 + "y " + "b" * 100,
    "private\ue000use",                            # Co: kept by the official _is_control
    "un\u0378assigned",                            # Cn: kept by the official _is_control
    "lone\ud800surrogate",                         # Cs: kept officially; Rust cannot take it at all
    "next\x85line", "line\u2028sep", "file\x1csep",   # whitespace to str.split, not Zs
    "\ufeffbom", "zero\u200bwidth", "soft\u00adhyphen", "left\u200eto",   # Cf: deleted
    "Caf\u00e9 na\u00efve R\u00c9SUM\u00c9", "e\u0301t\u00e9",            # accents (NFD, Mn)
    "\u0130stanbul \u01c4emal \ufb01ne \u00df",    # case mappings that change length
    "\u2460\u2461 \u00bd \uff48\uff45\uff4c\uff4c\uff4f",   # compatibility characters (no NFKC)
    "\u4e2d\u6587\u5b57 \u3072\u3089\u304c\u306a \ud55c\uae00 \U0002ceb0\U00030000",   # CJK ranges
    "emoji\U0001f600here \u2764\ufe0f \U0001f1ef\U0001f1f5",
    "$5+3=8 <tag> a^b `c` x|y ~z \u20ac10",          # ASCII symbols split, non-ASCII symbols not
    "[unused1] [UNUSED1]",
    "tab\tnew\nline\rcr\x00nul\ufffdrepl\x7fdel",
)


@dataclass
class Text:
    source: str   # where it came from: "mrpc/dev.tsv:12 #1 String", "squad/dev-v1.1.json:<id> question"
    text: str


@dataclass
class Difference:
    source: str
    do_lower_case: bool
    what: str                  # "tokens" or "ids"
    index: int                 # first differing position
    input: str
    ours: list
    official: list

    def describe(self) -> str:
        at = lambda xs: repr(xs[self.index]) if self.index < len(xs) else "<end>"
        return (f"{self.source} (do_lower_case={self.do_lower_case}): {self.what} differ at position "
                f"{self.index}: ours {at(self.ours)}, official {at(self.official)}\n"
                f"  input:    {self.input!r}\n  ours:     {self.ours!r}\n  official: {self.official!r}")


def first_difference(a: Sequence, b: Sequence) -> Optional[int]:
    """The first index where ``a`` and ``b`` differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

def _read(path: str) -> str:
    """A data file's text: a regular file, read once (its ``sha256`` is of these bytes), bounded by its size."""
    return read_text(path, "data file")


def mrpc_texts(path: str, label: str) -> list[Text]:
    """Both sentences of every data row of a GLUE MRPC tsv, read as run_classifier reads them
    (tab-separated, no quoting, header skipped)."""
    lines = _read(path).split("\n")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        row = line.split("\t")
        if len(row) < 5:
            raise InputError(f"{path}:{n}: {len(row)} tab-separated fields, expected 5 (MRPC tsv)")
        out += [Text(f"{label}:{n} #1 String", row[3]), Text(f"{label}:{n} #2 String", row[4])]
    if not out:
        raise InputError(f"{path}: no MRPC data rows")
    return out


def squad_texts(path: str, label: str) -> list[Text]:
    """Every paragraph context and every question of a SQuAD v1.1 json."""
    try:
        data = json.loads(_read(path))["data"]
        out = []
        for article in data:
            for p, para in enumerate(article["paragraphs"]):
                out.append(Text(f"{label}:{article['title']}/{p} context", para["context"]))
                out += [Text(f"{label}:{qa['id']} question", qa["question"]) for qa in para["qas"]]
    except (ValueError, KeyError, TypeError, RecursionError) as e:   # RecursionError: absurd nesting
        raise InputError(f"{path}: not a SQuAD v1.1 json ({type(e).__name__}: {e})") from None
    if not out:
        raise InputError(f"{path}: no SQuAD paragraphs")
    return out


def load_corpus(data_dir: Optional[str]) -> tuple[list[Text], dict]:
    """The texts to compare and where they came from.

    ``data_dir`` holds ``mrpc/{train,dev,test}.tsv`` and ``squad/dev-v1.1.json``; None means
    the committed samples (``parity/data/mrpc_sample.tsv``, ``squad_dev_sample.json``).
    """
    if data_dir is None:
        files = [("mrpc", os.path.join(SAMPLE_DIR, "mrpc_sample.tsv")),
                 ("squad", os.path.join(SAMPLE_DIR, "squad_dev_sample.json"))]
    else:
        if not os.path.isdir(data_dir):
            raise InputError(f"--data-dir {data_dir}: no such directory")
        files = [("mrpc", os.path.join(data_dir, "mrpc", f"{s}.tsv")) for s in MRPC_SPLITS]
        files.append(("squad", os.path.join(data_dir, "squad", "dev-v1.1.json")))
    texts, sources = [], {}
    for kind, path in files:
        label = os.path.relpath(path, SAMPLE_DIR if data_dir is None else data_dir)
        got = (mrpc_texts if kind == "mrpc" else squad_texts)(path, label)
        sources[label] = {"texts": len(got), "sha256": sha256(path)}
        texts += got
    return texts, sources


# ---------------------------------------------------------------------------------------------
# The tokenizers
# ---------------------------------------------------------------------------------------------

def official_tokenizer(vocab_file: str, do_lower_case: bool):
    """Google's ``bert.tokenization.FullTokenizer`` (bert-tensorflow 1.0.4), reached through
    ``reference_tf``, the one package that may import TensorFlow (the official module does)."""
    from reference_tf._official import run_module
    module = run_module("tokenization")
    from absl import flags   # ships with TensorFlow
    # FullTokenizer.tokenize reads the absl flag --preserve_unused_tokens; reading any flag
    # before parsing raises, so mark them parsed: the flag keeps its default, False.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return module.FullTokenizer(vocab_file, do_lower_case=do_lower_case)


def hf_tokenizers(vocab_file: str, do_lower_case: bool) -> dict[str, tuple[str, object]]:
    """transformers' Python and Rust BERT tokenizers built from the vocab file alone (no hub).

    Returns {name: (class path, tokenizer)}. transformers 5 renamed the classes: ``BertTokenizer``
    and ``BertTokenizerFast`` are both the Rust one, and the Python one is ``BertTokenizerLegacy``;
    4.x has ``BertTokenizer`` (Python) and ``BertTokenizerFast`` (Rust). Each is checked to have
    loaded the whole vocab: an unread vocab makes every token ``[UNK]`` without any error.
    """
    import transformers
    n = len(load_vocab(vocab_file))
    if hasattr(transformers, "BertTokenizerLegacy"):
        made = {"BertTokenizer": ("transformers.BertTokenizerLegacy",
                                  transformers.BertTokenizerLegacy(vocab_file, do_lower_case=do_lower_case)),
                "BertTokenizerFast": ("transformers.BertTokenizerFast",
                                      transformers.BertTokenizerFast(vocab=vocab_file, do_lower_case=do_lower_case))}
    else:
        made = {"BertTokenizer": ("transformers.BertTokenizer",
                                  transformers.BertTokenizer(vocab_file=vocab_file, do_lower_case=do_lower_case)),
                "BertTokenizerFast": ("transformers.BertTokenizerFast",
                                      transformers.BertTokenizerFast(vocab_file=vocab_file, do_lower_case=do_lower_case))}
    for name, (cls, tok) in made.items():
        if len(tok.get_vocab()) != n:
            raise InputError(f"{vocab_file}: {cls} loaded {len(tok.get_vocab())} tokens, the file has {n}")
    return made


def _hf_tokenize(tok, texts: list[str]) -> list:
    """Tokens for each text, or the exception text when the tokenizer refuses the input."""
    def one(text):
        try:
            return tok.tokenize(text)
        except Exception as e:   # noqa: BLE001 - a refusal is a documented kind of difference
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if getattr(tok, "is_fast", False):
        try:   # one batched call is ~20x faster; a text it refuses sends us one by one
            ids = tok(texts, add_special_tokens=False)["input_ids"]
            return [tok.convert_ids_to_tokens(i) for i in ids]
        except Exception:   # noqa: BLE001
            pass
    return [one(t) for t in texts]


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------

def compare_one(source: str, text: str, lower: bool, ours: FullTokenizer, official) -> tuple[int, Optional[Difference]]:
    """(number of official tokens, the first difference or None) for one text."""
    got, want = ours.tokenize(text), official.tokenize(text)
    i = first_difference(got, want)
    if i is not None:
        return len(want), Difference(source, lower, "tokens", i, text, got, want)
    got_ids, want_ids = _ids(ours, got), _ids(official, want)
    i = first_difference(got_ids, want_ids)
    if i is not None:
        return len(want), Difference(source, lower, "ids", i, text, got_ids, want_ids)
    return len(want), None


def _ids(tokenizer, tokens: list) -> list:
    try:
        return list(tokenizer.convert_tokens_to_ids(tokens))
    except KeyError as e:   # a vocab without [UNK]: both sides raise, and must agree on where
        return [f"KeyError: {e.args[0]}"]


def check_token_parity(data_dir: Optional[str] = None, vocab_file: Optional[str] = None,
                       lower_cases: Iterable[bool] = (True, False), hf: bool = True, limit: Optional[int] = None,
                       max_examples: int = 20, texts: Optional[list[Text]] = None, hf_generated: int = 2000) -> dict:
    """Tokens and ids of ``bert_torch.tokenization.FullTokenizer`` against the official one.

    ``data_dir`` None: the committed samples. ``vocab_file`` None: the real all-MiniLM-L6-v2
    (uncased BERT) vocab. ``limit`` keeps the first N texts (quick checks); ``texts`` replaces
    the corpus. Returns the release-report dict: ``verdict``, ``texts_compared`` and
    ``tokens_compared`` (summed over the ``do_lower_case`` cases), ``differences``, the first
    ``max_examples`` of them in ``examples``, per-case counts, ``seconds``, and ``hf`` (the
    triangulation, see ``hf_triangulation``, with ``hf_generated`` random texts) unless ``hf`` is False.
    """
    start = time.perf_counter()
    if vocab_file is None:
        from parity.minilm import minilm_dir
        vocab_file = os.path.join(minilm_dir(), "vocab.txt")
    if not os.path.lexists(vocab_file):   # anything else of that name is checked by load_vocab
        raise InputError(f"{vocab_file}: no such vocab file")
    try:
        vocab = load_vocab(vocab_file)
    except UnicodeDecodeError as e:
        raise InputError(f"{vocab_file}: not a UTF-8 vocab file (byte {e.start})") from None
    vocab_size = len(vocab)
    if "[UNK]" not in vocab:   # both tokenizers map unknown pieces to it: without one they cannot tokenize at all
        raise InputError(f"{vocab_file}: no [UNK] token among its {vocab_size} tokens: not a WordPiece vocab")
    if texts is None:
        texts, sources = load_corpus(data_dir)
    else:
        sources = {"given": {"texts": len(texts)}}
    if limit is not None:
        texts = texts[:limit]
    cases, examples, n_diff = [], [], 0
    for lower in lower_cases:
        t0 = time.perf_counter()
        ours, official = FullTokenizer(vocab_file, do_lower_case=lower), official_tokenizer(vocab_file, lower)
        n_tokens = n_case = 0
        for item in texts:
            n, diff = compare_one(item.source, item.text, lower, ours, official)
            n_tokens += n
            if diff is not None:
                n_case += 1
                if len(examples) < max_examples:
                    examples.append(diff)
        n_diff += n_case
        cases.append({"do_lower_case": lower, "texts": len(texts), "tokens": n_tokens, "differences": n_case,
                      "seconds": round(time.perf_counter() - t0, 2)})
    report = {
        "verdict": "fail" if n_diff else "pass",
        "vocab_file": vocab_file, "vocab_sha256": sha256(vocab_file), "vocab_size": vocab_size,
        "data_dir": data_dir,
        "corpus": "given" if "given" in sources else "sample" if data_dir is None else "full",
        "sources": sources,
        "texts_compared": sum(c["texts"] for c in cases), "tokens_compared": sum(c["tokens"] for c in cases),
        "differences": n_diff, "cases": cases, "examples": [asdict(d) for d in examples],
        "seconds": round(time.perf_counter() - start, 2),
    }
    if limit is not None:
        report["corpus"] += f" (first {limit} texts)"
    if hf:
        report["hf"] = hf_triangulation(texts, vocab_file, lower_cases, generated=hf_generated)
    return report


# ---------------------------------------------------------------------------------------------
# Triangulation with transformers
# ---------------------------------------------------------------------------------------------

# Word-level causes, tested first on the first whitespace-delimited word whose tokens differ.
KINDS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("special_token_kept_whole", "[CLS]/[SEP]/[UNK]/[PAD]/[MASK] in the text: HF never splits them, "
     "the official tokenizer splits them like any text ('[', 'cl', '##s', ']')",
     lambda w: any(s in w for s in SPECIAL_TOKENS)),
    ("long_word_100_vs_200", "a word of 101..200 characters: HF's max_input_chars_per_word is 100, "
     "the official one is 200",
     lambda w: 100 < len(w) <= 200),
)
# Character-level causes: the first character of that word which, alone, tokenizes differently.
CHAR_KINDS = {
    "Co": "other_C_category_deleted", "Cn": "other_C_category_deleted", "Cs": "other_C_category_deleted",
    "Mn": "combining_mark", "Mc": "combining_mark", "Me": "combining_mark",
}
KIND_DESCRIPTIONS = {k: d for k, d, _ in KINDS} | {
    "other_C_category_deleted": "private-use (Co), unassigned (Cn) or surrogate (Cs) characters: HF deletes "
                                "them as controls (the old startswith('C') rule), the official 1.0.4 code "
                                "deletes only Cc/Cf and keeps them (usually making the word [UNK])",
    "nfc_normalized": "a character that NFC changes (CJK compatibility ideographs, U+037E, U+1FBE, ...): "
                      "transformers' Python BasicTokenizer NFC-normalises first, the official code never does",
    "combining_mark": "a combining mark (Mn/Mc/Me) that accent stripping or normalisation treats differently",
    "char:<category>": "another character that alone tokenizes differently; its Unicode category is named",
    "word_context": "every character agrees alone; the word differs only as a whole",
    "text_context": "every word agrees alone; the text differs only in how its words meet",
    "surrogate_refused": "a lone surrogate (Cs): the tokenizer raises instead of tokenizing",
    "refused": "the tokenizer raises on the text",
    "ids_only": "same tokens, different ids (vocab loaders)",
}


def classify(text: str, official_tokenize: Callable[[str], list], other_tokenize: Callable[[str], list]) -> tuple[str, str]:
    """(kind, the word or character that shows it) for a text on which two tokenizers differ."""
    differs = lambda piece: official_tokenize(piece) != other_tokenize(piece)
    culprit = next((w for w in text.split() if differs(w)), None)
    if culprit is None:
        return "text_context", text   # every word agrees alone: the difference comes from how words meet
    for kind, _, test in KINDS:
        if test(culprit):
            return kind, culprit
    char = next((c for c in culprit if differs(c)), None)
    if char is None:
        return "word_context", culprit
    if unicodedata.normalize("NFC", char) != char:
        return "nfc_normalized", char
    category = unicodedata.category(char)
    return CHAR_KINDS.get(category, f"char:{category}"), char


def generated_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic pseudo-random texts: vocabulary words mixed with characters from every
    plane up to U+2FFFF and odd whitespace (no lone surrogates, which one HF tokenizer refuses
    outright: the probes cover that). They reach kinds of difference real text never shows."""
    import random
    rng = random.Random(seed)
    words = ["the", "cat", "Caf\u00e9", "naive", "un", "##able", "hello"]
    spaces = " \t\n\x85\u2028\u00a0\u200b\ufeff\u0301"

    def char() -> str:
        r = rng.random()
        cp = rng.randrange(0x20, 0x3000) if r < 0.5 else rng.randrange(0x3000, 0x30000) if r < 0.8 else None
        if cp is None or 0xD800 <= cp <= 0xDFFF:
            return rng.choice(spaces)
        return chr(cp)

    out = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.5 else "".join(char() for _ in range(rng.randrange(1, 4)))
                 for _ in range(rng.randrange(1, 8))]
        out.append(" ".join(parts) if rng.random() < 0.5 else "".join(parts))
    return out


def hf_triangulation(texts: list[Text], vocab_file: str, lower_cases: Iterable[bool] = (True, False),
                     generated: int = 2000) -> dict:
    """How often and where transformers' tokenizers differ from the official one, per kind.

    Three sets go through: the corpus ``texts``, ``PROBES``, and ``generated`` seeded random
    texts (``generated_texts``). Counts are texts that differ (tokens, or ids with equal tokens);
    each kind keeps its first example.
    """
    try:
        import transformers
    except ImportError as e:
        return {"skipped": f"transformers is not installed ({e})"}
    start = time.perf_counter()
    corpora = {"corpus": [t.text for t in texts], "probes": list(PROBES), "generated": generated_texts(generated)}
    result = {"transformers": transformers.__version__, "texts": {k: len(v) for k, v in corpora.items()},
              "kind_descriptions": KIND_DESCRIPTIONS,
              "tokenizers": {}}
    for lower in lower_cases:
        official = official_tokenizer(vocab_file, lower)
        for name, (cls, tok) in hf_tokenizers(vocab_file, lower).items():
            entry = result["tokenizers"].setdefault(name, {"class": cls, "cases": [], "kinds": {}})
            case = {"do_lower_case": lower}
            for corpus, items in corpora.items():
                got_all = _hf_tokenize(tok, items)
                differing = 0
                for text, got in zip(items, got_all):
                    want = official.tokenize(text)
                    if got == want:
                        if tok.convert_tokens_to_ids(got) == _ids(official, want):
                            continue
                        kind, word = "ids_only", text
                    elif isinstance(got, str):
                        kind, word = ("surrogate_refused" if any(unicodedata.category(c) == "Cs" for c in text)
                                      else "refused"), text
                    else:
                        kind, word = classify(text, official.tokenize, lambda w: _hf_tokenize(tok, [w])[0])
                    differing += 1
                    k = entry["kinds"].setdefault(kind, {"texts": 0, "where": {}, "example": None})
                    k["texts"] += 1
                    where = f"{corpus}/{'uncased' if lower else 'cased'}"
                    k["where"][where] = k["where"].get(where, 0) + 1
                    if k["example"] is None:
                        i = first_difference(got, want) if not isinstance(got, str) else 0
                        k["example"] = {"input": text if len(text) <= 240 else text[:240] + "...", "word": word[:240],
                                        "do_lower_case": lower, "index": i,
                                        "official": want[max(0, (i or 0) - 2):(i or 0) + 4],
                                        "hf": got if isinstance(got, str) else got[max(0, (i or 0) - 2):(i or 0) + 4]}
                case[f"{corpus}_differing"] = differing
            entry["cases"].append(case)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


# ---------------------------------------------------------------------------------------------
# Rendering and the command
# ---------------------------------------------------------------------------------------------

def render_text(report: dict) -> str:
    """The report for people: verdict, counts, differences, then the HF table."""
    lines = [f"token parity: {report['verdict'].upper()}: {report['texts_compared']} texts, "
             f"{report['tokens_compared']} tokens compared, {report['differences']} differences, "
             f"{report['seconds']} s ({report['corpus']} corpus, vocab {report['vocab_file']})"]
    for src, info in report["sources"].items():
        lines.append(f"  {src}: {info['texts']} texts")
    for c in report["cases"]:
        lines.append(f"  do_lower_case={c['do_lower_case']}: {c['texts']} texts, {c['tokens']} tokens, "
                     f"{c['differences']} differences, {c['seconds']} s")
    for d in report["examples"]:
        lines.append(Difference(**d).describe())
    hf = report.get("hf")
    if hf and "skipped" in hf:
        lines.append(f"HF triangulation skipped: {hf['skipped']}")
    elif hf:
        sets = ", ".join(f"{n} {k}" for k, n in hf["texts"].items())
        lines += ["", f"HF triangulation (transformers {hf['transformers']}): texts whose tokens or ids differ from "
                      f"the official tokenizer, per do_lower_case case, over {sets} texts; {hf['seconds']} s",
                  "| tokenizer | kind | texts | where | example: input; official vs HF |",
                  "| --- | --- | ---: | --- | --- |"]
        short = lambda x, n=48: (repr(x) if len(repr(x)) <= n else repr(x)[:n] + "...")
        for name, entry in hf["tokenizers"].items():
            cases = "; ".join(f"{'uncased' if c['do_lower_case'] else 'cased'}: "
                              + ", ".join(f"{k} {c[k + '_differing']}" for k in hf["texts"]) for c in entry["cases"])
            lines.append(f"| {name} (`{entry['class']}`) | all | {sum(k['texts'] for k in entry['kinds'].values())} "
                         f"| {cases} | |")
            for kind, k in sorted(entry["kinds"].items(), key=lambda kv: -kv[1]["texts"]):
                ex = k["example"]
                where = ", ".join(f"{w} {n}" for w, n in k["where"].items())
                lines.append(f"| {name} | {kind} | {k['texts']} | {where} | {short(ex['word'], 40)} in "
                             f"{short(ex['input'])}; {short(ex['official'], 60)} vs {short(ex['hf'], 60)} |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class TokensOptions(Options):
    """``bert-parity tokens`` (``python -m parity.tokens``)."""
    PROG: ClassVar[str] = "bert-parity tokens"
    DESCRIPTION: ClassVar[str] = "Token parity against the official BERT tokenizer, id for id"

    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="folder with mrpc/{train,dev,test}.tsv and squad/dev-v1.1.json "
                                        "(default: ../shared/data beside the repository when present, "
                                        "else the committed samples)")
    sample: bool = flag("--sample", action="store_true", default=False,
                        help="use the committed samples even if a data dir exists")
    vocab_file: Optional[str] = flag("--vocab-file", type=input_file("vocab file"),
                                     help="vocab.txt (default: the all-MiniLM-L6-v2 uncased vocab)")
    out: Optional[str] = flag("--output", "--out", type=output_file("report file"),
                              help="write the report as JSON here")
    no_hf: bool = flag("--no-hf", action="store_true", default=False, help="skip the transformers triangulation")
    limit: Optional[int] = flag("--limit", type=count(1), help="compare only the first N texts (N >= 1)")
    generated: int = flag("--generated", type=count(0, 10_000_000), default=2000,
                          help="seeded random texts added to the HF triangulation (default 2000)")


def run_tokens(opts: TokensOptions) -> int:
    """Prints the report (and writes it as JSON with ``--output``); 1 when any text tokenizes differently."""
    # The official tokenizer comes with the `tf` extra; without it, run_main says so (exit 2).
    data_dir = None if opts.sample else (opts.data_dir or default_data_dir())
    report = check_token_parity(data_dir, opts.vocab_file, hf=not opts.no_hf, limit=opts.limit,
                                hf_generated=opts.generated)
    sys.stdout.write(render_text(report))
    if opts.out:
        try:   # ASCII escapes (dumps' default): probes hold lone surrogates
            write_json(opts.out, report, "--out", indent=2)
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"report: {opts.out}")
    return 1 if report["differences"] else 0


def main(argv: Optional[list[str]] = None) -> int:
    """``bert-parity tokens`` (``python -m parity.tokens``)."""
    return run_main(lambda: run_tokens(TokensOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
