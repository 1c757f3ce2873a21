"""Deterministic, realistic model inputs: real sentence pairs tokenized with the checkpoint's vocab.

Row 0 is always full length (no padding); the other rows get lengths drawn from
[ceil(T/4), T-1], so most rows carry padding. Every row is ``[CLS] A [SEP] B [SEP]``
with segment ids 0 then 1 (both segments), A and B cut by the official
``_truncate_seq_pair`` rule (drop from the end of the longer one).
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bert_torch._io import read_text, sha256  # noqa: F401  (re-exported: parity's callers)
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




# Flag bounds, checked before anything is allocated (the memory estimate below is the real guard).
MAX_BATCH = 1 << 16
MAX_SEED = (1 << 32) - 1
MAX_THREADS = 1024
# Bytes held per tap element over a run: TF float32, PyTorch float32, its float64 twin (compare);
# diagnose adds each side fed the other's inputs and a local float64 run.
BYTES_PER_TAP_ELEMENT = {"compare": 4 + 4 + 8, "diagnose": 2 * (4 + 4 + 8), "dump": 4}
# On disk (``--spill``), the runs each command always writes: compare the reference, the candidate (float32)
# and its float64 twin; diagnose also both local runs. A reduced precision tier adds a float32 twin (4), and a
# diagnosis whose every block is within budget while its output is not adds the float64 local runs (8): a disk
# that fills then ends the command with exit 2 naming the file (bert_torch.commands).
SPILLED_BYTES_PER_TAP_ELEMENT = {"compare": 4 + 4 + 8, "diagnose": 4 + 4 + 4 + 4 + 8}


def tap_elements(config, batch_size: int, seq_len: int) -> int:
    """Elements of every contract tap of one forward pass (CONTRACT.md, Taps)."""
    B, T, H = batch_size, seq_len, config.hidden_size
    N, I = config.num_attention_heads, config.intermediate_size
    per_layer = 8 * B * T * H + 2 * B * N * T * T + B * T * I
    return 4 * B * T * H + T * H + config.num_hidden_layers * per_layer + B * H


def available_memory() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# A comparison whose runs would hold more than this in memory streams them to disk instead (``--spill auto``).
SPILL_ABOVE_BYTES = 1 << 30


def in_memory_bytes(config, batch_size: int, seq_len: int, command: str = "compare") -> int:
    """What a run holds in memory when every side's taps are kept (``--spill never``)."""
    return tap_elements(config, batch_size, seq_len) * BYTES_PER_TAP_ELEMENT[command]


def check_run_size(batch_size: int, seq_len: int, seed: int, config, command: str = "compare",
                   tf_threads: Optional[int] = None, source: str = "the config", spill_dir: Optional[str] = None
                   ) -> None:
    """Every size flag in range, and the run's memory (taps of every side, and the weights)
    against what is available: one line naming the flags, before anything is allocated. With
    ``spill_dir`` (the runs streamed to disk) memory holds about one layer's taps, and the disk must
    hold every run's."""
    for flag, value, low, high in (("--batch-size", batch_size, 1, MAX_BATCH), ("--seq-len", seq_len, 1,
                                   config.max_position_embeddings), ("--seed", seed, 0, MAX_SEED)):
        if not low <= value <= high:
            limit = f"max_position_embeddings of {source}" if flag == "--seq-len" else "the limit"
            raise InputError(f"{flag} {value}: must be between {low} and {high} ({limit})")
    if tf_threads is not None and not 1 <= tf_threads <= MAX_THREADS:
        raise InputError(f"--tf-threads {tf_threads}: must be between 1 and {MAX_THREADS}")
    if spill_dir is None:
        taps = in_memory_bytes(config, batch_size, seq_len, command)
    else:
        taps = tap_elements(config, batch_size, seq_len) * SPILLED_BYTES_PER_TAP_ELEMENT.get(command, 4)
        free = shutil.disk_usage(spill_dir).free
        if taps > free:
            raise InputError(f"--batch-size {batch_size} x --seq-len {seq_len} x {config.num_hidden_layers} layers: "
                             f"{command} streams about {taps / 2**30:.1f} GiB of taps to --spill-dir {spill_dir}, "
                             f"which has {free / 2**30:.1f} GiB free; free space, or pick another folder")
        # Every run streams: memory holds a layer or two of taps at a time (a float64 layer in diagnose).
        taps = taps // max(config.num_hidden_layers, 1) * 2
    need = taps + config.num_parameters() * (4 + 4 + 8)
    have = available_memory()
    if have is not None and need > have:
        raise InputError(f"--batch-size {batch_size} x --seq-len {seq_len} x {config.num_hidden_layers} layers: "
                         f"{command} needs about {need / 2**30:.1f} GiB for its taps and weights, "
                         f"{have / 2**30:.1f} GiB is available; use a smaller batch or sequence")


def read_pairs(path: str) -> list[tuple[str, str]]:
    """Sentence pairs from a GLUE MRPC tsv (columns: label, id1, id2, sentence1, sentence2)."""
    text = read_text(path, "sentences file", encoding="utf-8-sig")   # size, encoding, permission: one line
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as e:   # a field over csv's size limit, a NUL byte
        raise InputError(f"sentences file {path}: not a readable tsv ({e})") from None
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


# A row of T tokens draws at most this many pairs per token (plus one per pair in the file).
MAX_DRAWS_PER_TOKEN = 64


def _pair_tokenizer(pairs: list, tokenizer, path: str):
    """Pair index -> (tokens of sentence 1, of sentence 2), memoised; refuses a file in which no
    pair gives tokens in one of the two columns (the empty-columns case), naming the column."""
    cache: dict[int, tuple[list, list]] = {}

    def tokens_of(i: int) -> tuple[list, list]:
        if i not in cache:
            cache[i] = (tokenizer.tokenize(pairs[i][0]), tokenizer.tokenize(pairs[i][1]))
        return cache[i]
    for column, name in ((0, "sentence1 (column 4)"), (1, "sentence2 (column 5)")):
        if not any(tokens_of(i)[column] for i in range(len(pairs))):
            raise InputError(f"{path}: every {name} is empty after tokenization; nothing to build inputs from")
    return tokens_of


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
    tokens_of = _pair_tokenizer(pairs, tokenizer, pairs_file)
    for row, length in enumerate(lengths):
        a, b = [], []
        # Keep drawing pairs until both segments could fill the row, then truncate. Bounded: a file
        # whose sentences are nearly all empty would otherwise loop (and grow the other segment) forever.
        for _ in range(MAX_DRAWS_PER_TOKEN * length + len(pairs)):
            if len(a) >= length and len(b) >= length:
                break
            ta, tb = tokens_of(int(rng.integers(len(pairs))))
            a += ta
            b += tb
        else:
            raise InputError(f"{pairs_file}: too few non-empty sentences to fill a row of {length} tokens in "
                             f"both segments (drew {MAX_DRAWS_PER_TOKEN * length + len(pairs)} pairs)")
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
