"""Deterministic, realistic model inputs: real sentence pairs tokenized with the checkpoint's vocab.

Row 0 is always full length (no padding); the other rows get lengths drawn from
[ceil(T/4), T-1], so most rows carry padding. Every row is ``[CLS] A [SEP] B [SEP]``
with segment ids 0 then 1 (both segments), A and B cut by the official
``_truncate_seq_pair`` rule (drop from the end of the longer one).
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bert_torch.tokenization import FullTokenizer, load_vocab

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "mrpc_sample.tsv")


class InputError(ValueError):
    """Bad input data (vocab, sentences, sizes): one line naming the file at fault."""


@dataclass
class Inputs:
    input_ids: np.ndarray        # [B,T] int32
    token_type_ids: np.ndarray   # [B,T] int32
    input_mask: np.ndarray       # [B,T] int32, 1 real token, 0 padding
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_pairs(path: str) -> list[tuple[str, str]]:
    """Sentence pairs from a GLUE MRPC tsv (columns: label, id1, id2, sentence1, sentence2)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as e:
        raise InputError(f"{path}: cannot read sentence pairs ({e.strerror})") from None
    pairs = [(r[3], r[4]) for r in rows[1:] if len(r) >= 5]
    if not pairs:
        raise InputError(f"{path}: no sentence pairs (expected MRPC tsv rows with 5 columns)")
    return pairs


def infer_lower_case(vocab: dict) -> bool:
    """Uncased vocabularies hold no upper-case word pieces (besides [CLS]-style specials)."""
    return not any(t != t.lower() for t in vocab if not (t.startswith("[") and t.endswith("]")))


def truncate_seq_pair(a: list, b: list, max_length: int) -> None:
    """The official rule: pop from the end of the longer list until the pair fits."""
    while len(a) + len(b) > max_length:
        (a if len(a) > len(b) else b).pop()


def make_inputs(vocab_file: str, batch_size: int = 8, seq_len: int = 128, seed: int = 0,
                vocab_size: Optional[int] = None, type_vocab_size: int = 2,
                pairs_file: Optional[str] = None, do_lower_case: Optional[bool] = None) -> Inputs:
    """Builds [B,T] inputs from real sentence pairs; the same arguments always give the same ids."""
    if batch_size < 1 or seq_len < 1:
        raise InputError(f"batch size {batch_size} and sequence length {seq_len} must be positive")
    pairs_file = pairs_file or SAMPLE
    pairs = read_pairs(pairs_file)
    vocab = load_vocab(vocab_file)
    if vocab_size is not None:
        n = max(vocab.values()) + 1 if vocab else 0
        if n != vocab_size:
            raise InputError(f"{vocab_file} has {n} tokens but the config says vocab_size {vocab_size}: "
                             f"the vocab does not belong to this checkpoint")
    lower = infer_lower_case(vocab) if do_lower_case is None else do_lower_case
    tokenizer = FullTokenizer(vocab_file, do_lower_case=lower)
    for special in ("[CLS]", "[SEP]", "[UNK]"):
        if special not in vocab:
            raise InputError(f"{vocab_file}: no {special} token; not a BERT WordPiece vocab")
    rng = np.random.default_rng(seed)
    B, T = batch_size, seq_len
    ids = np.zeros((B, T), np.int32)
    types = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    lengths = [T] + [int(rng.integers(math.ceil(T / 4), T)) if T > 1 else T for _ in range(B - 1)]
    for row, length in enumerate(lengths):
        a, b = [], []
        # Keep drawing pairs until both segments could fill the row, then truncate.
        while len(a) < length or len(b) < length:
            s1, s2 = pairs[int(rng.integers(len(pairs)))]
            a += tokenizer.tokenize(s1)
            b += tokenizer.tokenize(s2)
        truncate_seq_pair(a, b, max(length - 3, 0))
        tokens = (["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"])[:length]
        segments = ([0] * (len(a) + 2) + [1] * (len(b) + 1))[:length]
        ids[row, :length] = tokenizer.convert_tokens_to_ids(tokens)
        # A model with a single token type has no second segment to give.
        types[row, :length] = segments if type_vocab_size > 1 else 0
        mask[row, :length] = 1
    meta = {
        "batch_size": B, "seq_len": T, "seed": seed,
        "padding_positions": int((mask == 0).sum()),
        "rows_with_padding": int((mask == 0).any(axis=1).sum()),
        "do_lower_case": lower,
        "sentences": os.path.basename(pairs_file), "sentences_sha256": sha256(pairs_file),
        "vocab_sha256": sha256(vocab_file),
    }
    return Inputs(ids, types, mask, meta)
