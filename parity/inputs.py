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


class BadInput(ValueError):
    """A command's input at fault (a flag, a file, a combination of them): exit 2, the message its one line."""


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
MIN_PAIR_SEQ = 5   # a sentence pair's shortest row: [CLS] a [SEP] b [SEP]
MAX_SEED = (1 << 32) - 1
MAX_SEQ = 131072   # BertConfig's bound on max_position_embeddings; the config's own value is checked later
MAX_THREADS = 1024
# Bytes of taps per tap element a run keeps (what decides ``--spill auto``): TF float32, PyTorch float32, its
# float64 twin (compare); diagnose adds each side fed the other's inputs and a local float64 run.
BYTES_PER_TAP_ELEMENT = {"compare": 4 + 4 + 8, "diagnose": 2 * (4 + 4 + 8), "dump": 4}
# On disk (``--spill``), the runs each command always writes: compare the reference, the candidate (float32)
# and its float64 twin; diagnose also both local runs. A reduced precision tier adds a float32 twin (4), and a
# diagnosis whose every block is within budget while its output is not adds the float64 local runs (8): a disk
# that fills then ends the command with exit 2 naming the file (bert_torch.commands).
SPILLED_BYTES_PER_TAP_ELEMENT = {"compare": 4 + 4 + 8, "diagnose": 4 + 4 + 4 + 4 + 8}


def activation_sizes(config, batch_size: int, seq_len: int) -> tuple[int, int, int]:
    """Elements of one layer's activations of each size: [B,T,H], [B,T,I] and [B,N,T,T] (attention scores)."""
    B, T = batch_size, seq_len
    return B * T * config.hidden_size, B * T * config.intermediate_size, B * config.num_attention_heads * T * T


def tap_elements(config, batch_size: int, seq_len: int) -> int:
    """Elements of every contract tap of one forward pass (CONTRACT.md, Taps)."""
    bth, bti, bntt = activation_sizes(config, batch_size, seq_len)
    per_layer = 8 * bth + 2 * bntt + bti
    return 4 * bth + seq_len * config.hidden_size + config.num_hidden_layers * per_layer \
        + batch_size * config.hidden_size


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
    """The taps a run keeps in memory when every side's runs are kept (``--spill never``); ``run_bytes`` is
    the whole run's peak."""
    return tap_elements(config, batch_size, seq_len) * BYTES_PER_TAP_ELEMENT[command]


# The memory estimates below (``run_bytes``; ``parity.checks.bench.bench_bytes``, ``parity.finetune.memory``) are upper
# bounds of a run's peak resident memory, checked before anything is allocated against MemAvailable.
# tests/test_memory_bounds.py measures the peak of real runs at several sizes against them.
#
# A process's memory besides its weights and taps: the interpreter with torch, numpy and the harness, and
# TensorFlow's runtime with the official graph built and its session open. Measured (TF 2.x, torch 2.13, x86-64
# Linux): 0.88 GiB once imported, 1.02-1.08 GiB at the peak of a run of a model of a few kilobytes; torch, numpy
# and the harness alone 0.25 GiB.
RUNTIME_BYTES = 5 << 28                # 1.25 GiB
TORCH_RUNTIME_BYTES = 3 << 28          # 0.375 GiB: a process without TensorFlow (the parent of a spilled run)
# What the allocators keep beyond what the sums below count as live: glibc's heap does not shrink around freed
# blocks (one run's arrays, freed, under the next run's), TensorFlow's pool keeps a step's buffers. Measured
# peaks came to 0.88-1.01 of the bench's sums (five sizes, 2 to 29 million parameters), 0.61-0.79 of compare's,
# diagnose's and dump's, 0.90 of the quick fine-tuning suite's; the estimates are the sums times this.
MEMORY_MARGIN = 1.25
# Weights held per parameter at a run's peak. compare: TF's variables (4), the candidate (4), the float32 copy
# its float64 twin is cast from and the twin (4 + 8), a reduced precision tier's float32 twin (4). diagnose
# also keeps the checkpoint's tensors and the PyTorch file's (4 + 4; the candidate is built on the latter, sharing
# its memory) for the weights' diagnosis. dump: TF's variables and the checkpoint as ``prepare`` read it (4 + 4).
WEIGHT_BYTES_PER_PARAMETER = {"compare": 4 + 4 + 4 + 8 + 4, "diagnose": 4 + 4 + 4 + 4 + 8 + 4, "dump": 4 + 4}
# Of those, what the process that compares holds while a spilled run's TF worker runs (before the twins are
# made): the candidate; in diagnose also the checkpoint's tensors.
SPILLED_WEIGHT_BYTES_BEFORE_TWINS = {"compare": 4, "diagnose": 4 + 4}
# Taps held per tap element at the peak: ``BYTES_PER_TAP_ELEMENT``'s runs, a reduced precision tier's float32
# twin run (4; not in dump), and TensorFlow's own buffers of a run's fetches while they are laid out as the
# contract's (4).
RUN_BYTES_PER_TAP_ELEMENT = {"compare": BYTES_PER_TAP_ELEMENT["compare"] + 4 + 4,
                             "diagnose": BYTES_PER_TAP_ELEMENT["diagnose"] + 4 + 4,
                             "dump": BYTES_PER_TAP_ELEMENT["dump"] + 4}
# The most taps one TF run of a spilled run fetches (parity.sides.base' STREAM_GROUP_BYTES, TFSide.stream's groups:
# repeated here because parity.sides.base imports this module; tests/test_memory_bounds.py holds them equal).
STREAM_GROUP_BYTES = 256 << 20
# Besides the kept runs, one layer's taps in float64 this many times over: the activations of the layer a
# forward is computing (a float64 twin's), and the float64 differences a comparison takes of each tap
# (a diagnosis judges every tap four ways: end to end, both local runs, the precision ladder).
TRANSIENT_LAYERS = {"compare": 3, "diagnose": 6, "dump": 2}


def run_bytes(config, batch_size: int, seq_len: int, command: str = "compare", spilled: bool = False) -> int:
    """An upper bound of the peak memory of ``command`` (compare, diagnose, dump) at this size, every process
    of the run together, times ``MEMORY_MARGIN``.

    In memory, everything is alive at the end: TF in process, every run's taps, the twins. ``spilled``
    (``--spill``): the runs stream to disk tap by tap and TensorFlow runs in a worker process
    (parity.sides.tf_worker), which holds its runtime, its variables and the taps of one streamed group
    (TFSide.stream: consecutive layers up to ``STREAM_GROUP_BYTES``), twice (TF's buffers and the contract's
    copies); it has exited before the float64 twin is made. The peak is then the larger of the two phases:
    the worker beside the comparing process, and that process alone with its twins."""
    bth, bti, bntt = activation_sizes(config, batch_size, seq_len)
    layer = 8 * bth + 2 * bntt + bti
    taps = tap_elements(config, batch_size, seq_len)
    params = config.num_parameters()
    transient = TRANSIENT_LAYERS[command] * 8 * layer
    if not spilled:
        held = RUNTIME_BYTES + WEIGHT_BYTES_PER_PARAMETER[command] * params \
            + RUN_BYTES_PER_TAP_ELEMENT[command] * taps + transient
    else:
        group = min(4 * taps, max(4 * layer, STREAM_GROUP_BYTES))
        worker = RUNTIME_BYTES + TORCH_RUNTIME_BYTES + (4 + SPILLED_WEIGHT_BYTES_BEFORE_TWINS[command]) * params \
            + 2 * group
        alone = TORCH_RUNTIME_BYTES + (WEIGHT_BYTES_PER_PARAMETER[command] - 4) * params + transient
        held = max(worker, alone)
    return int(MEMORY_MARGIN * held)


# A training step's memory (parity.checks.bench's contenders, parity.finetune's runs). The official graph +
# AdamWeightDecayOptimizer, bytes per parameter: variables and two slots (4 + 8), and a step's gradients, their
# clipped copies and the update's three temporaries (next_m, next_v, the update) of every variable at once, which
# TF's pool keeps (5 x 4).
TF_TRAINER_BYTES_PER_PARAMETER = 4 + 8 + 5 * 4
# A PyTorch model and its optimizer (BertAdam, torch's AdamW): weights, gradients, two moments.
TORCH_TRAINER_BYTES_PER_PARAMETER = 4 + 4 + 8
# Float32 buffers the size of the largest variable (the word embeddings): BertAdam's three scratch buffers, and the
# two temporaries of torch's AdamW update (the denominator and the step).
LARGEST_VARIABLE_COPIES = 3 + 2
# Activations per layer, in float32 elements of each size ([B,T,H], [B,T,I], [B,N,T,T]; ``activation_sizes``).
# TF's training step saves about 12 [B,T,H]-sized tensors for its backward (every product's input, q, k and v in
# both layouts, the LayerNorms' inputs), 2 [B,T,I] (the GELU's input and output) and the attention probabilities,
# and its backward makes the scores' and probabilities' gradients of a layer; its pool keeps all of it after the
# step. A PyTorch step (bert_torch's, HF's) saves about 10 [B,T,H], 3 [B,T,I] and, where SDPA takes its math
# kernel (dropout on), the scores and probabilities.
TF_STEP_ACTIVATIONS = (12, 2, 3)
TORCH_STEP_ACTIVATIONS = (10, 3, 2)


def step_activation_bytes(config, batch_size: int, seq_len: int, per_layer: tuple[int, int, int]) -> int:
    """Float32 bytes of a training step's activations: ``per_layer`` elements of each size, every layer."""
    sizes = activation_sizes(config, batch_size, seq_len)
    return 4 * config.num_hidden_layers * sum(n * size for n, size in zip(per_layer, sizes))


def optimizer_scratch_bytes(config) -> int:
    """``LARGEST_VARIABLE_COPIES`` float32 buffers the size of the largest variable."""
    return 4 * LARGEST_VARIABLE_COPIES * max(config.vocab_size, config.intermediate_size) * config.hidden_size


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), 0 where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except (OSError, ValueError, IndexError):
        return 0


def memory_shortfall(need: int, runtime: int = RUNTIME_BYTES) -> Optional[str]:
    """None when a run whose peak is estimated at ``need`` bytes fits in what the kernel says is available;
    else the numbers, for the refusal's line. The estimate counts the process's runtime (``runtime`` bytes,
    times ``MEMORY_MARGIN``), and what this process already holds of it (its imports; in a test session, TF's
    runtime too) is resident now, not to be allocated."""
    have = available_memory()
    if have is None:
        return None
    held = min(resident_bytes(), int(MEMORY_MARGIN * runtime))
    if need - held <= have:
        return None
    already = f" ({held / 2**30:.1f} GiB of it held already)" if held else ""
    return f"about {need / 2**30:.1f} GiB{already}, {have / 2**30:.1f} GiB is available"


def check_run_size(batch_size: int, seq_len: int, seed: int, config, command: str = "compare",
                   tf_threads: Optional[int] = None, source: str = "the config", spill_dir: Optional[str] = None
                   ) -> None:
    """Every size flag in range, and the run's peak memory (``run_bytes``) against what is available: one
    line naming the flags, before anything is allocated. With ``spill_dir`` (the runs streamed to disk) the
    disk must also hold every run's taps."""
    for flag, value, low, high in (("--batch-size", batch_size, 1, MAX_BATCH), ("--seq-len", seq_len, 1,
                                   config.max_position_embeddings), ("--seed", seed, 0, MAX_SEED)):
        if not low <= value <= high:
            limit = f"max_position_embeddings of {source}" if flag == "--seq-len" else "the limit"
            raise InputError(f"{flag} {value}: must be between {low} and {high} ({limit})")
    if tf_threads is not None and not 1 <= tf_threads <= MAX_THREADS:
        raise InputError(f"--tf-threads {tf_threads}: must be between 1 and {MAX_THREADS}")
    if spill_dir is not None:
        spilled = tap_elements(config, batch_size, seq_len) * SPILLED_BYTES_PER_TAP_ELEMENT.get(command, 4)
        free = shutil.disk_usage(spill_dir).free
        if spilled > free:
            raise InputError(f"--batch-size {batch_size} x --seq-len {seq_len} x {config.num_hidden_layers} layers: "
                             f"{command} streams about {spilled / 2**30:.1f} GiB of taps to --spill-dir {spill_dir}, "
                             f"which has {free / 2**30:.1f} GiB free; free space, or pick another folder")
    short = memory_shortfall(run_bytes(config, batch_size, seq_len, command, spilled=spill_dir is not None))
    if short:
        raise InputError(f"--batch-size {batch_size} x --seq-len {seq_len} x {config.num_hidden_layers} layers: "
                         f"{command} needs {short}; use a smaller batch or sequence")


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
