"""Feature parity (MRPC and SQuAD: every field identical to the official code's, no tolerance), the
official write_predictions on the same logits, and the arrays the training checks feed both sides."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np

from parity.files import sample


def mrpc_feature_check(data_dir: str, vocab_file: str, splits=("train", "dev"), max_seq_length: int = 128,
                       do_lower_case: bool = True, limit: Optional[int] = None) -> dict:
    """Every field of every MRPC feature (and example) identical to the official code's."""
    from bert_torch.glue import MrpcProcessor, convert_single_example
    from bert_torch.tokenization import FullTokenizer
    from reference_tf.finetune import official_mrpc_features
    t0 = time.time()
    tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
    processor = MrpcProcessor()
    counts, mismatches = {}, []
    for split in splits:
        ref = official_mrpc_features(data_dir, split, vocab_file, do_lower_case, max_seq_length, limit)
        examples = {"train": processor.get_train_examples, "dev": processor.get_dev_examples}[split](data_dir)[:limit]
        if len(examples) != len(ref):
            mismatches.append(f"{split}: {len(examples)} examples, the official code has {len(ref)}")
        for ex, r in zip(examples, ref):
            f = convert_single_example(ex, processor.get_labels(), max_seq_length, tokenizer)
            mine = {"guid": ex.guid, "text_a": ex.text_a, "text_b": ex.text_b, "label": ex.label,
                    "input_ids": list(f.input_ids), "input_mask": list(f.input_mask),
                    "segment_ids": list(f.segment_ids), "label_id": f.label_id,
                    "is_real_example": f.is_real_example}
            for key in r:
                if mine[key] != r[key]:
                    mismatches.append(f"{split} {ex.guid}: field {key} differs")
        counts[split] = len(ref)
    ok = not mismatches
    total = sum(counts.values())
    return {"name": "features_mrpc", "verdict": "pass" if ok else "fail",
            "summary": (f"MRPC {'+'.join(f'{s} {n}' for s, n in counts.items())} features at max_seq_length "
                        f"{max_seq_length}: " + ("every field identical to the official run_classifier"
                                                 if ok else f"{len(mismatches)} fields differ of {total} features")),
            "counts": counts, "mismatches": mismatches[:20], "seconds": round(time.time() - t0, 2)}


def squad_arrays(input_file: str, vocab_file: str, is_training: bool, seq_len: int, doc_stride: int,
                 limit: Optional[int] = None) -> tuple[list, list, dict]:
    """(examples, features, arrays) of a SQuAD v1.1 file, features built as the official
    convert_examples_to_features (max_query_length 64, or seq_len // 2 for short sequences);
    ``limit``: the first ``limit`` examples. Training arrays carry start/end_positions."""
    from bert_torch import squad
    from bert_torch.tokenization import FullTokenizer
    tok = FullTokenizer(vocab_file, do_lower_case=True)
    examples = squad.read_squad_examples(input_file, is_training)[:limit]
    features = squad.convert_examples_to_features(examples, tok, seq_len, doc_stride,
                                                  64 if seq_len > 67 else seq_len // 2, is_training)
    keys = ("input_ids", "input_mask", "segment_ids") + (("start_position", "end_position") if is_training else ())
    arrays = {k: np.array([getattr(f, k) for f in features], dtype=np.int64) for k in keys}
    if is_training:
        arrays["start_positions"], arrays["end_positions"] = arrays.pop("start_position"), arrays.pop("end_position")
    return examples, features, arrays


def mrpc_batches(data_dir: str, vocab_file: str, split: str, max_seq_length: int, limit: Optional[int] = None,
                 sample_tsv: Optional[str] = None) -> dict:
    """MRPC features of ``split`` as arrays (``sample_tsv``: read that file instead of data_dir/split.tsv)."""
    from bert_torch.glue import MrpcProcessor, convert_examples_to_features, features_to_arrays
    from bert_torch.tokenization import FullTokenizer
    p = MrpcProcessor()
    if sample_tsv:
        examples = p._create_examples(p._read_tsv(sample_tsv), split, sample_tsv)
    else:
        examples = {"train": p.get_train_examples, "dev": p.get_dev_examples}[split](data_dir)
    examples = examples[:limit]
    return features_to_arrays(convert_examples_to_features(examples, p.get_labels(), max_seq_length,
                                                           FullTokenizer(vocab_file, do_lower_case=True)))


def trim_padding(*splits: dict, multiple: int = 8) -> tuple[dict, ...]:
    """The same features with the all-padding columns cut off: sequence length = the longest real
    sequence over ``splits``, rounded up to ``multiple``. Nothing is truncated, so the model sees
    what it would at the longer max_seq_length (padding is masked to exactly zero weight), at
    less cost; the arrays equal the official features built at that length."""
    longest = max(int(a["input_mask"].sum(1).max()) for a in splits)
    n = min(-(-longest // multiple) * multiple, splits[0]["input_ids"].shape[1])
    return tuple({k: (v[:, :n] if v.ndim == 2 else v) for k, v in a.items()} for a in splits)


def take(arrays: dict, idx) -> dict:
    return {k: v[idx] for k, v in arrays.items()}


def mrpc_training_data(mrpc: str, vocab: str, train_seq_len: Optional[int] = None) -> tuple[dict, dict]:
    """(train, dev) arrays of the deterministic run: at ``train_seq_len``, or at 128 with the
    all-padding columns cut (``trim_padding``)."""
    if train_seq_len:
        return tuple(mrpc_batches(mrpc, vocab, split, train_seq_len) for split in ("train", "dev"))
    return trim_padding(*(mrpc_batches(mrpc, vocab, split, 128) for split in ("train", "dev")))


SQUAD_SAMPLE = sample("squad_finetune_sample.json")
SQUAD_TRAIN_SAMPLE = sample("squad_finetune_train_sample.json")


_EXAMPLE_FIELDS = ("qas_id", "question_text", "doc_tokens", "orig_answer_text", "start_position", "end_position")


_FEATURE_FIELDS = ("unique_id", "example_index", "doc_span_index", "tokens", "token_to_orig_map",
                   "token_is_max_context", "input_ids", "input_mask", "segment_ids", "start_position",
                   "end_position")


@dataclasses.dataclass(frozen=True)
class SquadFeatures:
    """One SQuAD file's examples and features, built by bert_torch.squad and by the official run_squad,
    with the settings they were built at (``squad_feature_check`` compares them; the predictions check
    and the tests reuse them)."""
    input_file: str
    is_training: bool
    max_seq_length: int
    doc_stride: int
    examples: list
    features: list
    ref_examples: list
    ref_features: list
    seconds: float


def squad_features(input_file: str, vocab_file: str, is_training: bool = False, max_seq_length: int = 384,
                   doc_stride: int = 128, max_query_length: int = 64, do_lower_case: bool = True,
                   limit: Optional[int] = None) -> SquadFeatures:
    """Both sides' examples and features of a SQuAD v1.1 file (the first ``limit`` examples)."""
    from bert_torch import squad
    from bert_torch.tokenization import FullTokenizer
    from reference_tf.finetune import official_squad_features
    t0 = time.time()
    ref_ex, ref_f = official_squad_features(input_file, vocab_file, do_lower_case, max_seq_length, doc_stride,
                                            max_query_length, is_training, limit)
    examples = squad.read_squad_examples(input_file, is_training)[:limit]
    features = squad.convert_examples_to_features(examples, FullTokenizer(vocab_file, do_lower_case=do_lower_case),
                                                  max_seq_length, doc_stride, max_query_length, is_training)
    return SquadFeatures(input_file, is_training, max_seq_length, doc_stride, examples, features, ref_ex, ref_f,
                         time.time() - t0)


def squad_feature_check(built: SquadFeatures) -> dict:
    """Every field of every SQuAD example and feature identical to the official run_squad's."""
    examples, features, ref_ex, ref_f = built.examples, built.features, built.ref_examples, built.ref_features
    mismatches = []
    if len(examples) != len(ref_ex) or len(features) != len(ref_f):
        mismatches.append(f"{len(examples)} examples / {len(features)} features, the official code has "
                          f"{len(ref_ex)} / {len(ref_f)}")
    for a, b in zip(examples, ref_ex):
        mismatches += [f"example {b.qas_id}: {k} differs" for k in _EXAMPLE_FIELDS if getattr(a, k) != getattr(b, k)]
    for a, b in zip(features, ref_f):
        mismatches += [f"feature {b.unique_id}: {k} differs" for k in _FEATURE_FIELDS if getattr(a, k) != getattr(b, k)]
    ok = not mismatches
    windows = sum(1 for f in features if f.doc_span_index > 0)
    return {"name": "features_squad" + ("_train" if built.is_training else ""), "verdict": "pass" if ok else "fail",
            "summary": (f"SQuAD {os.path.basename(built.input_file)} "
                        f"({'training' if built.is_training else 'eval'}): {len(ref_ex)} examples, {len(ref_f)} "
                        f"features ({windows} extra doc_stride windows) at max_seq_length {built.max_seq_length}, "
                        f"doc_stride {built.doc_stride}: "
                        + ("every field identical to the official run_squad" if ok
                           else f"{len(mismatches)} fields differ")),
            "examples": len(ref_ex), "features": len(ref_f), "mismatches": mismatches[:20],
            "seconds": round(built.seconds, 2)}


def squad_predictions_check(built: SquadFeatures, results, do_lower_case: bool = True, n_best_size: int = 20,
                            max_answer_length: int = 30) -> dict:
    """Our write_predictions against the official one on the same logits (``results``, one RawResult per
    feature): every answer and every n-best entry (text identical, probability within 1e-12)."""
    from bert_torch import squad
    from reference_tf.finetune import official_squad_predictions
    mine, mine_nbest = squad.write_predictions(built.examples, built.features, results, n_best_size, max_answer_length,
                                               do_lower_case)
    ref, ref_nbest = official_squad_predictions(built.ref_examples, built.ref_features, results, n_best_size,
                                                max_answer_length, do_lower_case)
    bad = [q for q in ref if mine.get(q) != ref[q]]
    for q, entries in ref_nbest.items():
        ours = mine_nbest.get(q, [])
        if len(ours) != len(entries) or any(
                a["text"] != b["text"] or abs(a["probability"] - b["probability"]) > 1e-12
                or abs(a["start_logit"] - b["start_logit"]) > 0 or abs(a["end_logit"] - b["end_logit"]) > 0
                for a, b in zip(ours, entries)):
            bad.append(f"{q} (n-best)")
    ok = not bad and len(mine) == len(ref)
    return {"name": "squad_write_predictions", "verdict": "pass" if ok else "fail",
            "summary": (f"write_predictions (n-best {n_best_size}, max answer {max_answer_length}) on "
                        f"{len(ref)} questions: " + ("answers and n-best lists identical to the official code"
                                                     if ok else f"{len(bad)} differ")),
            "differences": bad[:20]}


def random_results(features, seed: int = 0) -> list:
    """Seeded logits for every feature (float32 values, as a model would give)."""
    from bert_torch.squad import RawResult
    rng = np.random.default_rng(seed)
    T = len(features[0].input_ids)
    return [RawResult(f.unique_id, [float(x) for x in rng.standard_normal(T).astype(np.float32)],
                      [float(x) for x in rng.standard_normal(T).astype(np.float32)]) for f in features]
