"""GLUE MRPC for fine-tuning: the official ``run_classifier`` processor and features, in PyTorch terms.

``MrpcProcessor`` reads the GLUE tsv files as the official one does (row 0 skipped, guid
``"<set>-<row>"``, columns 3/4 the sentences, column 0 the label; test labels all "0");
``convert_single_example`` builds ``[CLS] a [SEP] b [SEP]`` exactly as the official function
(pair truncation from the end of the longer side, segment ids 0 then 1, zero padding).
``parity/finetune/`` checks every field of every MRPC train/dev feature against the official code.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._io import InputFileError, read_text
from .tokenization import convert_to_unicode


@dataclass
class InputExample:
    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: Optional[str] = None


@dataclass
class InputFeatures:
    input_ids: list
    input_mask: list
    segment_ids: list
    label_id: int
    is_real_example: bool = True


class DataError(ValueError):
    """Bad task data: one line naming the file (and row) at fault."""


class MrpcProcessor:
    """The GLUE MRPC processor (train.tsv, dev.tsv, test.tsv in ``data_dir``)."""

    def get_train_examples(self, data_dir: str) -> list[InputExample]:
        path = os.path.join(data_dir, "train.tsv")
        return self._create_examples(self._read_tsv(path), "train", path)

    def get_dev_examples(self, data_dir: str) -> list[InputExample]:
        path = os.path.join(data_dir, "dev.tsv")
        return self._create_examples(self._read_tsv(path), "dev", path)

    def get_test_examples(self, data_dir: str) -> list[InputExample]:
        path = os.path.join(data_dir, "test.tsv")
        return self._create_examples(self._read_tsv(path), "test", path)

    def get_labels(self) -> list[str]:
        return ["0", "1"]

    @staticmethod
    def _read_tsv(path: str) -> list[list[str]]:
        # quotechar=None as the official reader: MRPC sentences contain unbalanced '"'.
        try:
            text = read_text(path, "GLUE data file")   # a regular file, bounded by its size
            return list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar=None))
        except InputFileError as e:
            raise DataError(str(e)) from None
        except csv.Error as e:   # a field over csv's size limit
            raise DataError(f"{path}: not a readable tsv ({e})") from None

    def _create_examples(self, lines: list[list[str]], set_type: str, source: Optional[str] = None
                         ) -> list[InputExample]:
        """``source``: the file the lines came from, named by the errors (default ``<set_type>.tsv``)."""
        source = source or f"{set_type}.tsv"
        examples = []
        for i, line in enumerate(lines):
            if i == 0:   # the header (with the GLUE files' BOM)
                continue
            if len(line) < 5:
                raise DataError(f"{source} row {i}: {len(line)} columns, MRPC rows have 5 (Quality, #1 ID, "
                                f"#2 ID, #1 String, #2 String, tab-separated)")
            label = "0" if set_type == "test" else convert_to_unicode(line[0])
            if label not in self.get_labels():
                raise DataError(f"{source} row {i}: label {label!r} is not one of {self.get_labels()}")
            examples.append(InputExample(f"{set_type}-{i}", convert_to_unicode(line[3]),
                                         convert_to_unicode(line[4]), label))
        if not examples:
            raise DataError(f"{source}: no examples")
        return examples


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Pop from the end of the longer list (b on a tie) until the pair fits, in place."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def convert_single_example(example: InputExample, label_list: Sequence[str], max_seq_length: int,
                           tokenizer) -> InputFeatures:
    """The official ``run_classifier.convert_single_example``."""
    label_map = {label: i for i, label in enumerate(label_list)}
    tokens_a = tokenizer.tokenize(example.text_a)
    tokens_b = tokenizer.tokenize(example.text_b) if example.text_b else None
    if tokens_b:
        truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)   # [CLS], [SEP], [SEP]
    elif len(tokens_a) > max_seq_length - 2:                       # [CLS], [SEP]
        tokens_a = tokens_a[: max_seq_length - 2]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:   # an empty b (after tokenization) adds no second [SEP], as in the official code
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = tokenizer.convert_tokens_to_ids(tokens)
    input_mask = [1] * len(input_ids)
    pad = max_seq_length - len(input_ids)
    if example.label not in label_map:
        raise DataError(f"example {example.guid}: label {example.label!r} is not one of {list(label_list)}")
    return InputFeatures(input_ids + [0] * pad, input_mask + [0] * pad, segment_ids + [0] * pad,
                         label_map[example.label])


def convert_examples_to_features(examples: Sequence[InputExample], label_list: Sequence[str],
                                 max_seq_length: int, tokenizer) -> list[InputFeatures]:
    if max_seq_length < 3:
        raise DataError(f"max_seq_length {max_seq_length} leaves no room for [CLS] a [SEP] b [SEP]")
    return [convert_single_example(e, label_list, max_seq_length, tokenizer) for e in examples]


def features_to_arrays(features: Sequence[InputFeatures]) -> dict[str, np.ndarray]:
    """Stack features into int64 arrays: input_ids, input_mask, segment_ids [N,T]; label_ids [N]."""
    return {"input_ids": np.array([f.input_ids for f in features], dtype=np.int64),
            "input_mask": np.array([f.input_mask for f in features], dtype=np.int64),
            "segment_ids": np.array([f.segment_ids for f in features], dtype=np.int64),
            "label_ids": np.array([f.label_id for f in features], dtype=np.int64)}


def accuracy_and_f1(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """MRPC's metrics: accuracy, and F1 of the positive class (label 1), both in [0, 1]."""
    p, y = np.asarray(predictions), np.asarray(labels)
    tp, fp, fn = int(((p == 1) & (y == 1)).sum()), int(((p == 1) & (y == 0)).sum()), int(((p == 0) & (y == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": float((p == y).mean()), "f1": float(f1), "n": int(len(y))}
