"""SQuAD v1.1 for fine-tuning: examples, doc-stride features, n-best predictions and EM/F1.

The examples and features are those of the official ``run_squad`` (whitespace split of the
context, WordPiece sub-tokens, a ``doc_stride`` sliding window over long contexts with each
token's "max context" span, ``[CLS] question [SEP] context [SEP]``); ``write_predictions`` is the
official n-best search (20 best starts x 20 best ends per feature, answers of at most 30 tokens,
projected back to the original text by ``get_final_text``); ``evaluate`` is the official SQuAD
v1.1 evaluation script's exact match and F1 (normalised answers, max over the gold answers).
``parity/finetune/`` checks features and predictions against the official code.
"""
from __future__ import annotations

import collections
import json
import math
import re
import string
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ._io import InputFileError, read_text
from .tokenization import BasicTokenizer, whitespace_tokenize


class SquadError(ValueError):
    """Bad SQuAD input: one line naming the file and the question at fault."""


@dataclass
class SquadExample:
    qas_id: str
    question_text: str
    doc_tokens: list
    orig_answer_text: Optional[str] = None
    start_position: Optional[int] = None
    end_position: Optional[int] = None
    answers: list = field(default_factory=list)   # every gold answer text (for evaluation)


@dataclass
class SquadFeatures:
    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list
    token_to_orig_map: dict
    token_is_max_context: dict
    input_ids: list
    input_mask: list
    segment_ids: list
    start_position: Optional[int] = None
    end_position: Optional[int] = None


def _is_whitespace(c: str) -> bool:
    # The official reader's set: note U+202F (narrow no-break space) but not U+00A0.
    return c in (" ", "\t", "\r", "\n") or ord(c) == 0x202F


def read_dataset(input_file: str) -> list:
    """The ``data`` list of a SQuAD json file, read once: a regular file, bounded by its size."""
    try:
        data = json.loads(read_text(input_file, "SQuAD file"))["data"]
    except InputFileError as e:
        raise SquadError(str(e)) from None
    except (ValueError, KeyError, TypeError, RecursionError) as e:   # RecursionError: absurd nesting
        raise SquadError(f"{input_file}: not a SQuAD json file ({type(e).__name__}: {e})") from None
    return data


def _field(obj, key: str, kind, input_file: str, where: str, name: str):
    """``obj[key]`` when it is a JSON ``name`` (Python ``kind``), else a SquadError naming the file, the place
    in it (a question's id where there is one) and the key: the official reader would fail there with a bare
    KeyError or TypeError, or, for a negative offset, read the wrong characters."""
    if not isinstance(obj, dict):
        raise SquadError(f"{input_file}: {where} is {type(obj).__name__}; expected an object")
    if key not in obj:
        raise SquadError(f"{input_file}: {where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):   # True is an int; no SQuAD field is a boolean
        raise SquadError(f"{input_file}: {where}: {key} is {type(value).__name__} {value!r:.40}; expected {name}")
    return value


def read_squad_examples(input_file: str, is_training: bool) -> list[SquadExample]:
    """SQuAD v1.1 json -> examples. For training, answers whose text cannot be found in the
    whitespace-tokenised context are skipped, as the official reader skips them. A file that does not
    have SQuAD's structure is a SquadError naming the file, the place and the field."""
    data = read_dataset(input_file)
    if not isinstance(data, list):
        raise SquadError(f"{input_file}: data is {type(data).__name__}; expected a list of articles")
    examples = []
    for i, entry in enumerate(data):
        for j, paragraph in enumerate(_field(entry, "paragraphs", list, input_file, f"data[{i}]", "a list")):
            where = f"data[{i}].paragraphs[{j}]"
            text = _field(paragraph, "context", str, input_file, where, "a string")
            doc_tokens, char_to_word, prev_ws = [], [], True
            for c in text:
                if _is_whitespace(c):
                    prev_ws = True
                else:
                    if prev_ws:
                        doc_tokens.append(c)
                    else:
                        doc_tokens[-1] += c
                    prev_ws = False
                char_to_word.append(len(doc_tokens) - 1)
            for k, qa in enumerate(_field(paragraph, "qas", list, input_file, where, "a list")):
                qid = _field(qa, "id", (str, int), input_file, f"{where}.qas[{k}]", "a string")
                at = f"question {qid}"
                answers = _field(qa, "answers", list, input_file, at, "a list") if is_training or "answers" in qa \
                    else []
                ex = SquadExample(qid, _field(qa, "question", str, input_file, at, "a string"), doc_tokens,
                                  answers=[_field(a, "text", str, input_file, f"{at} answers[{n}]", "a string")
                                           for n, a in enumerate(answers)])
                if is_training:
                    if len(answers) != 1:
                        raise SquadError(f"{input_file}: question {qid} has {len(answers)} answers; "
                                         "for training each question needs exactly 1")
                    offset = _field(answers[0], "answer_start", int, input_file, f"{at} answers[0]", "an integer")
                    answer_text = ex.answers[0]
                    if not answer_text:
                        raise SquadError(f"{input_file}: question {qid}: its answer's text is empty")
                    if offset < 0 or offset + len(answer_text) > len(text):
                        raise SquadError(f"{input_file}: question {qid}: answer_start {offset} with an answer of "
                                         f"{len(answer_text)} characters lies outside its context of {len(text)} "
                                         f"characters")
                    start, end = char_to_word[offset], char_to_word[offset + len(answer_text) - 1]
                    actual = " ".join(doc_tokens[start:end + 1])
                    if actual.find(" ".join(whitespace_tokenize(answer_text))) == -1:
                        continue   # the official reader warns and skips
                    ex.orig_answer_text, ex.start_position, ex.end_position = answer_text, start, end
                examples.append(ex)
    return examples


def _improve_answer_span(doc_tokens, start, end, tokenizer, orig_answer_text):
    """The tightest sub-token span whose text equals the tokenised answer ("(1895-1943)." -> "1895")."""
    target = " ".join(tokenizer.tokenize(orig_answer_text))
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start:new_end + 1]) == target:
                return new_start, new_end
    return start, end


def _check_is_max_context(doc_spans, cur_span_index: int, position: int) -> bool:
    """Whether span ``cur_span_index`` gives token ``position`` its most context
    (score min(left, right) + 0.01 * span length; the first best span wins ties)."""
    best_score, best_index = None, None
    for i, (span_start, span_length) in enumerate(doc_spans):
        end = span_start + span_length - 1
        if position < span_start or position > end:
            continue
        score = min(position - span_start, end - position) + 0.01 * span_length
        if best_score is None or score > best_score:
            best_score, best_index = score, i
    return cur_span_index == best_index


def convert_examples_to_features(examples: Sequence[SquadExample], tokenizer, max_seq_length: int,
                                 doc_stride: int, max_query_length: int, is_training: bool) -> list[SquadFeatures]:
    """The official ``run_squad.convert_examples_to_features`` (unique ids from 1000000000)."""
    if max_seq_length <= max_query_length + 3:
        raise SquadError(f"max_seq_length {max_seq_length} must exceed max_query_length {max_query_length} + 3")
    if doc_stride < 1:
        raise SquadError(f"doc_stride {doc_stride} must be positive")
    features, unique_id = [], 1000000000
    for example_index, ex in enumerate(examples):
        query = tokenizer.tokenize(ex.question_text)[:max_query_length]
        tok_to_orig, orig_to_tok, doc = [], [], []
        for i, token in enumerate(ex.doc_tokens):
            orig_to_tok.append(len(doc))
            for sub in tokenizer.tokenize(token):
                tok_to_orig.append(i)
                doc.append(sub)
        tok_start = tok_end = None
        if is_training:
            tok_start = orig_to_tok[ex.start_position]
            tok_end = (orig_to_tok[ex.end_position + 1] - 1 if ex.end_position < len(ex.doc_tokens) - 1
                       else len(doc) - 1)
            tok_start, tok_end = _improve_answer_span(doc, tok_start, tok_end, tokenizer, ex.orig_answer_text)
        max_tokens_for_doc = max_seq_length - len(query) - 3
        spans, start = [], 0   # (start, length) windows, each advancing by at most doc_stride
        while start < len(doc):
            length = min(len(doc) - start, max_tokens_for_doc)
            spans.append((start, length))
            if start + length == len(doc):
                break
            start += min(length, doc_stride)
        for span_index, (span_start, span_length) in enumerate(spans):
            tokens = ["[CLS]", *query, "[SEP]"]
            segment_ids = [0] * len(tokens)
            to_orig, max_context = {}, {}
            for i in range(span_length):
                j = span_start + i
                to_orig[len(tokens)] = tok_to_orig[j]
                max_context[len(tokens)] = _check_is_max_context(spans, span_index, j)
                tokens.append(doc[j])
                segment_ids.append(1)
            tokens.append("[SEP]")
            segment_ids.append(1)
            input_ids = tokenizer.convert_tokens_to_ids(tokens)
            pad = max_seq_length - len(input_ids)
            start_position = end_position = None
            if is_training:
                if tok_start >= span_start and tok_end <= span_start + span_length - 1:
                    offset = len(query) + 2
                    start_position, end_position = tok_start - span_start + offset, tok_end - span_start + offset
                else:   # the answer is not (wholly) in this window: point at [CLS]
                    start_position = end_position = 0
            features.append(SquadFeatures(unique_id, example_index, span_index, tokens, to_orig, max_context,
                                          input_ids + [0] * pad, [1] * len(input_ids) + [0] * pad,
                                          segment_ids + [0] * pad, start_position, end_position))
            unique_id += 1
    return features


def _best_indexes(logits: Sequence[float], n: int) -> list[int]:
    """Indexes of the n largest logits (stable: the earlier index first on ties)."""
    return [i for i, _ in sorted(enumerate(logits), key=lambda x: x[1], reverse=True)[:n]]


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    m = max(scores)
    exps = [math.exp(s - m) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool) -> str:
    """Map a prediction in tokenised text back to the span of the original text (the official
    heuristic: align the two space-stripped strings character by character; on any failure,
    return the whole original text)."""
    def strip_spaces(text):
        chars, ns_to_s = [], {}
        for i, c in enumerate(text):
            if c == " ":
                continue
            ns_to_s[len(chars)] = i
            chars.append(c)
        return "".join(chars), ns_to_s

    tok_text = " ".join(BasicTokenizer(do_lower_case=do_lower_case).tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_ns_to_s = strip_spaces(orig_text)
    tok_ns, tok_ns_to_s = strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {s: ns for ns, s in tok_ns_to_s.items()}
    orig_start = orig_ns_to_s.get(tok_s_to_ns[start]) if start in tok_s_to_ns else None
    if orig_start is None:
        return orig_text
    orig_end = orig_ns_to_s.get(tok_s_to_ns[end]) if end in tok_s_to_ns else None
    if orig_end is None:
        return orig_text
    return orig_text[orig_start:orig_end + 1]


RawResult = collections.namedtuple("RawResult", ["unique_id", "start_logits", "end_logits"])


def write_predictions(examples: Sequence[SquadExample], features: Sequence[SquadFeatures],
                      results: Sequence[RawResult], n_best_size: int = 20, max_answer_length: int = 30,
                      do_lower_case: bool = True) -> tuple[dict, dict]:
    """(predictions {qas_id: text}, nbest {qas_id: [{text, probability, start_logit, end_logit}]}),
    as the official v1.1 ``write_predictions`` computes them (written by the caller)."""
    by_example = collections.defaultdict(list)
    for f in features:
        by_example[f.example_index].append(f)
    by_id = {r.unique_id: r for r in results}
    predictions, all_nbest = collections.OrderedDict(), collections.OrderedDict()
    for example_index, ex in enumerate(examples):
        feats = by_example[example_index]
        prelim = []   # (feature_index, start, end, start_logit, end_logit)
        for fi, f in enumerate(feats):
            r = by_id[f.unique_id]
            for s in _best_indexes(r.start_logits, n_best_size):
                for e in _best_indexes(r.end_logits, n_best_size):
                    # Spans must lie in the context, start where this window has max context,
                    # and be well ordered and short enough.
                    if s >= len(f.tokens) or e >= len(f.tokens):
                        continue
                    if s not in f.token_to_orig_map or e not in f.token_to_orig_map:
                        continue
                    if not f.token_is_max_context.get(s, False) or e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append((fi, s, e, r.start_logits[s], r.end_logits[e]))
        prelim.sort(key=lambda p: p[3] + p[4], reverse=True)   # stable, like the official sorted()
        seen, nbest = set(), []
        for fi, s, e, sl, el in prelim:
            if len(nbest) >= n_best_size:
                break
            f = feats[fi]
            if s > 0:
                tok_text = " ".join(f.tokens[s:e + 1]).replace(" ##", "").replace("##", "")
                tok_text = " ".join(tok_text.strip().split())
                orig_text = " ".join(ex.doc_tokens[f.token_to_orig_map[s]:f.token_to_orig_map[e] + 1])
                text = get_final_text(tok_text, orig_text, do_lower_case)
                if text in seen:
                    continue
            else:
                text = ""
            seen.add(text)
            nbest.append((text, sl, el))
        if not nbest:
            nbest.append(("empty", 0.0, 0.0))
        probs = _softmax([sl + el for _, sl, el in nbest])
        all_nbest[ex.qas_id] = [{"text": t, "probability": p, "start_logit": sl, "end_logit": el}
                                for (t, sl, el), p in zip(nbest, probs)]
        predictions[ex.qas_id] = nbest[0][0]
    return predictions, all_nbest


# ---- the official SQuAD v1.1 evaluation script's metrics ----

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def evaluate(dataset: list, predictions: dict) -> dict:
    """``{"exact_match", "f1"}`` in percent over every question of a v1.1 ``data`` list; a
    question without a prediction scores 0 (the script prints a message and goes on)."""
    em = f1 = total = 0
    missing = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    missing += 1
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(exact_match_score(pred, g) for g in golds)
                f1 += max(f1_score(pred, g) for g in golds)
    if total == 0:
        raise SquadError("evaluate: the dataset holds no questions")
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total, "total": total, "unanswered": missing}
