"""The dev set of a task as both sides see it: its official features (the official run_classifier / run_squad code,
run as a dependency), the batches they are run in, the predictions read from the head's logits, and the task's
metric.

The data is read first by this project's own readers (``bert_torch.glue``, ``bert_torch.squad``), which name the
file, row and field of anything malformed (exit 2); only then does the official code make the features, so that
a bad row is reported in one line rather than as the official code's IndexError.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np

from bert_torch.commands import foreign

from parity.inputs import BadInput, Inputs

# What each task's head is called in the checkpoint (TF names) and the contract taps it gives.
HEADS = {"mrpc": "classifier", "squad": "squad"}
HEAD_VARIABLES = {"classifier": "output_weights and output_bias, as run_classifier writes them",
                  "squad": "cls/squad/output_weights and cls/squad/output_bias, as run_squad writes them"}
HEAD_TAPS = {"classifier": ("classifier/logits",), "squad": ("squad/start_logits", "squad/end_logits")}
DEV_FILES = {"mrpc": os.path.join("mrpc", "dev.tsv"), "squad": os.path.join("squad", "dev-v1.1.json")}
MRPC_LABELS = ("0", "1")   # run_classifier.MrpcProcessor.get_labels()
# Label names a transformers config may give MRPC's classes (GLUE's own names, as the HF dataset has them).
MRPC_LABEL_NAMES = {"0": "0", "1": "1", "not_equivalent": "0", "equivalent": "1"}


@dataclasses.dataclass
class TaskData:
    """A task's dev examples and their official features, as int32 arrays [F, T] (one row per feature)."""
    task: str
    path: str                      # the dev file
    arrays: dict                   # input_ids, segment_ids, input_mask
    ids: list                      # per example: MRPC guid, SQuAD qas_id
    labels: Optional[np.ndarray] = None   # MRPC: label ids per example (one feature each)
    texts: Optional[list] = None          # MRPC: (text_a, text_b) per example
    examples: Optional[list] = None       # SQuAD: the official examples
    features: Optional[list] = None       # SQuAD: the official features (row i of ``arrays`` is features[i])
    dataset: Optional[list] = None        # SQuAD: the v1.1 ``data`` list, cut to the questions evaluated
    trim: bool = False                    # batches may drop all-padding columns (see ``batches``)

    @property
    def num_examples(self) -> int:
        return len(self.ids)

    @property
    def num_features(self) -> int:
        return int(self.arrays["input_ids"].shape[0])


def dev_file(data_dir: Optional[str], task: str) -> str:
    """The task's dev file under ``--data-dir``, or a BadInput naming what is missing."""
    if not data_dir:
        raise BadInput(f"no --data-dir given and no ../shared/data beside the repository: pass --data-dir D, a "
                       f"folder holding {DEV_FILES[task]}")
    path = os.path.join(data_dir, DEV_FILES[task])
    if not os.path.lexists(path):
        raise BadInput(f"--data-dir {data_dir}: no {DEV_FILES[task]} there (the {task} dev set)")
    return path


def mrpc_data(path: str, vocab_file: str, do_lower_case: bool, max_seq_length: int,
              limit: Optional[int] = None) -> TaskData:
    """MRPC dev features as the official run_classifier makes them (MrpcProcessor, FullTokenizer,
    convert_single_example), the first ``limit`` pairs."""
    from bert_torch.glue import MrpcProcessor
    MrpcProcessor().get_dev_examples(os.path.dirname(path))   # rows and labels checked, one line naming the row
    from reference_tf.finetune import official_mrpc_features
    with foreign(f"the official run_classifier reading {path} (vocab {vocab_file})"):
        feats = official_mrpc_features(os.path.dirname(path), "dev", vocab_file, do_lower_case, max_seq_length,
                                       limit)
    arrays = {"input_ids": np.array([f["input_ids"] for f in feats], np.int32),
              "segment_ids": np.array([f["segment_ids"] for f in feats], np.int32),
              "input_mask": np.array([f["input_mask"] for f in feats], np.int32)}
    return TaskData("mrpc", path, arrays, [f["guid"] for f in feats],
                    labels=np.array([f["label_id"] for f in feats], np.int64),
                    texts=[(f["text_a"], f["text_b"]) for f in feats], trim=True)


def squad_data(path: str, vocab_file: str, do_lower_case: bool, max_seq_length: int, doc_stride: int,
               max_query_length: int, limit: Optional[int] = None) -> TaskData:
    """SQuAD v1.1 dev features as the official run_squad makes them (read_squad_examples,
    convert_examples_to_features with its doc_stride windows), for the first ``limit`` questions."""
    from bert_torch import squad
    dataset = squad.read_dataset(path)
    squad.read_squad_examples(path, is_training=False)   # structure checked, one line naming the field
    from reference_tf.finetune import official_squad_features
    with foreign(f"the official run_squad reading {path} (vocab {vocab_file})"):
        examples, features = official_squad_features(path, vocab_file, do_lower_case, max_seq_length, doc_stride,
                                                     max_query_length, is_training=False, limit=limit)
    if not examples or not features:
        raise BadInput(f"{path}: no questions to evaluate")
    arrays = {"input_ids": np.array([f.input_ids for f in features], np.int32),
              "segment_ids": np.array([f.segment_ids for f in features], np.int32),
              "input_mask": np.array([f.input_mask for f in features], np.int32)}
    ids = [e.qas_id for e in examples]
    return TaskData("squad", path, arrays, ids, examples=examples, features=features,
                    dataset=cut_dataset(dataset, set(ids)))


def cut_dataset(dataset: list, keep: set) -> list:
    """The v1.1 ``data`` list holding only the questions in ``keep`` (the official evaluate scores every question
    of the file it is given: with --max-examples, only those evaluated)."""
    out = []
    for article in dataset:
        paragraphs = []
        for p in article["paragraphs"]:
            qas = [qa for qa in p["qas"] if qa["id"] in keep]
            if qas:
                paragraphs.append({**p, "qas": qas})
        if paragraphs:
            out.append({**article, "paragraphs": paragraphs})
    return out


def batches(data: TaskData, batch_size: int, rows: Optional[np.ndarray] = None) -> Iterator[tuple[np.ndarray, Inputs]]:
    """(row indices, Inputs) for consecutive batches of ``rows`` (default: every feature).

    MRPC batches hold pairs of like length (sorted by length) and drop the columns that are padding in every row
    of the batch: the model gives padding keys exactly zero attention weight (the -10000 mask adder underflows
    exp in float32), so the logits are those of the full max_seq_length up to float32 rounding, at a fraction of
    the cost; both sides run the very same arrays.
    SQuAD batches keep every column: the official write_predictions ranks start and end logits over all
    max_seq_length positions, padding included."""
    rows = np.arange(data.num_features) if rows is None else np.asarray(rows)
    if data.trim:   # pairs of like length together: less padding to cut (results are placed back by index)
        rows = rows[np.argsort(data.arrays["input_mask"][rows].sum(1), kind="stable")]
    for at in range(0, len(rows), batch_size):
        idx = rows[at:at + batch_size]
        ids, seg, mask = (data.arrays[k][idx] for k in ("input_ids", "segment_ids", "input_mask"))
        if data.trim:
            width = max(1, int(mask.sum(1).max()))
            ids, seg, mask = ids[:, :width], seg[:, :width], mask[:, :width]
        yield idx, Inputs(np.ascontiguousarray(ids), np.ascontiguousarray(seg), np.ascontiguousarray(mask),
                          meta={"task": data.task, "rows": [int(idx[0]), int(idx[-1])]})


# ---------------------------------------------------------------------------------------------
# Predictions and metrics.

@dataclasses.dataclass
class Predictions:
    """One side's predictions: per example, the prediction (MRPC label id, SQuAD answer text), whether it is
    correct (MRPC: equals the label; SQuAD: exact match with a gold answer), and the reference's runner-up
    (the margin's terms, for the rounding-noise judgement)."""
    values: list
    correct: np.ndarray
    metrics: dict
    nbest: Optional[dict] = None   # SQuAD: qas_id -> the official n-best list


def mrpc_predictions(data: TaskData, logits: np.ndarray) -> Predictions:
    from bert_torch.glue import accuracy_and_f1
    pred = np.argmax(logits, axis=1)
    m = accuracy_and_f1(pred, data.labels)
    return Predictions([int(p) for p in pred], pred == data.labels, {"accuracy": m["accuracy"], "f1": m["f1"]})


def squad_predictions(data: TaskData, start: np.ndarray, end: np.ndarray, n_best_size: int,
                      max_answer_length: int, do_lower_case: bool) -> Predictions:
    """The official v1.1 write_predictions on these logits (one RawResult per feature), scored by the official
    v1.1 evaluate."""
    from bert_torch import squad
    from reference_tf.finetune import official_squad_predictions
    results = [squad.RawResult(f.unique_id, s, e) for f, s, e in zip(data.features, start, end)]
    predictions, nbest = official_squad_predictions(data.examples, data.features, results, n_best_size,
                                                    max_answer_length, do_lower_case)
    values = [predictions.get(q, "") for q in data.ids]
    golds = {qa["id"]: [a["text"] for a in qa["answers"]]
             for article in data.dataset for p in article["paragraphs"] for qa in p["qas"]}
    correct = np.array([bool(golds.get(q)) and max(squad.exact_match_score(v, g) for g in golds[q])
                        for q, v in zip(data.ids, values)], bool)
    return Predictions(values, correct, squad_metrics(data, values), nbest)


def squad_metrics(data: TaskData, values: list) -> dict:
    from bert_torch import squad
    m = squad.evaluate(data.dataset, dict(zip(data.ids, values)))
    return {"exact_match": m["exact_match"], "f1": m["f1"]}


def metrics_of(data: TaskData, values: list) -> dict:
    """The task metric of any list of per-example predictions (the rule's "outside the noise" metrics)."""
    if data.task == "mrpc":
        from bert_torch.glue import accuracy_and_f1
        m = accuracy_and_f1(np.asarray(values), data.labels)
        return {"accuracy": m["accuracy"], "f1": m["f1"]}
    return squad_metrics(data, values)


# ---------------------------------------------------------------------------------------------
# Label order of a transformers candidate.

def hf_label_columns(directory: str, where: str) -> tuple[Optional[list], Optional[str]]:
    """For an ``hf:`` MRPC candidate: the candidate's logit column of each official label (MRPC_LABELS order),
    read from config.json's ``id2label``, and a note when it cannot be read. transformers' default names
    (LABEL_0, LABEL_1) mean index order; GLUE's (not_equivalent, equivalent) and the official ones (0, 1) are
    mapped to their class. None: index order."""
    from bert_torch._io import InputFileError, read_json
    try:
        cfg = read_json(os.path.join(directory, "config.json"), "HF config")
    except InputFileError:
        return None, None   # the candidate's loader has already refused an unreadable config
    id2label = cfg.get("id2label") if isinstance(cfg, dict) else None
    if not isinstance(id2label, dict) or len(id2label) != len(MRPC_LABELS):
        return None, None
    columns: dict = {}
    for key, name in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise BadInput(f"{where}: config.json id2label has a key {key!r} that is no class index") from None
        text = str(name).strip().lower()
        label = MRPC_LABEL_NAMES.get(text) or (MRPC_LABELS[int(text[6:])] if text in ("label_0", "label_1") else None)
        if label is None:
            return None, (f"config.json id2label {id2label} names no MRPC class (0/1, not_equivalent/equivalent): "
                          f"the candidate's logits are read in index order")
        if label in columns:
            raise BadInput(f"{where}: config.json id2label {id2label} names class {label} twice")
        columns[label] = index
    if sorted(columns.values()) != list(range(len(MRPC_LABELS))):
        raise BadInput(f"{where}: config.json id2label {id2label}: indexes are not 0..{len(MRPC_LABELS) - 1}")
    order = [columns[label] for label in MRPC_LABELS]
    return (None if order == list(range(len(order))) else order), None
